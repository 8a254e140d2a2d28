//! Prometheus metrics: every metric the gateway exports is defined here, with labels from
//! closed sets (catalog ids, status codes, error and failure labels) so cardinality is bounded
//! by the config, never by client input.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
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
    /// Store write latency by operation (`usage`).
    pub store_write: HistogramVec,
    /// Failed store writes by operation.
    pub store_errors: IntCounterVec,
    /// Usage records waiting in the queue.
    pub usage_queue_depth: IntGauge,
    /// Usage records written to the store (directly or from the spill file).
    pub usage_written: IntCounter,
    /// Usage records spilled to the local file because the store was unavailable.
    pub usage_spilled: IntCounter,
    /// Usage records lost (queue full, or the spill file unwritable).
    pub usage_dropped: IntCounter,
    /// Requests refused by a limit, by scope (`key`, `project`) and kind (`requests`,
    /// `tokens`, `budget`).
    pub limit_rejections: IntCounterVec,
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
        let store_write = HistogramVec::new(
            HistogramOpts::new("joule_store_write_seconds", "Store write latency by operation")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["op"],
        )?;
        let store_errors = IntCounterVec::new(Opts::new("joule_store_errors_total", "Failed store writes"), &["op"])?;
        let usage_queue_depth = IntGauge::new("joule_usage_queue_depth", "Usage records waiting to be written")?;
        let usage_written = IntCounter::new("joule_usage_written_total", "Usage records written to the store")?;
        let usage_spilled =
            IntCounter::new("joule_usage_spilled_total", "Usage records spilled to the local file (store unavailable)")?;
        let usage_dropped = IntCounter::new("joule_usage_dropped_total", "Usage records lost (queue full or spill unwritable)")?;
        let limit_rejections = IntCounterVec::new(
            Opts::new("joule_limit_rejections_total", "Requests refused by rate limits and budgets"),
            &["scope", "kind"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(upstream_failures.clone()))?;
        registry.register(Box::new(stream_failures.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(store_write.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(usage_queue_depth.clone()))?;
        registry.register(Box::new(usage_written.clone()))?;
        registry.register(Box::new(usage_spilled.clone()))?;
        registry.register(Box::new(usage_dropped.clone()))?;
        registry.register(Box::new(limit_rejections.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            ttft,
            upstream_failures,
            stream_failures,
            in_flight,
            store_write,
            store_errors,
            usage_queue_depth,
            usage_written,
            usage_spilled,
            usage_dropped,
            limit_rejections,
        })
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics; an error yields an empty page.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
