//! OpenAI's Responses API: `POST /v1/responses` (read body → the kept conversation of
//! `previous_response_id`, if any → convert to the chat form (`translate::responses`) →
//! inspect → the chat pipeline ([`super::chat::serve`]) with the answer given as a response
//! object or the Responses event stream), and `GET`/`DELETE /v1/responses/{id}` for kept
//! responses.
//!
//! A response is kept when the request says `store` (default true, as OpenAI's) and the
//! gateway has a store with `responses_retention_days` > 0 (default 30): written before its
//! last byte or event goes out, so a follow-up sent the moment the client has it finds it. It
//! belongs to the key's project (every key of the project may read, continue or delete it), or
//! to the key itself for a key outside any project; anyone else gets 404.

use std::time::Duration;

use super::body::read_or_refuse;
use super::chat::{serve, AnswerAs, Exchange, ResponsesAnswer};
use super::{send_error_as, send_json, ClientApi, Downstream, DownstreamError, Gateway, Record, RequestHead, World};
use crate::access::Principal;
use crate::api::chat;
use crate::api::error::ApiError;
use crate::store::{KeptResponse, Store};
use crate::translate::responses::{referenced_ids, request_to_chat, Finished, Meta, References};
use crate::translate::TranslateError;

/// Longest wait for the store when keeping a response; past it the response is answered unkept.
const KEEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a finished response is kept.
pub struct Keeper {
    store: Store,
    id: String,
    owner: String,
    retention: Duration,
}

impl Keeper {
    /// Writes the response; a store that fails or is slow is logged, never the client's
    /// problem (the response then cannot be continued).
    pub async fn keep(&self, f: Finished) {
        let now = crate::clock::now_ms();
        let r = KeptResponse {
            id: self.id.clone(),
            owner: self.owner.clone(),
            created_ms: now,
            expires_ms: now.saturating_add(i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)),
            object: String::from_utf8_lossy(&f.object).into_owned(),
            conversation: String::from_utf8_lossy(&f.conversation).into_owned(),
        };
        match tokio::time::timeout(KEEP_TIMEOUT, self.store.insert_response(r)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(response = %self.id, error = %e, "response not kept"),
            Err(_) => tracing::warn!(response = %self.id, "response not kept: the store did not answer in time"),
        }
    }
}

/// Who may read a kept response of `p`.
fn owner(p: &Principal) -> String {
    match &p.project {
        Some(project) => format!("project:{}", project.id),
        None => format!("key:{}", p.key_id),
    }
}

fn invalid(e: &TranslateError) -> ApiError {
    let code = match e {
        TranslateError::Unsupported { .. } => Some("unsupported_parameter"),
        _ => Some("invalid_value"),
    };
    ApiError::InvalidRequest { message: e.to_string(), param: None, code }
}

fn not_found(id: &str) -> ApiError {
    let id: String = id.chars().take(100).collect();
    ApiError::ResourceNotFound { message: format!("No response with id '{id}' found.") }
}

/// `previous_response_id` of a body, read without building the rest.
fn previous_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Prev {
        previous_response_id: Option<String>,
    }
    serde_json::from_slice::<Prev>(body).ok().and_then(|p| p.previous_response_id)
}

/// Serves `POST /v1/responses` for an authenticated principal.
///
/// # Errors
/// Only downstream I/O failures; every other outcome is a response.
pub async fn create(gw: &Gateway, world: &World, principal: &Principal, head: &RequestHead, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    rec.principal = Some(principal.clone());
    let api = ClientApi::Responses;
    let limits = &world.limits;
    let Some(body) = read_or_refuse(api, io, rec, head.content_length, limits.max_body_bytes, limits.client_body_timeout).await? else {
        return Ok(());
    };
    let keeping = match (&gw.store, gw.response_retention) {
        (Some(store), Some(retention)) => Some((store, retention)),
        _ => None,
    };
    let history = match (previous_id(&body), keeping) {
        (None, _) => None,
        (Some(_), None) => {
            let e = ApiError::invalid("This gateway keeps no responses (no store, or store.responses_retention_days = 0): previous_response_id cannot be used.", Some("previous_response_id"));
            return send_error_as(api, io, rec, &e).await;
        }
        (Some(id), Some((store, _))) => match store.response(&id, &owner(principal), crate::clock::now_ms()).await {
            Ok(Some((_, conversation))) => Some(conversation),
            Ok(None) => return send_error_as(api, io, rec, &not_found(&id)).await,
            Err(e) => {
                tracing::warn!(error = %e, "kept response unreadable");
                return send_error_as(api, io, rec, &ApiError::StoreUnavailable).await;
            }
        },
    };
    let refs = match (referenced_ids(&body), keeping) {
        (ids, _) if ids.is_empty() => References::new(),
        (_, None) => References::new(), // refused by the conversion, naming the reference
        (ids, Some((store, _))) => match references(store, &owner(principal), &ids).await {
            Ok(r) => r,
            Err(e) => return send_error_as(api, io, rec, &e).await,
        },
    };
    let request = match request_to_chat(&body, history.as_deref().map(str::as_bytes), &refs) {
        Ok(r) => r,
        Err(e) => return send_error_as(api, io, rec, &invalid(&e)).await,
    };
    drop(body);
    let req = match chat::inspect(&request.chat) {
        Ok(r) => r,
        Err(e) => return send_error_as(api, io, rec, &e).await,
    };
    let id = format!("resp_{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
    let keeper = keeping.filter(|_| request.store).map(|(store, retention)| Keeper { store: store.clone(), id: id.clone(), owner: owner(principal), retention });
    let mut echo = request.echo;
    echo.store = keeper.is_some();
    let model = req.model.split('@').next().unwrap_or_default().to_string();
    let created_at = u64::try_from(crate::clock::now_ms() / 1000).unwrap_or(0);
    let meta = Meta { id, created_at, model, echo };
    let answer_as = AnswerAs::Responses(Box::new(ResponsesAnswer { meta, conversation: request.conversation, keeper }));
    let exchange = Exchange { req, body: request.chat, native: None, answer_as, batch: None };
    serve(gw, world, principal, head, exchange, io, rec).await
}

/// The kept output items `ids` name (`msg_<x>` and `fc_<x>_<n>` are items of response
/// `resp_<x>`), for `owner`; ids of no kept response of the owner are left out (the conversion
/// then refuses them).
async fn references(store: &Store, owner: &str, ids: &[String]) -> Result<References, ApiError> {
    let mut refs = References::new();
    let now = crate::clock::now_ms();
    for id in ids.iter().take(256) {
        let of = id.strip_prefix("msg_").or_else(|| id.strip_prefix("fc_").and_then(|r| r.rsplit_once('_').map(|(x, _)| x)));
        let Some(response) = of.map(|x| format!("resp_{x}")) else { continue };
        let object = match store.response(&response, owner, now).await {
            Ok(Some((object, _))) => object,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "kept response unreadable");
                return Err(ApiError::StoreUnavailable);
            }
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&object) else { continue };
        let items = v.get("output").and_then(serde_json::Value::as_array).into_iter().flatten();
        if let Some(item) = items.into_iter().find(|i| i.get("id").and_then(serde_json::Value::as_str) == Some(id.as_str())) {
            refs.insert(id.clone(), item.to_string());
        }
    }
    Ok(refs)
}

/// Serves `GET` (the response object) and `DELETE` of `/v1/responses/{id}`.
///
/// # Errors
/// Only downstream I/O failures; every other outcome is a response.
pub async fn kept(gw: &Gateway, principal: &Principal, id: &str, delete: bool, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    // Not a model request: no usage record (as for `/v1/models`).
    let api = ClientApi::Responses;
    let Some(store) = gw.store.as_ref().filter(|_| gw.response_retention.is_some()) else {
        return send_error_as(api, io, rec, &not_found(id)).await;
    };
    let (owner, now) = (owner(principal), crate::clock::now_ms());
    let result = if delete {
        store.delete_response(id, &owner, now).await.map(|gone| {
            gone.then(|| serde_json::json!({"id": id, "object": "response", "deleted": true}).to_string().into_bytes())
        })
    } else {
        store.response(id, &owner, now).await.map(|r| r.map(|(object, _)| object.into_bytes()))
    };
    match result {
        Ok(Some(body)) => send_json(io, rec, body).await,
        Ok(None) => send_error_as(api, io, rec, &not_found(id)).await,
        Err(e) => {
            tracing::warn!(error = %e, "kept responses unreadable");
            send_error_as(api, io, rec, &ApiError::StoreUnavailable).await
        }
    }
}
