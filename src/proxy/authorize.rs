//! May this principal send this request now: the project's model allow-list, then the key's
//! and project's rate limits and the project's budget. Runs before ranking, so a refused
//! request costs no strategy call and leaves no decision-log entry.

use super::Gateway;
use crate::access::limits::{self, Refusal};
use crate::access::Principal;
use crate::api::error::ApiError;
use crate::catalog::Model;
use crate::clock::{now_ms, now_ns};

/// Admits the request or says why not.
///
/// # Errors
/// 403 `model_not_allowed`; 429 `rate_limit_exceeded` (requests or tokens per minute, with
/// `retry-after`) or `insufficient_quota` (budget spent, `retry-after` = end of the period).
/// Every refusal by a limit is counted in `joule_limit_rejections_total`.
pub fn authorize(gw: &Gateway, principal: &Principal, model: &Model) -> Result<(), ApiError> {
    if !principal.may_use(&model.id) {
        return Err(ApiError::ModelNotAllowed { model: model.id.clone() });
    }
    limits::admit(principal, now_ns(), now_ms()).map_err(|r| {
        let (scope, kind) = r.labels();
        gw.metrics.limit_rejections.with_label_values(&[scope, kind]).inc();
        let secs = |d: std::time::Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        match r {
            Refusal::Rate { retry_after, .. } => ApiError::RateLimited {
                message: format!("Rate limit reached: {kind} per minute of this {scope}. Retry after {} s.", secs(retry_after)),
                retry_after: secs(retry_after).max(1),
            },
            Refusal::Budget { retry_after } => ApiError::QuotaExceeded {
                message: "The project's budget for this period is spent.".into(),
                retry_after: secs(retry_after).max(1),
            },
        }
    })
}

/// Admits a batch line: the project's model allow-list and budget; interactive rate limits do
/// not apply to batch work (its own limit was checked when the batch was created).
///
/// # Errors
/// 403 `model_not_allowed`; 429 `insufficient_quota` when the budget is spent.
pub fn authorize_batch(principal: &Principal, model: &Model) -> Result<(), ApiError> {
    if !principal.may_use(&model.id) {
        return Err(ApiError::ModelNotAllowed { model: model.id.clone() });
    }
    match principal.project.as_ref().and_then(|p| p.budget.as_ref()).map(|b| b.check(now_ms())) {
        Some(Err(retry)) => Err(ApiError::QuotaExceeded {
            message: "The project's budget for this period is spent.".into(),
            retry_after: retry.as_secs().max(1),
        }),
        _ => Ok(()),
    }
}
