//! Upstream forwarding: send a chat request to the ranked deployments in order until one
//! answers. A deployment is skipped on a connect error, no response headers within the
//! first-byte timeout, a malformed response, or 429/5xx — all before any byte reached the
//! client; once a response is returned here, no other deployment is tried.

pub mod client;

use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};

use crate::api::chat::ChatRequest;
use crate::api::error::ApiError;
use crate::catalog::{Catalog, Model};
use crate::routing::RouteDecision;
pub use client::Clients;

/// Why one attempt at a deployment failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptFailure {
    /// TCP/TLS/DNS failure, or the connection closed before a response.
    Connect,
    /// No response headers within the first-byte timeout.
    Timeout,
    /// The upstream answered 429 or 5xx.
    Status { code: u16, retry_after: Option<u64> },
}

impl AttemptFailure {
    /// Closed-set metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptFailure::Connect => "connect",
            AttemptFailure::Timeout => "timeout",
            AttemptFailure::Status { code: 429, .. } => "status_429",
            AttemptFailure::Status { .. } => "status_5xx",
        }
    }

    fn describe(&self) -> String {
        match self {
            AttemptFailure::Connect => "connection failed".into(),
            AttemptFailure::Timeout => "no response in time".into(),
            AttemptFailure::Status { code, .. } => format!("HTTP {code}"),
        }
    }
}

/// A failed attempt: the deployment's index in the model and what went wrong.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub deployment: usize,
    pub failure: AttemptFailure,
}

/// The upstream that answered.
#[derive(Debug)]
pub struct Answer {
    /// Index into the model's deployments.
    pub deployment: usize,
    /// Position in the ranking (0 = first choice).
    pub rank: usize,
    pub response: reqwest::Response,
}

fn retry_after(resp: &reqwest::Response) -> Option<u64> {
    resp.headers().get("retry-after")?.to_str().ok()?.trim().parse().ok()
}

/// Tries the ranked deployments in order; calls `on_failure` for every failed attempt.
///
/// # Errors
/// When every deployment failed: 504 if all timed out, 503 if all refused with 429/503
/// (with the smallest `retry-after` seen), 502 otherwise. Messages name deployments, never
/// URLs or credentials.
pub async fn send(
    clients: &Clients,
    catalog: &Catalog,
    model: &Model,
    decision: &RouteDecision,
    request: &ChatRequest,
    body: &[u8],
    first_byte_timeout: Duration,
    request_id: &str,
    on_failure: &mut (dyn FnMut(&Attempt) + Send),
) -> Result<Answer, ApiError> {
    let mut attempts: Vec<Attempt> = Vec::new();
    for (rank, (cand, _)) in decision.ranked.iter().enumerate() {
        let Some(dep) = model.deployments.get(cand.deployment) else { continue };
        let (base_url, key) = catalog.endpoint_of(dep);
        let mut rb = clients
            .for_deployment(dep)
            .post(format!("{base_url}/chat/completions"))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, if request.stream { "text/event-stream" } else { "application/json" })
            .header("x-request-id", request_id)
            .body(request.upstream_body(body, &dep.upstream_model));
        if let Some(k) = key {
            rb = rb.header(AUTHORIZATION, format!("Bearer {}", k.expose()));
        }
        let failure = match tokio::time::timeout(first_byte_timeout, rb.send()).await {
            Err(_) => AttemptFailure::Timeout,
            Ok(Err(e)) if e.is_timeout() => AttemptFailure::Timeout,
            Ok(Err(_)) => AttemptFailure::Connect,
            Ok(Ok(resp)) => {
                let code = resp.status().as_u16();
                if code == 429 || code >= 500 {
                    AttemptFailure::Status { code, retry_after: retry_after(&resp) }
                } else {
                    return Ok(Answer { deployment: cand.deployment, rank, response: resp });
                }
            }
        };
        let attempt = Attempt { deployment: cand.deployment, failure };
        tracing::warn!(request_id, deployment = %dep.id, failure = attempt.failure.describe(), "upstream attempt failed");
        on_failure(&attempt);
        attempts.push(attempt);
    }
    Err(all_failed(model, &attempts))
}

fn all_failed(model: &Model, attempts: &[Attempt]) -> ApiError {
    let detail: Vec<String> = attempts
        .iter()
        .map(|a| {
            let id = model.deployments.get(a.deployment).map_or("?", |d| d.id.as_str());
            format!("{id}: {}", a.failure.describe())
        })
        .collect();
    let message = if attempts.is_empty() {
        format!("No deployment of `{}` is available.", model.id)
    } else {
        format!("All deployments of `{}` failed ({}).", model.id, detail.join("; "))
    };
    let all = |f: &dyn Fn(&AttemptFailure) -> bool| !attempts.is_empty() && attempts.iter().all(|a| f(&a.failure));
    if all(&|f| matches!(f, AttemptFailure::Timeout)) {
        ApiError::UpstreamTimeout { message }
    } else if attempts.is_empty() || all(&|f| matches!(f, AttemptFailure::Status { code: 429 | 503, .. })) {
        let retry_after = attempts
            .iter()
            .filter_map(|a| match a.failure {
                AttemptFailure::Status { retry_after, .. } => retry_after,
                _ => None,
            })
            .min();
        ApiError::UpstreamUnavailable { message, retry_after }
    } else {
        ApiError::UpstreamFailed { message }
    }
}
