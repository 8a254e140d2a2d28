//! Prometheus metrics: every metric the gateway exports is defined here, with labels from
//! closed sets (catalog ids, status codes, error and failure labels) so cardinality is bounded
//! by the config, never by client input.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The gateway's metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by model, deployment and HTTP status.
    pub requests: IntCounterVec,
    /// Whole-request duration by model.
    pub duration: HistogramVec,
    /// Time to first content token by model.
    pub ttft: HistogramVec,
    /// Failed upstream attempts by deployment and kind.
    pub upstream_failures: IntCounterVec,
    /// Streams ended by an upstream failure after bytes reached the client.
    pub stream_failures: IntCounterVec,
    /// Requests being served now.
    pub in_flight: IntGauge,
    /// Strategy plugins.
    pub strategy: StrategyMetrics,
}

/// Strategy plugin metrics. The `strategy` label is a loaded plugin's tag (operator-deployed,
/// bounded like catalog ids); `kind` and `reason` are closed sets.
#[derive(Clone)]
pub struct StrategyMetrics {
    /// Duration of one plugin call, by strategy.
    pub call_duration: HistogramVec,
    /// Plugin call faults by strategy and kind (trap, timeout, memory, fuel, wrong_count,
    /// non_finite, guest_error, instantiate).
    pub faults: IntCounterVec,
    /// Decisions answered by the native ranking instead, by strategy and reason (fault,
    /// disabled, missing).
    pub fallbacks: IntCounterVec,
    /// 1 per loaded plugin, labelled with its version and the first 12 hex digits of its SHA-256.
    pub loaded: IntGaugeVec,
    /// Component loads by result (ok, rejected).
    pub loads: IntCounterVec,
    /// Decisions not written to the decision log because its writer was behind.
    pub decision_log_dropped: IntCounter,
}

/// Plugin calls take microseconds; the top buckets catch timeouts (default 10 ms).
const CALL_BUCKETS: &[f64] = &[1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2];

impl StrategyMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let call_duration = HistogramVec::new(
            HistogramOpts::new("joule_strategy_call_duration_seconds", "Strategy plugin call duration").buckets(CALL_BUCKETS.to_vec()),
            &["strategy"],
        )?;
        let faults = IntCounterVec::new(Opts::new("joule_strategy_faults_total", "Strategy plugin faults by kind"), &["strategy", "kind"])?;
        let fallbacks = IntCounterVec::new(
            Opts::new("joule_strategy_fallbacks_total", "Decisions ranked natively because a plugin could not be used"),
            &["strategy", "reason"],
        )?;
        let loaded = IntGaugeVec::new(Opts::new("joule_strategy_loaded", "Loaded strategy plugins by version"), &["strategy", "version", "sha256"])?;
        let loads = IntCounterVec::new(Opts::new("joule_strategy_loads_total", "Strategy component loads by result"), &["result"])?;
        let decision_log_dropped = IntCounter::new("joule_decision_log_dropped_total", "Decisions dropped by a lagging decision log")?;
        registry.register(Box::new(call_duration.clone()))?;
        registry.register(Box::new(faults.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(loaded.clone()))?;
        registry.register(Box::new(loads.clone()))?;
        registry.register(Box::new(decision_log_dropped.clone()))?;
        Ok(StrategyMetrics { call_duration, faults, fallbacks, loaded, loads, decision_log_dropped })
    }
}

const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// Only on a programming error (duplicate registration).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("joule_requests_total", "Requests by model, deployment and status"),
            &["model", "deployment", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("joule_request_duration_seconds", "Request duration").buckets(BUCKETS.to_vec()),
            &["model"],
        )?;
        let ttft = HistogramVec::new(
            HistogramOpts::new("joule_ttft_seconds", "Time to first content token").buckets(BUCKETS.to_vec()),
            &["model"],
        )?;
        let upstream_failures = IntCounterVec::new(
            Opts::new("joule_upstream_failures_total", "Failed upstream attempts by kind"),
            &["deployment", "kind"],
        )?;
        let stream_failures = IntCounterVec::new(
            Opts::new("joule_stream_failures_total", "Streams cut by an upstream failure"),
            &["deployment", "kind"],
        )?;
        let in_flight = IntGauge::new("joule_in_flight_requests", "Requests in flight")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(upstream_failures.clone()))?;
        registry.register(Box::new(stream_failures.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let strategy = StrategyMetrics::new(&registry)?;
        Ok(Metrics { registry, requests, duration, ttft, upstream_failures, stream_failures, in_flight, strategy })
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics; an error yields an empty page.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
