//! The OpenAI Batch API on the public listener: `/v1/files` ([`files`]) and `/v1/batches`
//! ([`batches`]), their JSON objects ([`objects`]), and the [`runner`] that carries out the
//! scheduler's plans by sending batch lines through the chat pipeline.
//!
//! Files and batches belong to an owner — the key's project, or the key itself when it has
//! none (as kept responses do) — and another owner's ids answer 404, exactly as unknown ids.
//! The API needs the store (files, batches and line state live there); without one every
//! endpoint answers 501 saying so.

pub mod batches;
pub mod files;
pub mod objects;
pub mod runner;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Method;

use super::{send_error, Downstream, DownstreamError, Gateway, Record, RequestHead, World};
use crate::access::Principal;
use crate::api::error::ApiError;
use crate::batch::{BatchSettings, BatchStore, BatchStoreError};

/// What the latest plan says of a batch (this instance's view; not persisted).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanView {
    /// Forecast cost of the work not yet finished, $.
    pub remaining_cost: f64,
    /// The plan is behind its margin and runs now regardless of price.
    pub behind: bool,
}

/// The batch API's state: the store, the settings, the scheduler's wake-up and its latest
/// plans.
pub struct BatchService {
    pub store: Arc<dyn BatchStore>,
    pub settings: BatchSettings,
    /// Wakes the runner early (a batch was created or cancelled).
    pub wake: tokio::sync::Notify,
    /// This instance's id (lease owner).
    pub instance: String,
    /// The latest plan per batch id.
    pub plans: ArcSwap<HashMap<String, PlanView>>,
}

impl BatchService {
    /// A service over `store`.
    pub fn new(store: Arc<dyn BatchStore>, settings: BatchSettings, instance: String) -> Arc<Self> {
        Arc::new(BatchService { store, settings, wake: tokio::sync::Notify::new(), instance, plans: ArcSwap::default() })
    }
}

/// Who owns what a principal creates: its project, or the key itself without one.
pub fn owner(p: &Principal) -> String {
    match &p.project {
        Some(project) => format!("project:{}", project.id),
        None => format!("key:{}", p.key_id),
    }
}

fn store_error(e: BatchStoreError) -> ApiError {
    match e {
        BatchStoreError::Unavailable(_) => ApiError::StoreUnavailable,
        BatchStoreError::Backend(m) => {
            tracing::error!(error = %m, "batch store");
            ApiError::Internal
        }
    }
}

/// Whether a path belongs to the batch API.
pub fn is_batch_path(path: &str) -> bool {
    path == "/v1/files" || path.starts_with("/v1/files/") || path == "/v1/batches" || path.starts_with("/v1/batches/")
}

/// Serves one request of the batch API (the caller checked [`is_batch_path`] and
/// authenticated it).
///
/// # Errors
/// Only downstream I/O failures.
pub async fn handle(
    gw: &Gateway,
    world: &World,
    principal: &Principal,
    head: &RequestHead,
    io: &mut dyn Downstream,
    rec: &mut Record,
) -> Result<(), DownstreamError> {
    let Some(svc) = gw.batches.as_ref() else {
        if head.content_length.unwrap_or(0) > 0 {
            io.close_after();
        }
        let e = ApiError::NotImplemented {
            message: "The batch API needs a store: set [store] backend = \"sqlite\" or \"postgres\".".into(),
        };
        return send_error(io, rec, &e).await;
    };
    let path = head.path.trim_end_matches('/');
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let not_allowed = |allow: &str| ApiError::MethodNotAllowed { method: head.method.to_string(), path: head.path.chars().take(200).collect(), allow: allow.into() };
    let m = &head.method;
    match segments.as_slice() {
        ["files"] if m == Method::POST => files::upload(gw, world, svc, principal, head, io, rec).await,
        ["files"] if m == Method::GET => reply(io, rec, files::list(svc, principal, head).await).await,
        ["files", id] if m == Method::GET => reply(io, rec, files::get(svc, principal, id).await).await,
        ["files", id] if m == Method::DELETE => reply(io, rec, files::delete(svc, principal, id).await).await,
        ["files", id, "content"] if m == Method::GET => files::content(svc, principal, id, io, rec).await,
        ["batches"] if m == Method::POST => batches::create(gw, world, svc, principal, head, io, rec).await,
        ["batches"] if m == Method::GET => reply(io, rec, batches::list(svc, principal, head).await).await,
        ["batches", id] if m == Method::GET => reply(io, rec, batches::get(svc, principal, id).await).await,
        ["batches", id, "cancel"] if m == Method::POST => reply(io, rec, batches::cancel(gw, svc, principal, id).await).await,
        ["files"] => refuse(io, rec, head, not_allowed("GET, POST")).await,
        ["files", _] => refuse(io, rec, head, not_allowed("GET, DELETE")).await,
        ["files", _, "content"] | ["batches", _] => refuse(io, rec, head, not_allowed("GET")).await,
        ["batches"] => refuse(io, rec, head, not_allowed("GET, POST")).await,
        ["batches", _, "cancel"] => refuse(io, rec, head, not_allowed("POST")).await,
        _ => refuse(io, rec, head, ApiError::NotFound { path: head.path.chars().take(200).collect() }).await,
    }
}

async fn refuse(io: &mut dyn Downstream, rec: &mut Record, head: &RequestHead, e: ApiError) -> Result<(), DownstreamError> {
    if head.content_length.unwrap_or(0) > 0 {
        io.close_after();
    }
    send_error(io, rec, &e).await
}

async fn reply(io: &mut dyn Downstream, rec: &mut Record, r: Result<Vec<u8>, ApiError>) -> Result<(), DownstreamError> {
    match r {
        Ok(body) => super::send_json(io, rec, body).await,
        Err(e) => send_error(io, rec, &e).await,
    }
}

/// A list request's query string, checked: the parameters the list endpoints know.
struct Page {
    /// 1..=`max`; `default` when absent.
    limit: u32,
    /// The last id of the previous page.
    after: Option<String>,
    /// `asc` or `desc`, as sent (only files may be listed in either order).
    order: Option<String>,
    /// A file purpose to filter by, as sent (files only).
    purpose: Option<String>,
}

/// Reads a query string's pagination: `limit` (1..=`max`, default `default`), `after`,
/// `order` and `purpose`; each endpoint refuses what does not apply to it.
///
/// # Errors
/// 400 for an unknown parameter or a `limit` out of range.
fn page(head: &RequestHead, default: u32, max: u32) -> Result<Page, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Q {
        limit: Option<String>,
        after: Option<String>,
        order: Option<String>,
        purpose: Option<String>,
    }
    let q: Q = serde_urlencoded::from_str(head.query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid(format!("Bad query string: {e}. Known parameters: limit, after, order, purpose."), None))?;
    let limit = match q.limit {
        None => default,
        Some(l) => l.parse::<u32>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
            ApiError::InvalidRequest { message: format!("`limit` must be a whole number from 1 to {max}."), param: Some("limit"), code: None }
        })?,
    };
    Ok(Page { limit, after: q.after, order: q.order, purpose: q.purpose })
}
