//! `POST /v1/messages` (the Anthropic Messages API): read body → convert to the chat form
//! (`translate::anthropic::inbound::request_to_chat`) → inspect → the same pipeline as chat
//! completions ([`super::chat::serve`]), with the client's own body kept for deployments that
//! speak Anthropic and every answer and error given in Anthropic's shape.

use super::body::read_or_refuse;
use super::chat::{serve, AnswerAs, Exchange};
use super::{send_error_as, ClientApi, Downstream, DownstreamError, Gateway, Record, RequestHead, World};
use crate::access::Principal;
use crate::api::chat;
use crate::api::error::ApiError;
use crate::translate::anthropic::inbound::request_to_chat;
use crate::upstream;

/// Serves a Messages request for an authenticated principal.
///
/// # Errors
/// Only downstream I/O failures; every other outcome is a response.
pub async fn handle(
    gw: &Gateway,
    world: &World,
    principal: &Principal,
    head: &RequestHead,
    io: &mut dyn Downstream,
    rec: &mut Record,
) -> Result<(), DownstreamError> {
    rec.principal = Some(principal.clone());
    let api = ClientApi::Anthropic;
    let limits = &world.limits;
    let Some(body) = read_or_refuse(api, io, rec, head.content_length, limits.max_body_bytes, limits.client_body_timeout).await? else {
        return Ok(());
    };
    let mut inbound = match request_to_chat(&body) {
        Ok(i) => i,
        Err(e) => return send_error_as(api, io, rec, &ApiError::invalid(e.to_string(), None)).await,
    };
    let req = match chat::inspect(&inbound.chat) {
        Ok(r) => r,
        Err(e) => return send_error_as(api, io, rec, &e).await,
    };
    // The chat form moves into the exchange; the rest of the conversion stays beside the
    // client's body for deployments that speak Anthropic.
    let chat_body = std::mem::take(&mut inbound.chat);
    let exchange = Exchange { req, body: chat_body, native: Some((body, inbound)), answer_as: AnswerAs::Anthropic, batch: None };
    serve(gw, world, principal, head, exchange, io, rec).await
}

/// Serves `POST /v1/messages/count_tokens`: forwarded as sent (model replaced) to a deployment
/// of the model that speaks Anthropic and answered as it answers; 501 when the model has none
/// (joule has no tokenizer of its own for other models). Not a generation: no usage record,
/// no rate limit.
///
/// # Errors
/// Only downstream I/O failures; every other outcome is a response.
pub async fn count_tokens(world: &World, principal: &Principal, head: &RequestHead, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    let api = ClientApi::Anthropic;
    let limits = &world.limits;
    let Some(body) = read_or_refuse(api, io, rec, head.content_length, limits.max_body_bytes, limits.client_body_timeout).await? else {
        return Ok(());
    };
    let (name, span) = match crate::translate::anthropic::inbound::model_of(&body) {
        Ok(m) => m,
        Err(e) => return send_error_as(api, io, rec, &ApiError::invalid(e.to_string(), Some("model"))).await,
    };
    let base = name.split('@').next().unwrap_or_default();
    let Some((model_index, model)) = world.catalog.model_indexed(base) else {
        return send_error_as(api, io, rec, &ApiError::ModelNotFound { model: base.chars().take(200).collect() }).await;
    };
    if !principal.may_use(&model.id) {
        return send_error_as(api, io, rec, &ApiError::ModelNotAllowed { model: model.id.clone() }).await;
    }
    rec.model = Some(model.id.clone());
    let route = upstream::Route {
        clients: &world.clients,
        catalog: &world.catalog,
        telemetry: &world.telemetry,
        model,
        model_index,
        first_byte_timeout: limits.first_byte_timeout,
        request_timeout: limits.request_timeout,
        max_answer_bytes: limits.max_answer_bytes,
        ttft_timeout: limits.first_byte_timeout,
        request_id: &rec.request_id,
        anthropic_beta: head.anthropic_beta.as_deref(),
        native: None,
    };
    let answer = upstream::count_tokens(&route, &body, &span).await;
    let (status, bytes) = match answer {
        None => {
            let e = ApiError::NotImplemented {
                message: format!("Token counting is available for models served through Anthropic's API; `{}` is not. The usage of each answer reports the tokens counted.", model.id),
            };
            return send_error_as(api, io, rec, &e).await;
        }
        Some(Err(failure)) => {
            let e = ApiError::UpstreamFailed { message: format!("Counting tokens failed at the provider ({}).", failure.label()) };
            return send_error_as(api, io, rec, &e).await;
        }
        Some(Ok(answer)) => answer,
    };
    rec.status = status;
    let headers = vec![("content-type", "application/json".to_string()), ("x-request-id", rec.request_id.clone())];
    io.send_whole(status, headers, bytes).await
}
