//! Live deployment telemetry: per-deployment TTFT, end-to-end latency, decode rate, error rate,
//! in-flight count and a circuit breaker — all atomics, so the request path never takes a lock.
//!
//! Smoothing: an exponentially weighted moving average whose weight starts as a running mean
//! over the configured prior and `prior_weight` pseudo-samples, then settles at `alpha`:
//! sample n (1-based) gets weight `max(1 / (n + prior_weight), alpha)`. With the defaults
//! (prior_weight 2, alpha 0.2) the first measurement already outweighs half the prior, after
//! 5 samples the prior's share is under 30 %, after 15 under 5 %; then the average forgets
//! with a half-life of ~3 samples, fast enough to follow a deployment that slows down.
//!
//! Circuit breaker, per deployment: *closed* → `failure_threshold` consecutive failures →
//! *open* for a backoff (`open_base`, doubling on each failed probe up to `open_max`) → after
//! the backoff *half-open*: one request (or active probe) is let through; success closes the
//! breaker and resets the backoff, failure opens it again. Open deployments are not candidates;
//! if every deployment of a model is open, the one whose breaker opened longest ago is tried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, Deployment};
use crate::metrics::Metrics;

/// Telemetry and breaker tuning (`[telemetry]` and `[health]` in the config).
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// Record measurements and use them for candidates. Default true; off = priors only.
    pub enabled: bool,
    /// Steady-state EWMA weight of a new sample. Default 0.2.
    pub alpha: f64,
    /// How many samples the configured prior is worth. Default 2.
    pub prior_weight: f64,
    /// Consecutive failures that open the breaker. Default 3.
    pub failure_threshold: u32,
    /// First open period. Default 1 s.
    pub open_base: Duration,
    /// Longest open period. Default 60 s.
    pub open_max: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            enabled: true,
            alpha: 0.2,
            prior_weight: 2.0,
            failure_threshold: 3,
            open_base: Duration::from_secs(1),
            open_max: Duration::from_secs(60),
        }
    }
}

/// Breaker state as seen by routing and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Backoff elapsed: one trial request may pass.
    HalfOpen,
    Open,
}

impl BreakerState {
    /// Wire and metric spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// A lock-free f64 EWMA with a sample count.
#[derive(Debug)]
struct Ewma {
    bits: AtomicU64,
    samples: AtomicU64,
}

impl Ewma {
    fn new(prior: f64) -> Self {
        Ewma { bits: AtomicU64::new(prior.to_bits()), samples: AtomicU64::new(0) }
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }

    fn record(&self, x: f64, s: &TelemetrySettings) {
        if !x.is_finite() {
            return;
        }
        let n = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
        let w = (1.0 / (n as f64 + s.prior_weight)).max(s.alpha).min(1.0);
        let _ = self.bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            let v = f64::from_bits(old);
            Some((v + w * (x - v)).to_bits())
        });
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;

/// Live numbers of one deployment. Shared by every request and kept across config reloads
/// (keyed by deployment id).
#[derive(Debug)]
pub struct DeploymentStats {
    ttft_ms: Ewma,
    latency_ms: Ewma,
    tokens_per_s: Ewma,
    error_rate: Ewma,
    in_flight: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    state: AtomicU8,
    /// Milliseconds since `epoch` when the breaker last opened.
    opened_at_ms: AtomicU64,
    backoff_ms: AtomicU64,
    probing: AtomicBool,
    epoch: Instant,
}

/// A snapshot of a deployment's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub ttft_ms: f64,
    pub latency_ms: f64,
    pub tokens_per_s: f64,
    pub error_rate: f64,
    pub in_flight: u32,
    pub requests: u64,
    pub failures: u64,
    pub ttft_samples: u64,
    pub tokens_per_s_samples: u64,
    pub breaker: BreakerState,
    /// How long ago the breaker opened (open or half-open only).
    pub open_for: Option<Duration>,
}

/// Outcome of trying to send a request to a deployment, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed breaker: go ahead.
    Allowed,
    /// Half-open: this request is the trial.
    Trial,
    /// Open, or half-open with a trial already running: skip.
    Refused,
}

impl DeploymentStats {
    fn new(d: &Deployment, epoch: Instant) -> Self {
        DeploymentStats {
            ttft_ms: Ewma::new(d.prior.ttft_ms),
            latency_ms: Ewma::new(d.prior.ttft_ms),
            tokens_per_s: Ewma::new(d.prior.tokens_per_s),
            error_rate: Ewma::new(0.0),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            state: AtomicU8::new(CLOSED),
            opened_at_ms: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Current breaker state.
    pub fn breaker(&self) -> BreakerState {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return BreakerState::Closed;
        }
        let since = self.now_ms().saturating_sub(self.opened_at_ms.load(Ordering::Acquire));
        if since >= self.backoff_ms.load(Ordering::Acquire) { BreakerState::HalfOpen } else { BreakerState::Open }
    }

    /// Asks the breaker whether a request may go to this deployment now.
    pub fn admit(&self) -> Admission {
        match self.breaker() {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open => Admission::Refused,
            BreakerState::HalfOpen => {
                if self.probing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    Admission::Trial
                } else {
                    Admission::Refused
                }
            }
        }
    }

    /// Force-admits a request even though the breaker is open (every deployment is open).
    pub fn force_trial(&self) {
        self.probing.store(true, Ordering::Release);
    }

    /// A request starts using this deployment; the guard ends it.
    pub fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    /// Records a success: closes the breaker and feeds the error rate.
    pub fn record_success(&self, s: &TelemetrySettings) {
        self.error_rate.record(0.0, s);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.backoff_ms.store(0, Ordering::Release);
            self.state.store(CLOSED, Ordering::Release);
            tracing::info!("deployment readmitted: breaker closed");
        }
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failure (connect error, timeout, 429/5xx, mid-stream failure); may open
    /// the breaker. Returns true when this failure opened it.
    pub fn record_failure(&self, s: &TelemetrySettings) -> bool {
        self.error_rate.record(1.0, s);
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let was_trial = self.probing.swap(false, Ordering::AcqRel);
        let open = self.state.load(Ordering::Acquire) != CLOSED;
        if open || was_trial || n >= s.failure_threshold {
            let base = s.open_base.as_millis() as u64;
            let prev = self.backoff_ms.load(Ordering::Acquire);
            let next = if open && prev > 0 { (prev * 2).min(s.open_max.as_millis() as u64) } else { base };
            self.backoff_ms.store(next, Ordering::Release);
            self.opened_at_ms.store(self.now_ms(), Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
            return !open;
        }
        false
    }

    /// Records the time to the first content token.
    pub fn record_ttft(&self, ttft: Duration, s: &TelemetrySettings) {
        self.ttft_ms.record(ttft.as_secs_f64() * 1e3, s);
    }

    /// Records a completed request's latency and, for streams, the decode rate: output tokens
    /// after the first over the time since the first.
    pub fn record_completion(&self, latency: Duration, decode: Option<(u64, Duration)>, s: &TelemetrySettings) {
        self.latency_ms.record(latency.as_secs_f64() * 1e3, s);
        if let Some((tokens, since_first)) = decode {
            let secs = since_first.as_secs_f64();
            if tokens >= 1 && secs > 0.0 {
                self.tokens_per_s.record(tokens as f64 / secs, s);
            }
        }
    }

    /// The numbers right now.
    pub fn snapshot(&self) -> Snapshot {
        let breaker = self.breaker();
        Snapshot {
            ttft_ms: self.ttft_ms.get(),
            latency_ms: self.latency_ms.get(),
            tokens_per_s: self.tokens_per_s.get(),
            error_rate: self.error_rate.get(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            ttft_samples: self.ttft_ms.samples.load(Ordering::Relaxed),
            tokens_per_s_samples: self.tokens_per_s.samples.load(Ordering::Relaxed),
            breaker,
            open_for: (breaker != BreakerState::Closed).then(|| {
                Duration::from_millis(self.now_ms().saturating_sub(self.opened_at_ms.load(Ordering::Acquire)))
            }),
        }
    }
}

/// Keeps a deployment's in-flight count up while a request uses it.
#[derive(Debug)]
pub struct InFlightGuard(Arc<DeploymentStats>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stats of every deployment of a catalog, indexed like `catalog.models[m].deployments[d]`.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub settings: TelemetrySettings,
    by_model: Vec<Vec<Arc<DeploymentStats>>>,
    by_id: HashMap<String, Arc<DeploymentStats>>,
}

impl Telemetry {
    /// Builds stats for `catalog`, reusing those of `previous` for deployments that keep their
    /// id, so a reload does not forget what was measured.
    pub fn new(catalog: &Catalog, settings: TelemetrySettings, previous: Option<&Telemetry>) -> Self {
        let epoch = Instant::now();
        let mut by_id = HashMap::new();
        let by_model = catalog
            .models
            .iter()
            .map(|m| {
                m.deployments
                    .iter()
                    .map(|d| {
                        let st = previous
                            .and_then(|p| p.by_id.get(&d.id))
                            .cloned()
                            .unwrap_or_else(|| Arc::new(DeploymentStats::new(d, epoch)));
                        by_id.insert(d.id.clone(), st.clone());
                        st
                    })
                    .collect()
            })
            .collect();
        Telemetry { settings, by_model, by_id }
    }

    /// Stats of deployment `d` of model index `m`.
    pub fn get(&self, m: usize, d: usize) -> Option<&Arc<DeploymentStats>> {
        self.by_model.get(m)?.get(d)
    }
}

impl Telemetry {
    /// Copies every deployment's live numbers into the `joule_deployment` gauges.
    pub fn export(&self, catalog: &Catalog, metrics: &Metrics) {
        // Deployments a reload removed leave no stale series behind.
        metrics.deployment.reset();
        for (mi, m) in catalog.models.iter().enumerate() {
            for (di, d) in m.deployments.iter().enumerate() {
                let Some(s) = self.get(mi, di).map(|st| st.snapshot()) else { continue };
                let breaker = match s.breaker {
                    BreakerState::Closed => 0.0,
                    BreakerState::HalfOpen => 0.5,
                    BreakerState::Open => 1.0,
                };
                for (measure, v) in [
                    ("ttft_seconds", s.ttft_ms / 1e3),
                    ("latency_seconds", s.latency_ms / 1e3),
                    ("tokens_per_second", s.tokens_per_s),
                    ("error_rate", s.error_rate),
                    ("in_flight", f64::from(s.in_flight)),
                    ("breaker_open", breaker),
                ] {
                    metrics.deployment.with_label_values(&[d.id.as_str(), measure]).set(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{DeploymentKind, Prior, TokenPrice};

    fn dep() -> Deployment {
        Deployment {
            id: "d".into(),
            upstream_model: "u".into(),
            prior: Prior { ttft_ms: 500.0, tokens_per_s: 50.0 },
            kind: DeploymentKind::Hosted {
                data_center: 0,
                base_url: String::new(),
                api_key: None,
                base_price: TokenPrice::default(),
                gpu: None,
                floor: TokenPrice::default(),
            },
        }
    }

    fn settings() -> TelemetrySettings {
        TelemetrySettings { open_base: Duration::from_millis(0), ..Default::default() }
    }

    #[test]
    fn prior_then_measurements_dominate() {
        let s = TelemetrySettings::default();
        let st = DeploymentStats::new(&dep(), Instant::now());
        assert_eq!(st.snapshot().ttft_ms, 500.0);
        st.record_ttft(Duration::from_millis(100), &s);
        // weight 1/3 on the first sample
        assert!((st.snapshot().ttft_ms - (500.0 - 400.0 / 3.0)).abs() < 1e-9);
        for _ in 0..20 {
            st.record_ttft(Duration::from_millis(100), &s);
        }
        assert!((st.snapshot().ttft_ms - 100.0).abs() < 5.0, "{}", st.snapshot().ttft_ms);
        st.record_completion(Duration::from_secs(1), Some((99, Duration::from_millis(500))), &s);
        assert!(st.snapshot().tokens_per_s > 50.0);
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let s = TelemetrySettings { open_base: Duration::from_secs(3600), ..Default::default() };
        let st = DeploymentStats::new(&dep(), Instant::now());
        assert!(!st.record_failure(&s));
        assert!(!st.record_failure(&s));
        assert_eq!(st.admit(), Admission::Allowed);
        assert!(st.record_failure(&s), "third consecutive failure opens");
        assert_eq!(st.breaker(), BreakerState::Open);
        assert_eq!(st.admit(), Admission::Refused);
        // With a zero backoff the breaker is half-open at once: one trial at a time.
        let s0 = settings();
        let st = DeploymentStats::new(&dep(), Instant::now());
        for _ in 0..3 {
            st.record_failure(&s0);
        }
        assert_eq!(st.breaker(), BreakerState::HalfOpen);
        assert_eq!(st.admit(), Admission::Trial);
        assert_eq!(st.admit(), Admission::Refused, "only one trial");
        st.record_success(&s0);
        assert_eq!(st.breaker(), BreakerState::Closed);
        assert_eq!(st.admit(), Admission::Allowed);
    }

    #[test]
    fn failed_trial_doubles_backoff_up_to_max() {
        let s = TelemetrySettings { open_base: Duration::from_millis(10), open_max: Duration::from_millis(25), ..Default::default() };
        let st = DeploymentStats::new(&dep(), Instant::now());
        for _ in 0..3 {
            st.record_failure(&s);
        }
        assert_eq!(st.backoff_ms.load(Ordering::Relaxed), 10);
        st.record_failure(&s);
        assert_eq!(st.backoff_ms.load(Ordering::Relaxed), 20);
        st.record_failure(&s);
        assert_eq!(st.backoff_ms.load(Ordering::Relaxed), 25);
    }

    #[test]
    fn in_flight_guard() {
        let st = Arc::new(DeploymentStats::new(&dep(), Instant::now()));
        let g = st.begin();
        let g2 = st.begin();
        assert_eq!(st.snapshot().in_flight, 2);
        drop(g);
        drop(g2);
        assert_eq!(st.snapshot().in_flight, 0);
        assert_eq!(st.snapshot().requests, 2);
    }
}
