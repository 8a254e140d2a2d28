//! `/v1/batches`: create (checks the input file again, the project's batch limit and budget),
//! list, retrieve and cancel — the owner's batches only.

use serde::Deserialize;
use serde_json::Value;

use super::{objects, owner, page, store_error, BatchService, Page};
use crate::access::Principal;
use crate::api::error::ApiError;
use crate::batch::input::{self, CHAT_URL};
use crate::batch::{parse_window, BatchRecord, BatchStatus, LineCounts, NewLine, Transition, PURPOSE_BATCH};
use crate::proxy::body::read_or_refuse;
use crate::proxy::{send_error, send_json, ClientApi, Downstream, DownstreamError, Gateway, Record, RequestHead, World};
use crate::routing::tags;

/// Most batches one list answers (OpenAI's limit).
pub const MAX_LIST: u32 = 100;
/// Largest create body.
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    metadata: Option<Value>,
    /// OpenAI's output file expiry: accepted, not applied (files are kept until deleted).
    #[allow(dead_code)]
    output_expires_after: Option<Value>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::ResourceNotFound { message: format!("No batch with id `{}`.", id.chars().take(100).collect::<String>()) }
}

fn invalid(message: String, param: &'static str) -> ApiError {
    ApiError::InvalidRequest { message, param: Some(param), code: None }
}

/// OpenAI's metadata rule: at most 16 string pairs, keys ≤ 64 and values ≤ 512 characters.
fn check_metadata(m: &Option<Value>) -> Result<Option<String>, ApiError> {
    match m {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => {
            let ok = o.len() <= 16 && o.iter().all(|(k, v)| k.chars().count() <= 64 && v.as_str().is_some_and(|s| s.chars().count() <= 512));
            if !ok {
                return Err(invalid("`metadata` must hold at most 16 string values, keys up to 64 and values up to 512 characters.".into(), "metadata"));
            }
            Ok(Some(Value::Object(o.clone()).to_string()))
        }
        Some(_) => Err(invalid("`metadata` must be an object.".into(), "metadata")),
    }
}

/// `POST /v1/batches`.
///
/// # Errors
/// Only downstream I/O failures. Refusals: 400 (bad fields, a file that is not a batch input
/// or no longer passes its checks), 404 (unknown file), 429 `batch_limit_exceeded` (the
/// project's queued lines) or `insufficient_quota` (the estimate exceeds what is left of the
/// budget).
pub async fn create(
    gw: &Gateway,
    world: &World,
    svc: &BatchService,
    principal: &Principal,
    head: &RequestHead,
    io: &mut dyn Downstream,
    rec: &mut Record,
) -> Result<(), DownstreamError> {
    let Some(body) = read_or_refuse(ClientApi::OpenAi, io, rec, head.content_length, MAX_BODY, world.limits.client_body_timeout).await? else {
        return Ok(());
    };
    match create_batch(gw, world, svc, principal, &body).await {
        Ok(b) => {
            svc.wake.notify_one();
            let doc = objects::batch(&b, None, svc.settings.discount);
            send_json(io, rec, serde_json::to_vec(&doc).unwrap_or_default()).await
        }
        Err(e) => send_error(io, rec, &e).await,
    }
}

async fn create_batch(gw: &Gateway, world: &World, svc: &BatchService, principal: &Principal, body: &[u8]) -> Result<BatchRecord, ApiError> {
    let req: Create = serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("Invalid batch request: {e}."), None))?;
    if req.endpoint != CHAT_URL {
        return Err(invalid(format!("`endpoint` must be \"{CHAT_URL}\" (the only endpoint joule batches)."), "endpoint"));
    }
    let window_s = parse_window(&req.completion_window).map_err(|m| invalid(m, "completion_window"))?;
    let metadata = check_metadata(&req.metadata)?;
    let who = owner(principal);
    let file = svc.store.file(&who, &req.input_file_id).await.map_err(store_error)?.ok_or_else(|| ApiError::ResourceNotFound {
        message: format!("No file with id `{}`.", req.input_file_id.chars().take(100).collect::<String>()),
    })?;
    if file.purpose != PURPOSE_BATCH {
        return Err(invalid(format!("File `{}` has purpose `{}`; a batch needs a file uploaded with purpose \"batch\".", file.id, file.purpose), "input_file_id"));
    }
    let content = svc.store.file_content(&who, &file.id).await.map_err(store_error)?.ok_or_else(|| not_found(&file.id))?;
    // Checked again: the model may have been removed or the project's allow-list changed.
    let checked = input::check(content.as_bytes(), &svc.settings.input, &|m| super::files::model_check(gw, world, principal, m))
        .map_err(|e| invalid(format!("The input file no longer passes its checks: {e}."), "input_file_id"))?;

    // The batch limit: lines the owner has waiting over all its unfinished batches.
    let active = svc.store.active_batches().await.map_err(store_error)?;
    let queued: i64 = active.iter().filter(|b| b.owner == who).map(|b| b.counts.unfinished()).sum();
    let lines = checked.lines.len() as i64;
    if queued + lines > svc.settings.max_queued_lines {
        return Err(ApiError::RateLimited {
            message: format!(
                "Batch limit reached: this project has {queued} batch lines queued and may have at most {} (this batch adds {lines}).",
                svc.settings.max_queued_lines
            ),
            retry_after: 60,
        });
    }

    // The reference estimate: every line at the best price now; checked against the budget
    // at the batch discount.
    let (input_tokens, output_tokens) = checked.tokens();
    let estimate = tags::parse_model(&checked.model)
        .ok()
        .and_then(|(base, _)| world.catalog.model(base))
        .and_then(|m| gw.pricing.book().best(&world.catalog, m))
        .map_or(0.0, |(_, q)| (input_tokens * q.price.input + output_tokens * q.price.output) / 1e6);
    if let Some(budget) = principal.project.as_ref().and_then(|p| p.budget.as_ref()) {
        let left = budget.remaining(crate::clock::now_ms());
        let cost = estimate * (1.0 - svc.settings.discount);
        if cost > left {
            return Err(ApiError::QuotaExceeded {
                message: format!("The batch's estimated cost (${cost:.6}) exceeds what is left of the project's budget (${left:.6})."),
                retry_after: 60,
            });
        }
    }

    let now = gw.pricing.clock().now_ms();
    let record = BatchRecord {
        id: format!("batch_{}", crate::access::random_hex(12)),
        owner: who,
        project_id: principal.project.as_ref().map(|p| p.id.to_string()),
        key_id: principal.key_id.to_string(),
        model: checked.model.clone(),
        input_file_id: file.id.clone(),
        endpoint: CHAT_URL.into(),
        window_s,
        metadata,
        status: BatchStatus::Validating,
        created_ms: now,
        expires_ms: now + window_s * 1000,
        in_progress_ms: None,
        finalizing_ms: None,
        completed_ms: None,
        failed_ms: None,
        expired_ms: None,
        cancelling_ms: None,
        cancelled_ms: None,
        output_file_id: None,
        error_file_id: None,
        errors: None,
        planned_start_ms: None,
        estimate_at_submission: estimate,
        est_input_tokens: input_tokens,
        est_output_tokens: output_tokens,
        counts: LineCounts { total: lines, ..LineCounts::default() },
        cost: 0.0,
        energy_cost: 0.0,
        sites: Vec::new(),
    };
    let new_lines: Vec<NewLine> =
        checked.lines.into_iter().map(|l| NewLine { line: l.line as i64, custom_id: l.custom_id, body: l.body }).collect();
    svc.store.insert_batch(&record, &new_lines).await.map_err(store_error)?;
    Ok(record)
}

/// `GET /v1/batches` (`limit` 1..=100, default 20, `after`).
///
/// # Errors
/// 400 for bad parameters; 503 when the store is unreachable.
pub async fn list(svc: &BatchService, principal: &Principal, head: &RequestHead) -> Result<Vec<u8>, ApiError> {
    let Page { limit, after, order, purpose } = page(head, 20, MAX_LIST)?;
    if order.is_some() || purpose.is_some() {
        return Err(ApiError::invalid("Batches are listed newest first; `order` and `purpose` do not apply.", None));
    }
    let mut batches = svc.store.batches(&owner(principal), after.as_deref(), limit + 1).await.map_err(store_error)?;
    let more = batches.len() > limit as usize;
    batches.truncate(limit as usize);
    let plans = svc.plans.load();
    let data = batches.iter().map(|b| objects::batch(b, plans.get(&b.id), svc.settings.discount)).collect();
    Ok(serde_json::to_vec(&objects::list(data, more)).unwrap_or_default())
}

/// `GET /v1/batches/{id}`.
///
/// # Errors
/// 404 for an unknown batch or another owner's.
pub async fn get(svc: &BatchService, principal: &Principal, id: &str) -> Result<Vec<u8>, ApiError> {
    let b = svc.store.batch(Some(&owner(principal)), id).await.map_err(store_error)?.ok_or_else(|| not_found(id))?;
    Ok(serde_json::to_vec(&objects::batch(&b, svc.plans.load().get(&b.id), svc.settings.discount)).unwrap_or_default())
}

/// `POST /v1/batches/{id}/cancel`: no new line is sent; lines in flight finish; the runner
/// then writes the files and marks the batch `cancelled`.
///
/// # Errors
/// 404 for an unknown batch or another owner's; 409 when it already ended.
pub async fn cancel(gw: &Gateway, svc: &BatchService, principal: &Principal, id: &str) -> Result<Vec<u8>, ApiError> {
    let who = owner(principal);
    let b = svc.store.batch(Some(&who), id).await.map_err(store_error)?.ok_or_else(|| not_found(id))?;
    let from = [BatchStatus::Validating, BatchStatus::InProgress];
    let now = gw.pricing.clock().now_ms();
    let moved = svc.store.transition(&b.id, &from, BatchStatus::Cancelling, now, &Transition::default()).await.map_err(store_error)?;
    let b = svc.store.batch(Some(&who), id).await.map_err(store_error)?.ok_or_else(|| not_found(id))?;
    if !moved && b.status != BatchStatus::Cancelling && b.status != BatchStatus::Cancelled {
        return Err(ApiError::Conflict { message: format!("Batch `{}` is {} and can no longer be cancelled.", b.id, b.status.as_str()) });
    }
    svc.wake.notify_one();
    Ok(serde_json::to_vec(&objects::batch(&b, None, svc.settings.discount)).unwrap_or_default())
}
