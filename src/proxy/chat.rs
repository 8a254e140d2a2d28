//! `POST /v1/chat/completions` as one ordered pipeline, each step a function in its own
//! place: read body ([`super::body`]) → inspect ([`crate::api::chat::inspect`]) → resolve
//! model ([`super::route::resolve`]) → authorize ([`super::authorize`]) → rank
//! ([`super::route::rank`]) → send with failover ([`crate::upstream::send`]) → relay
//! ([`super::relay`]). Telemetry is recorded by [`super::observe`]; the request's
//! accounting (limits, usage record, metrics, access log) by [`super::finish`] when the
//! exchange is over.

use super::authorize::{authorize, authorize_batch};
use super::body::read_or_refuse;
use super::relay::relay;
use super::route::{rank, resolve};
use super::{observe, send_error, send_error_as, ClientApi, Downstream, DownstreamError, Gateway, Record, RequestHead, World};
use crate::access::Principal;
use crate::api::chat::{self, ChatRequest};
use crate::routing::wasm::explain::explain_json;
use crate::translate::anthropic::inbound::Inbound;
use crate::upstream;

/// Serves a chat completion for an authenticated principal.
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
    let limits = &world.limits;
    // On an error the connection is already marked to close after this answer.
    let Some(body) = read_or_refuse(ClientApi::OpenAi, io, rec, head.content_length, limits.max_body_bytes, limits.client_body_timeout).await? else {
        return Ok(());
    };
    let req = match chat::inspect(&body) {
        Ok(r) => r,
        Err(e) => return send_error(io, rec, &e).await,
    };
    let exchange = Exchange { req, body, native: None, answer_as: AnswerAs::OpenAi, batch: None };
    serve(gw, world, principal, head, exchange, io, rec).await
}

/// A request in the chat form, ready to route. Owned, so that the bodies are freed once sent
/// (a long stream does not hold its request).
pub(super) struct Exchange {
    /// What `chat::inspect` read of `body`.
    pub req: ChatRequest,
    /// The chat-completions body.
    pub body: Vec<u8>,
    /// The client's own body and its conversion, when it spoke Anthropic (deployments that
    /// speak Anthropic get it as sent).
    pub native: Option<(Vec<u8>, Inbound)>,
    /// The API the answer and errors are given in.
    pub answer_as: AnswerAs,
    /// Set for a batch line: where it may run and at what discount.
    pub batch: Option<BatchRun>,
}

/// How a batch line is served: only at the sites its plan chose (in the strategy's order
/// among them), without the interactive rate limits, at the batch discount.
#[derive(Debug, Clone)]
pub struct BatchRun {
    /// Deployment indexes of the model.
    pub sites: Vec<usize>,
    /// Share taken off the price, 0..1.
    pub discount: f64,
}

/// The API an answer is given in, and what that needs.
pub enum AnswerAs {
    OpenAi,
    Anthropic,
    /// The Responses API: the response's identity and what it echoes, the conversation it
    /// continues, and whether to keep it.
    Responses(Box<ResponsesAnswer>),
}

/// What a Responses API answer needs besides the chat answer.
pub struct ResponsesAnswer {
    pub meta: crate::translate::responses::Meta,
    pub conversation: Vec<u8>,
    /// Where the finished response is kept, when it is (the request's `store`, and keeping
    /// configured): before its last event or byte goes out, so a follow-up can find it.
    pub keeper: Option<super::responses::Keeper>,
}

impl AnswerAs {
    /// The API errors are given in.
    pub fn api(&self) -> ClientApi {
        match self {
            AnswerAs::OpenAi => ClientApi::OpenAi,
            AnswerAs::Anthropic => ClientApi::Anthropic,
            AnswerAs::Responses(_) => ClientApi::Responses,
        }
    }
}

/// Resolves, authorizes, ranks, sends and relays one inspected request: the pipeline after
/// the body is read, shared by every client API.
///
/// # Errors
/// Only downstream I/O failures; every other outcome is a response.
pub(super) async fn serve(
    gw: &Gateway,
    world: &World,
    principal: &Principal,
    head: &RequestHead,
    exchange: Exchange,
    io: &mut dyn Downstream,
    rec: &mut Record,
) -> Result<(), DownstreamError> {
    let Exchange { req, body, native, answer_as, batch } = exchange;
    let client = answer_as.api();
    let req = &req;
    let limits = &world.limits;
    rec.stream = req.stream;
    let target = match resolve(gw, world, principal.default_strategy(&world.default_strategy), req) {
        Ok(t) => t,
        Err(e) => return send_error_as(client, io, rec, &e).await,
    };
    let model = target.model;
    rec.model = Some(model.id.clone());
    rec.strategy = Some(target.strategies.to_string());
    let admitted = match &batch {
        None => authorize(gw, principal, model),
        Some(_) => authorize_batch(principal, model),
    };
    if let Err(e) = admitted {
        return send_error_as(client, io, rec, &e).await;
    }
    // One load of the price book: the price charged is the one the decision saw.
    let book = gw.pricing.book();
    let mut decision = rank(gw, world, &book, &target);
    if let Some(b) = &batch {
        decision.ranked.retain(|(c, _)| b.sites.contains(&c.deployment));
        for (c, _) in &mut decision.ranked {
            c.quote = c.quote.discounted(b.discount);
        }
    }

    let mut on_failure = |a: &upstream::Attempt| observe::attempt_failed(&gw.metrics, &world.telemetry, model, target.index, a);
    let route = upstream::Route {
        clients: &world.clients,
        catalog: &world.catalog,
        telemetry: &world.telemetry,
        model,
        model_index: target.index,
        first_byte_timeout: limits.first_byte_timeout,
        request_timeout: limits.request_timeout,
        max_answer_bytes: limits.max_answer_bytes,
        ttft_timeout: model.ttft_timeout.unwrap_or(limits.first_byte_timeout),
        request_id: &rec.request_id,
        anthropic_beta: head.anthropic_beta.as_deref(),
        native: native.as_ref().map(|(body, inbound)| upstream::NativeRequest { body, inbound }),
    };
    let answer = match upstream::send(&route, &decision, req, &body, &mut on_failure).await {
        Ok(a) => a,
        Err(e) => return send_error_as(client, io, rec, &e).await,
    };
    drop((body, native));
    let stats = answer.stats.clone();
    let sent_at = answer.sent_at;
    let explain = head.explain.then(|| explain_json(&decision, model));
    let relayed = relay(world, model, &decision, req, explain, &answer_as, answer, io, rec).await;
    observe::exchange_finished(stats.as_ref(), &world.telemetry, sent_at, &relayed, rec);
    relayed
}
