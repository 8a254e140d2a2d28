//! The end of every request, whatever happened to it: the key's and project's limits and
//! budget are settled and the usage record queued (authenticated API requests), the request
//! metrics counted, and the access log line written. Pingora-free: the server adapter calls
//! [`finish`] once the response is over.

use super::{Gateway, Surface};
use crate::usage::{self, Record};

/// Accounts a finished request. `method` and `path` are for the access log (the path
/// already clipped to a loggable length).
pub fn finish(gw: &Gateway, surface: Surface, rec: &Record, method: &str, path: &str) {
    let elapsed = rec.started.elapsed();
    if surface == Surface::Api {
        usage::account(&gw.usage, rec);
        let m = &gw.metrics;
        let model = rec.model.as_deref().unwrap_or("none");
        let deployment = rec.deployment.as_deref().unwrap_or("none");
        let status = rec.status.to_string();
        m.requests.with_label_values(&[model, deployment, &status]).inc();
        m.duration.with_label_values(&[model]).observe(elapsed.as_secs_f64());
        if let Some(t) = rec.ttft {
            m.ttft.with_label_values(&[model]).observe(t.as_secs_f64());
        }
        if rec.error == Some("descriptors_exhausted") {
            m.descriptors_exhausted.inc();
        }
        match (rec.error, rec.status < 400) {
            (Some(crate::api::chat::USAGE_INVALID), _) => m.upstream_failures.with_label_values(&[deployment, "invalid_usage"]).inc(),
            (Some(err), true) => m.stream_failures.with_label_values(&[deployment, err]).inc(),
            _ => {}
        }
    }
    tracing::info!(
        target: "joule::access",
        request_id = %rec.request_id,
        method = %method,
        path = %path,
        status = rec.status,
        key = rec.key_name.as_deref().unwrap_or("-"),
        model = rec.model.as_deref().unwrap_or("-"),
        deployment = rec.deployment.as_deref().unwrap_or("-"),
        strategy = rec.strategy.as_deref().unwrap_or("-"),
        stream = rec.stream,
        duration_ms = elapsed.as_secs_f64() * 1e3,
        ttft_ms = rec.ttft.map(|t| t.as_secs_f64() * 1e3),
        prompt_tokens = rec.prompt_tokens,
        completion_tokens = rec.completion_tokens,
        cost_usd = rec.cost.map(|c| c.total),
        error = rec.error.unwrap_or("-"),
        "request"
    );
}
