//! File replay: one or more CSV traces merged into one time line and fed to the pricing
//! engine as trace time passes on a [`ReplayClock`] — real time (`speed = 1`) or accelerated.
//! Rows up to the start time are applied at once (so history fills in as it happened); then
//! each interval start is applied when the clock reaches it. With `repeat`, the trace starts
//! over shifted by its length (rounded up to whole days, so daily shapes stay aligned) and
//! time keeps moving forward. Day-ahead rows (market `DA`) are applied when the day-ahead
//! market would have published them ([`EnergyRow::due`]), not when their interval starts.
//!
//! The trace files hold whole markets; only the locations some data center uses are kept
//! (the others are counted once in the start-up log line, not as feed errors). Malformed lines
//! are reported as feed errors when the trace is loaded.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use super::{parse_csv, DocumentError};
use crate::clock::{Clock, ReplayClock};
use crate::pricing::energy::{EnergyRow, ParsedRow};
use crate::pricing::{Feed, Pricing, ReplaySettings, ReplaySource, ReplayStart};

/// Why a trace could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("energy price trace {source_name}: {message}")]
    Source { source_name: String, message: String },
    #[error("energy price trace: no rows for any data center's price node")]
    Empty,
}

/// The merged trace, sorted by when each row is due ([`EnergyRow::due`]: the interval start
/// of a real-time row), then source order.
#[derive(Debug, Clone)]
pub struct Trace {
    rows: Vec<EnergyRow>,
    /// Unparsable lines, reported once when the replay starts.
    bad: Vec<ParsedRow>,
    first: i64,
    /// Trace length rounded up to whole days: the shift between repetitions.
    span: i64,
}

impl Trace {
    /// Reads the sources and keeps the rows of `nodes`.
    ///
    /// # Errors
    /// An unreadable source or a CSV without the required header; no usable row at all.
    pub fn load(sources: &[ReplaySource], nodes: &HashSet<String>) -> Result<Trace, ReplayError> {
        let mut rows = Vec::new();
        let mut bad = Vec::new();
        let mut skipped = HashSet::new();
        for src in sources {
            let (name, text) = match src {
                ReplaySource::File(p) => (
                    p.display().to_string(),
                    std::borrow::Cow::Owned(std::fs::read_to_string(p).map_err(|e| ReplayError::Source {
                        source_name: p.display().to_string(),
                        message: e.to_string(),
                    })?),
                ),
                ReplaySource::Embedded { name, text } => (name.to_string(), std::borrow::Cow::Borrowed(*text)),
            };
            let parsed = parse_csv(&text)
                .map_err(|DocumentError(message)| ReplayError::Source { source_name: name.clone(), message })?;
            for (pos, r) in parsed {
                match r {
                    Ok(row) if nodes.contains(&row.node) => rows.push(row),
                    Ok(row) => {
                        skipped.insert(row.node);
                    }
                    Err(mut e) => {
                        e.message = format!("{name}: {}", e.message);
                        bad.push((pos, Err(e)));
                    }
                }
            }
        }
        if rows.is_empty() {
            return Err(ReplayError::Empty);
        }
        rows.sort_by_key(EnergyRow::due);
        let first = rows.iter().map(|r| r.price.interval_start).min().unwrap_or(0);
        let end = rows.iter().map(|r| r.price.interval_start + 60 * i64::from(r.price.interval_minutes)).max().unwrap_or(first);
        let span = ((end - first + 86_399) / 86_400).max(1) * 86_400;
        if !skipped.is_empty() {
            tracing::info!(
                locations = skipped.len(),
                "energy replay: ignoring trace locations no data center uses"
            );
        }
        Ok(Trace { rows, bad, first, span })
    }

    /// The rows kept, sorted by when they are due.
    pub fn rows(&self) -> &[EnergyRow] {
        &self.rows
    }

    /// Unparsable lines found while loading.
    pub fn bad_rows(&self) -> usize {
        self.bad.len()
    }

    /// Time of the first row.
    pub fn first(&self) -> i64 {
        self.first
    }

    /// Rows kept.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// No rows kept.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Trace time at which a replay with `start` begins.
    pub fn start_time(&self, start: ReplayStart) -> i64 {
        match start {
            ReplayStart::TraceStart => self.first,
            ReplayStart::At(t) => t,
            ReplayStart::Offset(s) => self.first + s,
        }
    }
}

/// A replay ready to run: the trace and its clock.
#[derive(Debug)]
pub struct Replay {
    trace: Trace,
    clock: ReplayClock,
    repeat: bool,
}

impl Replay {
    /// Loads the trace and starts the clock at the configured start.
    ///
    /// # Errors
    /// See [`Trace::load`].
    pub fn new(settings: &ReplaySettings, nodes: &HashSet<String>) -> Result<Self, ReplayError> {
        let trace = Trace::load(&settings.sources, nodes)?;
        let clock = ReplayClock::new(trace.start_time(settings.start), settings.speed);
        Ok(Replay { trace, clock, repeat: settings.repeat })
    }

    /// The replay's clock (the pricing engine runs on it).
    pub fn clock(&self) -> ReplayClock {
        self.clock
    }

    /// Feeds `pricing` until the trace ends (or forever with `repeat`) or `shutdown` resolves.
    pub async fn run(self, pricing: Arc<Pricing>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let Replay { mut trace, clock, repeat } = self;
        if !trace.bad.is_empty() {
            pricing.ingest(Feed::Replay, std::mem::take(&mut trace.bad));
        }
        let mut shift = 0i64;
        // Start with the first cycle that contains the start time.
        if repeat && clock.origin() >= trace.first + trace.span {
            shift = (clock.origin() - trace.first) / trace.span * trace.span;
        }
        // Catch up: everything up to the start at once.
        let cut = trace.rows.partition_point(|r| r.due() + shift <= clock.now());
        let mut i = cut;
        if cut > 0 {
            let rows = trace.rows[..cut].iter().map(|r| shifted(r, shift)).enumerate().map(|(k, r)| (k + 1, Ok(r))).collect();
            pricing.ingest(Feed::Replay, rows);
        }
        tracing::info!(
            start = %crate::clock::format_rfc3339(clock.now()),
            rows = trace.rows.len(),
            "energy replay running"
        );
        loop {
            if i >= trace.rows.len() {
                if !repeat {
                    tracing::info!("energy replay: end of trace; prices turn stale from here");
                    return;
                }
                shift += trace.span;
                i = 0;
            }
            let t = trace.rows[i].due() + shift;
            let j = i + trace.rows[i..].iter().take_while(|r| r.due() + shift == t).count();
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(clock.instant_of(t)) => {}
            }
            let rows = trace.rows[i..j].iter().map(|r| shifted(r, shift)).enumerate().map(|(k, r)| (k + 1, Ok(r))).collect();
            pricing.ingest(Feed::Replay, rows);
            i = j;
        }
    }
}

fn shifted(r: &EnergyRow, shift: i64) -> EnergyRow {
    let mut r = r.clone();
    r.price.interval_start += shift;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::history::History;
    use crate::pricing::EnergySettings;

    const TRACE: &str = "location,iso,market,interval_start,interval_minutes,usd_per_mwh
SP-15,CAISO,RT,2023-07-02T00:00:00Z,15,10
Chicago Hub,PJM,RT,2023-07-02T00:00:00Z,5,20
Chicago Hub,PJM,RT,2023-07-02T00:05:00Z,5,21
Other Hub,PJM,RT,2023-07-02T00:05:00Z,5,99
Chicago Hub,PJM,RT,2023-07-02T00:10:00Z,5,22
SP-15,CAISO,RT,2023-07-02T00:15:00Z,15,11
Chicago Hub,PJM,RT,2023-07-02T00:15:00Z,5,23
Chicago Hub,PJM,RT,not-a-time,5,23
";
    const T0: i64 = 1_688_256_000;

    fn setup(speed: f64, start: ReplayStart, repeat: bool) -> (Replay, Arc<Pricing>) {
        let catalog = crate::pricing::tests::two_site_catalog();
        let nodes = catalog.data_centers.iter().filter_map(|d| d.price_node.clone()).collect();
        let settings = ReplaySettings {
            sources: vec![ReplaySource::Embedded { name: "test.csv", text: TRACE }],
            speed,
            start,
            repeat,
        };
        let replay = Replay::new(&settings, &nodes).unwrap();
        let pricing = Pricing::new(&catalog, &EnergySettings::default(), Arc::new(replay.clock()), History::in_memory(7), None);
        (replay, pricing)
    }

    fn price(p: &Pricing, node: &str) -> Option<f64> {
        p.table().get(node).map(|e| e.usd_per_mwh)
    }

    #[tokio::test(start_paused = true)]
    async fn accelerated_replay_applies_each_interval_on_time() {
        // 60×: one trace minute per real second, so a 5-minute interval every 5 s.
        let (replay, pricing) = setup(60.0, ReplayStart::TraceStart, false);
        let task = tokio::spawn(replay.run(pricing.clone(), std::future::pending()));
        tokio::task::yield_now().await;
        assert_eq!(price(&pricing, "CAISO/SP-15"), Some(10.0));
        assert_eq!(price(&pricing, "PJM/Chicago Hub"), Some(20.0));
        let start = tokio::time::Instant::now();
        // Just before 00:05 in trace time nothing changed.
        tokio::time::sleep(std::time::Duration::from_millis(4_990)).await;
        assert_eq!(price(&pricing, "PJM/Chicago Hub"), Some(20.0));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(price(&pricing, "PJM/Chicago Hub"), Some(21.0));
        assert_eq!(pricing.clock().now(), T0 + 300);
        // 00:15 arrives 15 s after the start; then the trace ends.
        tokio::time::sleep_until(start + std::time::Duration::from_millis(14_990)).await;
        assert_eq!(price(&pricing, "CAISO/SP-15"), Some(10.0));
        task.await.unwrap();
        assert_eq!(tokio::time::Instant::now() - start, std::time::Duration::from_secs(15));
        assert_eq!(price(&pricing, "CAISO/SP-15"), Some(11.0));
        assert_eq!(price(&pricing, "PJM/Chicago Hub"), Some(23.0));
        assert!(pricing.table().get("PJM/Other Hub").is_none(), "unused locations are not fed");
        // One history frame per distinct interval start.
        let ts: Vec<i64> = pricing.history().frames().iter().map(|f| f.t).collect();
        assert_eq!(ts, vec![T0, T0 + 300, T0 + 600, T0 + 900]);
    }

    #[tokio::test(start_paused = true)]
    async fn start_offset_catches_up_and_repeat_moves_forward() {
        let (replay, pricing) = setup(600.0, ReplayStart::Offset(600), true);
        let task = tokio::spawn(replay.run(pricing.clone(), std::future::pending()));
        tokio::task::yield_now().await;
        // Everything up to 00:10 applied at once.
        assert_eq!(price(&pricing, "PJM/Chicago Hub"), Some(22.0));
        assert_eq!(price(&pricing, "CAISO/SP-15"), Some(10.0));
        assert_eq!(pricing.history().frames().len(), 3);
        // The trace spans one day; at 600× a day takes 144 s. After it, the first rows come
        // again one day later.
        // Trace 00:00 of the next day is due (86 400 − 600) / 600 = 143 s after the start,
        // 00:05 half a second later.
        tokio::time::sleep(std::time::Duration::from_millis(142_900)).await;
        assert_eq!(pricing.table().get("PJM/Chicago Hub").unwrap().interval_start, T0 + 900);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let p = pricing.table().get("PJM/Chicago Hub").copied().unwrap();
        assert_eq!((p.interval_start, p.usd_per_mwh), (T0 + 86_400, 20.0));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn day_ahead_rows_arrive_when_published_and_stay_out_of_the_table() {
        // Day-ahead prices for 2023-07-02 13:00 and 2023-07-03 01:00: published 07-01 12:00
        // (before the trace starts: applied at once) and 07-02 12:00.
        let text = "location,iso,market,interval_start,interval_minutes,usd_per_mwh
SP-15,CAISO,RT,2023-07-02T00:00:00Z,15,10
SP-15,CAISO,DA,2023-07-02T13:00:00Z,60,999
SP-15,CAISO,DA,2023-07-03T01:00:00Z,60,888
";
        let catalog = crate::pricing::tests::two_site_catalog();
        let nodes = catalog.data_centers.iter().filter_map(|d| d.price_node.clone()).collect();
        let settings = ReplaySettings {
            sources: vec![ReplaySource::Embedded { name: "da.csv", text }],
            speed: 3600.0,
            start: ReplayStart::TraceStart,
            repeat: false,
        };
        let replay = Replay::new(&settings, &nodes).unwrap();
        let dues: Vec<i64> = replay.trace.rows().iter().map(EnergyRow::due).collect();
        assert_eq!(dues, vec![T0 - 12 * 3600, T0, T0 + 12 * 3600]);
        assert_eq!(replay.trace.first(), T0);
        let pricing = Pricing::new(&catalog, &EnergySettings::default(), Arc::new(replay.clock()), History::in_memory(7), None);
        let task = tokio::spawn(replay.run(pricing.clone(), std::future::pending()));
        tokio::task::yield_now().await;
        let ahead = |p: &Pricing| p.day_ahead("CAISO/SP-15").iter().map(|x| x.usd_per_mwh).collect::<Vec<_>>();
        assert_eq!(ahead(&pricing), vec![999.0]);
        assert_eq!(price(&pricing, "CAISO/SP-15"), Some(10.0));
        // 12 trace hours later (12 s at 3600×) the next day's price is published.
        task.await.unwrap();
        assert_eq!(ahead(&pricing), vec![999.0, 888.0]);
        assert_eq!(price(&pricing, "CAISO/SP-15"), Some(10.0));
        assert_eq!(pricing.clock().now(), T0 + 12 * 3600);
    }

    #[test]
    fn load_reports_bad_sources() {
        let nodes: HashSet<String> = ["CAISO/SP-15".to_string()].into();
        let missing = [ReplaySource::File("/nonexistent/trace.csv".into())];
        assert!(matches!(Trace::load(&missing, &nodes), Err(ReplayError::Source { .. })));
        let headerless = [ReplaySource::Embedded { name: "x", text: "1,2,3\n" }];
        assert!(matches!(Trace::load(&headerless, &nodes), Err(ReplayError::Source { .. })));
        let other: HashSet<String> = ["ERCOT/West".to_string()].into();
        let t = [ReplaySource::Embedded { name: "t", text: TRACE }];
        assert!(matches!(Trace::load(&t, &other), Err(ReplayError::Empty)));
        let ok = Trace::load(&t, &nodes).unwrap();
        assert_eq!((ok.len(), ok.bad.len(), ok.span), (2, 1, 86_400));
    }
}
