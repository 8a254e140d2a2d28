//! `POST /v1/messages` (the Anthropic Messages API): read body → convert to the chat form
//! (`translate::anthropic::inbound::request_to_chat`) → inspect → the same pipeline as chat
//! completions ([`super::chat::serve`]), with the client's own body kept for deployments that
//! speak Anthropic and every answer and error given in Anthropic's shape.

use super::body::read_body;
use super::chat::{serve, AnswerAs, Exchange};
use super::{send_error_as, ClientApi, Downstream, DownstreamError, Gateway, Record, RequestHead, World};
use crate::access::Principal;
use crate::api::chat;
use crate::api::error::ApiError;
use crate::translate::anthropic::inbound::request_to_chat;

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
    let body = match read_body(io, head.content_length, limits.max_body_bytes, limits.client_body_timeout).await {
        Ok(b) => b,
        Err(e) => return send_error_as(api, io, rec, &e).await,
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
    let exchange = Exchange { req, body: chat_body, native: Some((body, inbound)), answer_as: AnswerAs::Anthropic };
    serve(gw, world, principal, head, exchange, io, rec).await
}
