//! What an upstream exchange tells the deployment's telemetry (breaker, TTFT, latency, token
//! rate) and the upstream metrics — recorded here and nowhere else: every failed attempt
//! during failover ([`attempt_failed`]) and the end of the exchange that answered
//! ([`exchange_finished`]).

use std::sync::Arc;
use std::time::Instant;

use super::DownstreamError;
use crate::catalog::Model;
use crate::metrics::Metrics;
use crate::telemetry::{DeploymentStats, Telemetry};
use crate::upstream::{Attempt, AttemptFailure};
use crate::usage::Record;

/// Records one failed attempt: the failure metric, the breaker, and for a stream that
/// produced no token in time, a TTFT of at least the time waited.
pub fn attempt_failed(metrics: &Metrics, telemetry: &Telemetry, model: &Model, model_index: usize, a: &Attempt) {
    let Some(dep) = model.deployments.get(a.deployment) else { return };
    metrics.upstream_failures.with_label_values(&[dep.id.as_str(), a.failure.label()]).inc();
    let settings = &telemetry.settings;
    if !settings.enabled {
        return;
    }
    let Some(st) = telemetry.get(model_index, a.deployment) else { return };
    if a.failure == AttemptFailure::TtftTimeout {
        // Penalise the slow deployment: it took at least this long.
        st.record_ttft(a.elapsed, settings);
    }
    if st.record_failure(settings) {
        tracing::warn!(deployment = %dep.id, "breaker opened");
    }
}

/// Records how the answering deployment's exchange ended: a success (with its TTFT, latency
/// and decode rate), a mid-stream failure, or nothing when the client went away (that says
/// nothing about the deployment).
pub fn exchange_finished(
    stats: Option<&Arc<DeploymentStats>>,
    telemetry: &Telemetry,
    sent_at: Instant,
    relayed: &Result<(), DownstreamError>,
    rec: &Record,
) {
    let Some(st) = stats else { return };
    let settings = &telemetry.settings;
    match (relayed, rec.error) {
        (Ok(()), None) => {
            st.record_success(settings);
            if let Some(t) = rec.ttft {
                st.record_ttft(t, settings);
            }
            let decode = match (rec.first_token_at, rec.completion_tokens) {
                (Some(first), Some(n)) if n > 1 => Some((n - 1, first.elapsed())),
                _ => None,
            };
            st.record_completion(sent_at.elapsed(), decode, settings);
        }
        (Ok(()), Some(_)) => {
            st.record_failure(settings);
        }
        (Err(_), _) => {}
    }
}
