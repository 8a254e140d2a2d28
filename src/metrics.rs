//! Prometheus metrics: every metric the gateway exports is defined here, with labels from
//! closed sets (catalog ids, status codes, error and failure labels) so cardinality is bounded
//! by the config, never by client input.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
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
    /// Live deployment numbers by deployment and measure (`ttft_seconds`, `latency_seconds`,
    /// `tokens_per_second`, `error_rate`, `in_flight`, `breaker_open` (0 closed, 0.5 half-open,
    /// 1 open)); refreshed at scrape time, not on the request path.
    pub deployment: GaugeVec,
    /// Latest energy price held per data center, $/MWh.
    pub energy_price: GaugeVec,
    /// Age of that price (clock time minus its interval start), seconds.
    pub energy_price_age: GaugeVec,
    /// 1 while a data center's price is stale (older than 2 intervals, or none yet).
    pub energy_price_stale: IntGaugeVec,
    /// Current client token price per deployment and direction, $/Mtok.
    pub token_price: GaugeVec,
    /// Energy feed rows accepted, by feed.
    pub energy_rows: IntCounterVec,
    /// Energy feed errors by feed and kind (rejected row kinds, `fetch`).
    pub energy_feed_errors: IntCounterVec,
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
    /// Config reloads by `result`: `success` | `failure`.
    pub config_reloads: IntCounterVec,
    /// Client connections the gateway ended before a handler ran, by `reason`:
    /// `head_timeout` | `idle_timeout` | `malformed_head`.
    pub connections_closed: IntCounterVec,
    /// Requests refused because this process had no file descriptor left for the upstream
    /// connection (not counted against any deployment).
    pub descriptors_exhausted: IntCounter,
    /// Calls to the shared limits server (Valkey/Redis) that failed or timed out.
    pub limits_backend_errors: IntCounter,
    /// Batch lines sent by this instance, by `outcome`: `completed` | `failed` | `retried`
    /// (the deployments were busy or down; the line waits for another try).
    pub batch_lines: IntCounterVec,
    /// Batches that ended here, by `status`: `completed` | `expired` | `cancelled`.
    pub batches_ended: IntCounterVec,
    /// TLS certificates' `notAfter` (unix seconds), by certificate `name` (from the config).
    pub tls_expiry: IntGaugeVec,
    /// Certificate file reloads by `name` and `result`: `success` | `failure` (a bad new file:
    /// the previous certificate keeps serving).
    pub tls_reloads: IntCounterVec,
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
        let deployment = GaugeVec::new(
            Opts::new("joule_deployment", "Live deployment telemetry by measure"),
            &["deployment", "measure"],
        )?;
        registry.register(Box::new(deployment.clone()))?;
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
        let energy_price = GaugeVec::new(
            Opts::new("joule_energy_price_usd_per_mwh", "Latest energy price per data center"),
            &["data_center"],
        )?;
        let energy_price_age = GaugeVec::new(
            Opts::new("joule_energy_price_age_seconds", "Age of the latest energy price per data center"),
            &["data_center"],
        )?;
        let energy_price_stale = IntGaugeVec::new(
            Opts::new("joule_energy_price_stale", "1 while the data center's energy price is stale"),
            &["data_center"],
        )?;
        let token_price = GaugeVec::new(
            Opts::new("joule_token_price_usd_per_mtok", "Current client token price per deployment"),
            &["deployment", "direction"],
        )?;
        let energy_rows = IntCounterVec::new(
            Opts::new("joule_energy_feed_rows_total", "Energy feed rows accepted"),
            &["feed"],
        )?;
        let energy_feed_errors = IntCounterVec::new(
            Opts::new("joule_energy_feed_errors_total", "Energy feed errors by kind"),
            &["feed", "kind"],
        )?;
        registry.register(Box::new(energy_price.clone()))?;
        registry.register(Box::new(energy_price_age.clone()))?;
        registry.register(Box::new(energy_price_stale.clone()))?;
        registry.register(Box::new(token_price.clone()))?;
        registry.register(Box::new(energy_rows.clone()))?;
        registry.register(Box::new(energy_feed_errors.clone()))?;
        registry.register(Box::new(store_write.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(usage_queue_depth.clone()))?;
        registry.register(Box::new(usage_written.clone()))?;
        registry.register(Box::new(usage_spilled.clone()))?;
        registry.register(Box::new(usage_dropped.clone()))?;
        registry.register(Box::new(limit_rejections.clone()))?;
        let config_reloads =
            IntCounterVec::new(Opts::new("joule_config_reloads_total", "Config reloads (SIGHUP or POST /admin/reload) by result"), &["result"])?;
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(config_reloads.clone()))?;
        let connections_closed = IntCounterVec::new(
            Opts::new("joule_connections_closed_total", "Client connections ended before a handler ran, by reason"),
            &["reason"],
        )?;
        let descriptors_exhausted = IntCounter::new(
            "joule_descriptors_exhausted_total",
            "Requests refused because the gateway had no file descriptor left for the upstream connection",
        )?;
        registry.register(Box::new(descriptors_exhausted.clone()))?;
        let limits_backend_errors =
            IntCounter::new("joule_limits_backend_errors_total", "Calls to the shared limits server (Valkey/Redis) that failed or timed out")?;
        registry.register(Box::new(limits_backend_errors.clone()))?;
        let batch_lines = IntCounterVec::new(Opts::new("joule_batch_lines_total", "Batch lines sent, by outcome"), &["outcome"])?;
        registry.register(Box::new(batch_lines.clone()))?;
        let batches_ended = IntCounterVec::new(Opts::new("joule_batches_ended_total", "Batches that ended, by status"), &["status"])?;
        registry.register(Box::new(batches_ended.clone()))?;
        for o in ["completed", "failed", "retried"] {
            batch_lines.with_label_values(&[o]);
        }
        for st in ["completed", "expired", "cancelled"] {
            batches_ended.with_label_values(&[st]);
        }
        let tls_expiry = IntGaugeVec::new(
            Opts::new("joule_tls_certificate_expiry_seconds", "When each TLS certificate expires (its notAfter), unix seconds"),
            &["name"],
        )?;
        registry.register(Box::new(tls_expiry.clone()))?;
        let tls_reloads =
            IntCounterVec::new(Opts::new("joule_tls_certificate_reloads_total", "Renewed certificate files loaded, by certificate and result"), &["name", "result"])?;
        registry.register(Box::new(tls_reloads.clone()))?;
        for reason in ["head_timeout", "idle_timeout", "malformed_head"] {
            connections_closed.with_label_values(&[reason]);
        }
        registry.register(Box::new(connections_closed.clone()))?;
        let strategy = StrategyMetrics::new(&registry)?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            ttft,
            upstream_failures,
            stream_failures,
            in_flight,
            energy_price,
            energy_price_age,
            energy_price_stale,
            token_price,
            energy_rows,
            energy_feed_errors,
            deployment,
            store_write,
            store_errors,
            usage_queue_depth,
            usage_written,
            usage_spilled,
            usage_dropped,
            limit_rejections,
            config_reloads,
            connections_closed,
            descriptors_exhausted,
            batch_lines,
            batches_ended,
            limits_backend_errors,
            tls_expiry,
            tls_reloads,
            strategy,
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
