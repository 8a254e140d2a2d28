//! `POST /v1/chat/completions`: read the body within the limit, check it, rank the model's
//! deployments, forward with failover, and relay the answer — event by event for streams,
//! with a terminal SSE error event if the upstream fails mid-stream.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;

use super::{send_error, Downstream, DownstreamError, Gateway, Record, RequestHead, ResponseHead, World};
use crate::api::chat::{self, ChatRequest};
use crate::api::error::{stream_error_event, ApiError};
use crate::api::sse::{self, SseItem, SseParser};
use crate::auth::Principal;
use crate::catalog::Model;
use crate::routing::wasm::explain::{explain_json, DecisionInput, DecisionOutput, LoggedDecision};
use crate::routing::{self, tags, wasm, RouteDecision};
use crate::upstream::{self, Answer};

/// Reads the whole request body, refusing it once it exceeds `limit`.
pub(crate) async fn read_body(io: &mut dyn Downstream, head: &RequestHead, world: &World) -> Result<Vec<u8>, ApiError> {
    let limit = world.limits.max_body_bytes;
    if head.content_length.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut body = Vec::with_capacity(head.content_length.map_or(0, |n| n as usize));
    let deadline = tokio::time::Instant::now() + world.limits.client_body_timeout;
    loop {
        match tokio::time::timeout_at(deadline, io.read_body()).await {
            Err(_) => return Err(ApiError::BodyTimeout),
            Ok(Err(_)) => return Err(ApiError::invalid("The request body could not be read.", None)),
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(ApiError::BodyTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

fn decide<'w>(gw: &Gateway, world: &'w World, req: &ChatRequest) -> Result<(&'w Model, RouteDecision), ApiError> {
    let invalid = |e: tags::TagError| ApiError::InvalidRequest { message: e.to_string(), param: Some("model"), code: Some("invalid_strategy") };
    let (base, strategies) = tags::parse_model(&req.model).map_err(invalid)?;
    let model = world
        .catalog
        .model(base)
        .ok_or_else(|| ApiError::ModelNotFound { model: base.chars().take(200).collect() })?;
    // One plugin set for the whole decision: a swap meanwhile does not affect it.
    let set = gw.strategies.current();
    let strategies = match strategies {
        Some(s) => {
            set.check(&s).map_err(invalid)?;
            s
        }
        None => world.default_strategy.clone(),
    };
    let cands = routing::candidates(&world.catalog, model);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let seed: u64 = rand::random();
    let logged = gw.decision_log.as_ref().map(|log| (log, DecisionInput::capture(model, &strategies, &cands, now_ms, seed, &set)));
    let decision = wasm::rank(&set, &strategies, cands, now_ms, seed, Some(&gw.metrics.strategy));
    if let Some((log, input)) = logged {
        log.record(LoggedDecision { input, output: DecisionOutput::capture(&decision, Some(model)) });
    }
    Ok((model, decision))
}

/// Serves a chat completion for an authenticated principal.
///
/// # Errors
/// Only downstream I/O failures.
pub async fn handle(
    gw: &Gateway,
    world: &World,
    _principal: &Principal,
    head: &RequestHead,
    io: &mut dyn Downstream,
    rec: &mut Record,
) -> Result<(), DownstreamError> {
    let body = match read_body(io, head, world).await {
        Ok(b) => b,
        Err(e) => {
            if matches!(e, ApiError::BodyTooLarge { .. } | ApiError::BodyTimeout) {
                io.close_after();
            }
            return send_error(io, rec, &e).await;
        }
    };
    let req = match chat::inspect(&body) {
        Ok(r) => r,
        Err(e) => return send_error(io, rec, &e).await,
    };
    rec.stream = req.stream;
    let (model, decision) = match decide(gw, world, &req) {
        Ok(x) => x,
        Err(e) => return send_error(io, rec, &e).await,
    };
    rec.model = Some(model.id.clone());
    rec.strategy = Some(decision.strategies.to_string());

    let metrics = &gw.metrics;
    let mut on_failure = |a: &upstream::Attempt| {
        if let Some(d) = model.deployments.get(a.deployment) {
            metrics.upstream_failures.with_label_values(&[d.id.as_str(), a.failure.label()]).inc();
        }
    };
    let answer = match upstream::send(
        &world.clients,
        &world.catalog,
        model,
        &decision,
        &req,
        &body,
        world.limits.first_byte_timeout,
        &rec.request_id,
        &mut on_failure,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return send_error(io, rec, &e).await,
    };
    drop(body);
    rec.deployment = model.deployments.get(answer.deployment).map(|d| d.id.clone());
    let mut headers = joule_headers(world, model, &decision, &answer, rec);
    if head.explain {
        headers.push(("x-joule-explain", explain_json(&decision, model)));
    }
    relay(world, headers, &req, answer, io, rec).await
}

fn joule_headers(world: &World, model: &Model, decision: &RouteDecision, answer: &Answer, rec: &Record) -> Vec<(&'static str, String)> {
    let mut h = vec![("x-request-id", rec.request_id.clone())];
    if let Some(d) = model.deployments.get(answer.deployment) {
        h.push(("x-joule-deployment", d.id.clone()));
        if let Some(dc) = world.catalog.data_center_of(d) {
            h.push(("x-joule-data-center", dc.id.clone()));
        }
        let q = world.catalog.quote(model, d);
        h.push(("x-joule-price-input", format!("{:.6}", q.price.input)));
        h.push(("x-joule-price-output", format!("{:.6}", q.price.output)));
    }
    h.push(("x-joule-strategy", decision.strategy_header()));
    h
}

fn usage_of(v: &serde_json::Value) -> Option<(u64, u64)> {
    let u = v.get("usage")?;
    Some((u.get("prompt_tokens")?.as_u64()?, u.get("completion_tokens")?.as_u64()?))
}

async fn relay(
    world: &World,
    mut headers: Vec<(&'static str, String)>,
    req: &ChatRequest,
    answer: Answer,
    io: &mut dyn Downstream,
    rec: &mut Record,
) -> Result<(), DownstreamError> {
    let sent_at = Instant::now();
    let status = answer.response.status().as_u16();
    let content_type = answer
        .response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let is_sse = content_type.starts_with("text/event-stream");
    if !(req.stream && is_sse) {
        // Non-stream answer (or an upstream error document for a stream request).
        let bytes = match tokio::time::timeout(world.limits.request_timeout, answer.response.bytes()).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) | Err(_) => {
                let e = ApiError::UpstreamFailed { message: "The upstream connection failed while sending the response.".into() };
                return send_error(io, rec, &e).await;
            }
        };
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            if let Some((p, c)) = usage_of(&v) {
                rec.prompt_tokens = Some(p);
                rec.completion_tokens = Some(c);
            }
        }
        rec.status = status;
        headers.push(("content-type", content_type));
        io.send_head(ResponseHead { status, headers, content_length: Some(bytes.len()) }).await?;
        return io.send_body(bytes, true).await;
    }

    rec.status = status;
    headers.push(("content-type", "text/event-stream".into()));
    headers.push(("cache-control", "no-cache".into()));
    io.send_head(ResponseHead { status, headers, content_length: None }).await?;

    let mut stream = answer.response.bytes_stream();
    let mut parser = SseParser::default();
    let mut items = Vec::new();
    let failure: Option<(&str, &str)> = loop {
        let next = match tokio::time::timeout(world.limits.stream_idle_timeout, stream.next()).await {
            Err(_) => break Some(("The upstream stopped sending for too long.", "upstream_stream_timeout")),
            Ok(None) => {
                items.clear();
                parser.finish(&mut items);
                if items.iter().any(|i| matches!(i, SseItem::Event { data, .. } if data.trim() == "[DONE]")) {
                    io.send_body(Bytes::from_static(b"data: [DONE]\n\n"), false).await?;
                    break None;
                }
                break Some(("The upstream ended the stream before it was complete.", "upstream_stream_interrupted"));
            }
            Ok(Some(Err(_))) => break Some(("The upstream connection failed mid-stream.", "upstream_stream_interrupted")),
            Ok(Some(Ok(chunk))) => chunk,
        };
        items.clear();
        if parser.feed(&next, &mut items).is_err() {
            break Some(("The upstream sent a malformed event stream.", "upstream_stream_invalid"));
        }
        let mut outcome = None;
        for item in &items {
            match item {
                SseItem::Comment(_) => io.send_body(Bytes::from(sse::encode(item)), false).await?,
                SseItem::Event { data, .. } if data.trim() == "[DONE]" => {
                    io.send_body(Bytes::from_static(b"data: [DONE]\n\n"), false).await?;
                    outcome = Some(None);
                    break;
                }
                SseItem::Event { data, .. } => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                        outcome = Some(Some(("The upstream sent a malformed event.", "upstream_stream_invalid")));
                        break;
                    };
                    if rec.ttft.is_none() && has_content(&v) {
                        rec.ttft = Some(sent_at.elapsed());
                    }
                    let usage_only = v.get("choices").and_then(|c| c.as_array()).is_some_and(|c| c.is_empty())
                        && v.get("usage").is_some_and(|u| !u.is_null());
                    if let Some((p, c)) = usage_of(&v) {
                        rec.prompt_tokens = Some(p);
                        rec.completion_tokens = Some(c);
                    }
                    if usage_only && !req.include_usage {
                        continue;
                    }
                    io.send_body(Bytes::from(sse::encode(item)), false).await?;
                    if v.get("error").is_some() {
                        outcome = Some(None);
                        break;
                    }
                }
            }
        }
        if let Some(o) = outcome {
            break o;
        }
    };
    if let Some((message, code)) = failure {
        rec.error = Some(code_label(code));
        tracing::warn!(request_id = %rec.request_id, deployment = rec.deployment.as_deref().unwrap_or(""), code, "stream failed after headers");
        io.send_body(Bytes::from(stream_error_event(message, code)), false).await?;
    }
    io.send_body(Bytes::new(), true).await
}

fn code_label(code: &str) -> &'static str {
    match code {
        "upstream_stream_timeout" => "upstream_stream_timeout",
        "upstream_stream_invalid" => "upstream_stream_invalid",
        _ => "upstream_stream_interrupted",
    }
}

/// True for a chunk carrying generated content (not the role-only first chunk).
fn has_content(v: &serde_json::Value) -> bool {
    v.get("choices").and_then(|c| c.as_array()).is_some_and(|choices| {
        choices.iter().any(|c| {
            let d = &c["delta"];
            d.get("content").and_then(|x| x.as_str()).is_some_and(|s| !s.is_empty())
                || d.get("tool_calls").is_some_and(|t| !t.is_null())
                || d.get("refusal").and_then(|x| x.as_str()).is_some_and(|s| !s.is_empty())
        })
    })
}
