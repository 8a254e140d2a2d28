//! Time, one place for every layer: the [`Clock`] pricing reads (wall time, or the simulated
//! time of a replayed trace), wall-clock milliseconds ([`now_ms`]) for records and budgets, a
//! process-wide monotonic nanosecond clock ([`now_ns`]) for rate limits, and the few time
//! formats the feeds, the config and the CLI use (RFC 3339 timestamps, durations like `5m`,
//! `36h`, `7d`).
//!
//! Times are Unix seconds (`i64`, UTC). The request path never reads a clock: staleness is
//! decided when the price book is rebuilt.

use std::fmt;
use std::sync::OnceLock;
use std::time::Instant;

/// Current wall-clock time, Unix milliseconds (0 before 1970, saturating far in the future).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

const MINUTE_NS: u64 = 60_000_000_000;

/// Nanoseconds on a process-wide monotonic clock. Starts at one minute, so that a fresh rate
/// limit bucket (arrival time 0) is full.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    MINUTE_NS + u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX / 2)
}

/// Where "now" comes from for staleness, history windows and replay.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Current time, Unix seconds.
    fn now(&self) -> i64;

    /// Current time, Unix milliseconds (default: [`Clock::now`] × 1000).
    fn now_ms(&self) -> i64 {
        self.now().saturating_mul(1000)
    }
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// Simulated time of a replayed trace: `origin` (trace time) at the moment the clock was
/// created, advancing `speed` times faster than real time. Built on `tokio::time::Instant`,
/// so tests drive it with tokio's paused time instead of sleeping.
#[derive(Debug, Clone, Copy)]
pub struct ReplayClock {
    origin: i64,
    started: tokio::time::Instant,
    speed: f64,
}

impl ReplayClock {
    /// A clock reading `origin` now and advancing `speed`× real time (`speed` > 0).
    pub fn new(origin: i64, speed: f64) -> Self {
        ReplayClock { origin, started: tokio::time::Instant::now(), speed }
    }

    /// Trace time `origin` corresponds to.
    pub fn origin(&self) -> i64 {
        self.origin
    }

    /// The real instant at which the clock reads trace time `t` (never before its start).
    pub fn instant_of(&self, t: i64) -> tokio::time::Instant {
        let real = (t - self.origin).max(0) as f64 / self.speed;
        self.started + std::time::Duration::from_secs_f64(real.min(1e12))
    }
}

impl Clock for ReplayClock {
    fn now(&self) -> i64 {
        let elapsed = self.started.elapsed().as_secs_f64() * self.speed;
        self.origin + elapsed.min(1e15) as i64
    }

    fn now_ms(&self) -> i64 {
        let elapsed = self.started.elapsed().as_secs_f64() * self.speed * 1000.0;
        self.origin.saturating_mul(1000) + elapsed.min(1e18) as i64
    }
}

/// A clock that reads whatever it was last set to (tests and the evaluation).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock reading `t`.
    pub fn new(t: i64) -> Self {
        ManualClock(std::sync::atomic::AtomicI64::new(t))
    }

    /// Sets the time.
    pub fn set(&self, t: i64) {
        self.0.store(t, std::sync::atomic::Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Parses an RFC 3339 timestamp (`2023-07-02T00:00:00Z`, offsets allowed) to Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s.trim()).ok().map(|t| t.timestamp())
}

/// Formats Unix seconds as `2023-07-02T00:00:00Z`.
pub fn format_rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map_or_else(|| t.to_string(), |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Parses a duration: a whole number with unit `s`, `m`, `h` or `d` (`90s`, `5m`, `36h`,
/// `7d`); `0` alone is zero. Returns seconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    let unit = match s.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: i64 = s[..s.len() - 1].parse().ok()?;
    if n < 0 {
        return None;
    }
    n.checked_mul(unit)
}

/// A duration as [`parse_duration`] reads it, in the largest whole unit (`0`, `90s`, `5m`, `1h`,
/// `2d`).
pub fn format_duration(secs: i64) -> String {
    match secs {
        0 => "0".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip() {
        let t = parse_rfc3339("2023-07-02T00:05:00Z").unwrap();
        assert_eq!(t, 1_688_256_300);
        assert_eq!(format_rfc3339(t), "2023-07-02T00:05:00Z");
        assert_eq!(parse_rfc3339("2023-07-02T02:05:00+02:00"), Some(t));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("36h"), Some(129_600));
        assert_eq!(parse_duration("7d"), Some(604_800));
        assert_eq!(parse_duration("0"), Some(0));
        for bad in ["", "m", "5", "-5m", "5w", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replay_clock_runs_speed_times_faster() {
        let c = ReplayClock::new(1_000, 60.0);
        assert_eq!(c.now(), 1_000);
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert_eq!(c.now(), 1_600);
        assert_eq!(c.instant_of(1_600), tokio::time::Instant::now());
        assert_eq!(c.instant_of(0), c.instant_of(1_000), "never before the start");
    }
}
