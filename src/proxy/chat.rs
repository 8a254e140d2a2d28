//! `POST /v1/chat/completions`: read the body within the limit, check it, rank the model's
//! deployments, forward with failover, and relay the answer — event by event for streams,
//! with a terminal SSE error event if the upstream fails mid-stream.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;

use super::{send_error, Downstream, DownstreamError, Gateway, Record, RequestHead, ResponseHead, World};
use crate::api::chat::{self, ChatRequest};
use crate::api::error::{stream_error_event, ApiError};
use crate::api::sse::{self, SseItem};
use crate::auth::Principal;
use crate::catalog::{Model, Quote};
use crate::limits::{self, Refusal};
use crate::pricing::cost::{insert_cost, Cost};
use crate::pricing::PriceBook;
use crate::routing::tags::StrategySet;
use crate::routing::wasm::explain::{explain_json, DecisionInput, DecisionOutput, LoggedDecision};
use crate::routing::{self, tags, wasm, RouteDecision};
use crate::upstream::{self, Answer, AnswerBody};

/// Reads the whole request body within the configured size limit and client body timeout.
pub(crate) async fn read_body(io: &mut dyn Downstream, head: &RequestHead, world: &World) -> Result<Vec<u8>, ApiError> {
    super::body::read_body(io, head.content_length, world.limits.max_body_bytes, world.limits.client_body_timeout).await
}

fn decide<'w>(
    gw: &Gateway,
    world: &'w World,
    book: &PriceBook,
    default: &StrategySet,
    req: &ChatRequest,
) -> Result<(usize, &'w Model, RouteDecision), ApiError> {
    let invalid = |e: tags::TagError| ApiError::InvalidRequest { message: e.to_string(), param: Some("model"), code: Some("invalid_strategy") };
    let (base, strategies) = tags::parse_model(&req.model).map_err(invalid)?;
    let (index, model) = world
        .catalog
        .model_indexed(base)
        .ok_or_else(|| ApiError::ModelNotFound { model: base.chars().take(200).collect() })?;
    // One plugin set for the whole decision: a swap meanwhile does not affect it.
    let set = gw.strategies.current();
    let strategies = match strategies {
        Some(s) => {
            set.check(&s).map_err(invalid)?;
            s
        }
        None => default.clone(),
    };
    let cands = routing::candidates(&world.catalog, book, model, index, &world.telemetry);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let seed: u64 = rand::random();
    let logged = gw.decision_log.as_ref().map(|log| (log, DecisionInput::capture(model, &strategies, &cands, now_ms, seed, &set)));
    let decision = wasm::rank(&set, &strategies, cands, now_ms, seed, Some(&gw.metrics.strategy));
    if let Some((log, input)) = logged {
        log.record(LoggedDecision { input, output: DecisionOutput::capture(&decision, Some(model)) });
    }
    Ok((index, model, decision))
}

/// Serves a chat completion for an authenticated principal.
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
    rec.principal = Some(principal.clone());
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
    // One load of the price book: the price charged is the one the decision saw.
    let book = gw.pricing.book();
    let (model_index, model, decision) = match decide(gw, world, &book, principal.default_strategy(&world.default_strategy), &req) {
        Ok(x) => x,
        Err(e) => return send_error(io, rec, &e).await,
    };
    rec.model = Some(model.id.clone());
    rec.strategy = Some(decision.strategies.to_string());
    if let Err(e) = check_access(gw, principal, model) {
        return send_error(io, rec, &e).await;
    }

    let metrics = &gw.metrics;
    let mut on_failure = |a: &upstream::Attempt| {
        if let Some(d) = model.deployments.get(a.deployment) {
            metrics.upstream_failures.with_label_values(&[d.id.as_str(), a.failure.label()]).inc();
        }
    };
    let route = upstream::Route {
        clients: &world.clients,
        catalog: &world.catalog,
        telemetry: &world.telemetry,
        model,
        model_index,
        first_byte_timeout: world.limits.first_byte_timeout,
        ttft_timeout: model.ttft_timeout.unwrap_or(world.limits.first_byte_timeout),
        request_id: &rec.request_id,
    };
    let answer = match upstream::send(&route, &decision, &req, &body, &mut on_failure).await {
        Ok(a) => a,
        Err(e) => return send_error(io, rec, &e).await,
    };
    drop(body);
    let settings = &world.telemetry.settings;
    let stats = answer.stats.clone();
    let sent_at = answer.sent_at;
    let explain = head.explain.then(|| explain_json(&decision, model));
    let outcome = relay(world, model, &decision, &req, explain, answer, io, rec).await;
    if let Some(st) = stats {
        match (&outcome, rec.error) {
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
            // The upstream failed mid-stream.
            (Ok(()), Some(_)) => {
                st.record_failure(settings);
            }
            // The client went away: says nothing about the deployment.
            (Err(_), _) => {}
        }
    }
    outcome
}

/// The project's model allow-list, then its and the key's limits and budget.
fn check_access(gw: &Gateway, principal: &Principal, model: &Model) -> Result<(), ApiError> {
    if !principal.may_use(&model.id) {
        return Err(ApiError::ModelNotAllowed { model: model.id.clone() });
    }
    limits::admit(principal, limits::now_ns(), crate::store::now_ms()).map_err(|r| {
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

fn joule_headers(world: &World, model: &Model, decision: &RouteDecision, answer: &Answer, rec: &Record) -> Vec<(&'static str, String)> {
    let mut h = vec![("x-request-id", rec.request_id.clone())];
    if let Some(d) = model.deployments.get(answer.deployment) {
        h.push(("x-joule-deployment", d.id.clone()));
        if let Some(dc) = world.catalog.data_center_of(d) {
            h.push(("x-joule-data-center", dc.id.clone()));
        }
        let q = quote_of(decision, answer.deployment);
        h.push(("x-joule-price-input", format!("{:.6}", q.price.input)));
        h.push(("x-joule-price-output", format!("{:.6}", q.price.output)));
    }
    h.push(("x-joule-strategy", decision.strategy_header()));
    h
}

/// The quote the decision used for a deployment (the price charged).
fn quote_of(decision: &RouteDecision, deployment: usize) -> Quote {
    decision.ranked.iter().find(|(c, _)| c.deployment == deployment).map(|(c, _)| c.quote).unwrap_or_default()
}

/// Adds `cost` to the usage object of an upstream JSON document, recording it.
fn with_cost(doc: &[u8], quote: &Quote, tokens: (u64, u64), rec: &mut Record) -> Option<Vec<u8>> {
    let cost = Cost::of(quote, tokens.0, tokens.1);
    rec.cost = Some(cost);
    insert_cost(doc, &cost)
}

fn usage_of(v: &serde_json::Value) -> Option<(u64, u64)> {
    let u = v.get("usage")?;
    Some((u.get("prompt_tokens")?.as_u64()?, u.get("completion_tokens")?.as_u64()?))
}

/// How forwarding one batch of events ended.
enum Flow {
    Continue,
    Done,
    Failed(&'static str, &'static str),
}

/// Forwards parsed upstream events to the client, recording usage along the way.
async fn forward_items(
    items: &[SseItem],
    req: &ChatRequest,
    quote: &Quote,
    io: &mut dyn Downstream,
    rec: &mut Record,
) -> Result<Flow, DownstreamError> {
    for item in items {
        match item {
            SseItem::Comment(_) => io.send_body(Bytes::from(sse::encode(item)), false).await?,
            SseItem::Event { data, .. } if data.trim() == "[DONE]" => {
                io.send_body(Bytes::from_static(b"data: [DONE]\n\n"), false).await?;
                return Ok(Flow::Done);
            }
            SseItem::Event { event, data } => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                    return Ok(Flow::Failed("The upstream sent a malformed event.", "upstream_stream_invalid"));
                };
                if rec.first_token_at.is_none() && chat::has_content(&v) {
                    rec.first_token_at = Some(Instant::now());
                }
                let usage_only = v.get("choices").and_then(|c| c.as_array()).is_some_and(|c| c.is_empty())
                    && v.get("usage").is_some_and(|u| !u.is_null());
                let mut with_cost_event = None;
                if let Some((p, c)) = usage_of(&v) {
                    rec.prompt_tokens = Some(p);
                    rec.completion_tokens = Some(c);
                    // Only this event is re-encoded, with `cost` added to its usage.
                    with_cost_event = with_cost(data.as_bytes(), quote, (p, c), rec)
                        .and_then(|b| String::from_utf8(b).ok())
                        .map(|data| SseItem::Event { event: event.clone(), data });
                }
                if usage_only && !req.include_usage {
                    continue;
                }
                io.send_body(Bytes::from(sse::encode(with_cost_event.as_ref().unwrap_or(item))), false).await?;
                if v.get("error").is_some() {
                    return Ok(Flow::Failed("The upstream reported an error mid-stream.", "upstream_stream_error"));
                }
            }
        }
    }
    Ok(Flow::Continue)
}

#[allow(clippy::too_many_arguments)]
async fn relay(
    world: &World,
    model: &Model,
    decision: &RouteDecision,
    req: &ChatRequest,
    explain: Option<String>,
    answer: Answer,
    io: &mut dyn Downstream,
    rec: &mut Record,
) -> Result<(), DownstreamError> {
    let quote = quote_of(decision, answer.deployment);
    if let Some(d) = model.deployments.get(answer.deployment) {
        rec.deployment = Some(d.id.clone());
        rec.data_center = world.catalog.data_center_of(d).map(|dc| dc.id.clone());
        rec.quote = Some(quote);
    }
    let mut headers = joule_headers(world, model, decision, &answer, rec);
    if let Some(x) = explain {
        headers.push(("x-joule-explain", x));
    }
    let status = answer.status;
    rec.status = status;
    if let Some(first) = answer.first_token_at {
        rec.first_token_at = Some(first);
        rec.ttft = Some(first.duration_since(answer.sent_at));
    }
    let (mut prefetched, mut parser, mut rest) = match answer.body {
        AnswerBody::Full(response) => {
            // Non-stream answer (or an upstream error document for a stream request).
            let bytes = match tokio::time::timeout(world.limits.request_timeout, response.bytes()).await {
                Ok(Ok(b)) => b,
                Ok(Err(_)) | Err(_) => {
                    let e = ApiError::UpstreamFailed { message: "The upstream connection failed while sending the response.".into() };
                    return send_error(io, rec, &e).await;
                }
            };
            let mut bytes = bytes;
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some((p, c)) = usage_of(&v) {
                    rec.prompt_tokens = Some(p);
                    rec.completion_tokens = Some(c);
                    if (200..300).contains(&status) {
                        if let Some(b) = with_cost(&bytes, &quote, (p, c), rec) {
                            bytes = Bytes::from(b);
                        }
                    }
                }
            }
            headers.push(("content-type", answer.content_type));
            io.send_head(ResponseHead { status, headers, content_length: Some(bytes.len()) }).await?;
            return io.send_body(bytes, true).await;
        }
        AnswerBody::Stream { prefetched, parser, rest } => (prefetched, parser, rest),
    };

    headers.push(("content-type", "text/event-stream".into()));
    headers.push(("cache-control", "no-cache".into()));
    io.send_head(ResponseHead { status, headers, content_length: None }).await?;

    let mut flow = forward_items(&prefetched, req, &quote, io, rec).await?;
    while let Flow::Continue = flow {
        let chunk = match tokio::time::timeout(world.limits.stream_idle_timeout, rest.next()).await {
            Err(_) => {
                flow = Flow::Failed("The upstream stopped sending for too long.", "upstream_stream_timeout");
                break;
            }
            Ok(Some(Err(_))) => {
                flow = Flow::Failed("The upstream connection failed mid-stream.", "upstream_stream_interrupted");
                break;
            }
            Ok(None) => {
                prefetched.clear();
                parser.finish(&mut prefetched);
                flow = match forward_items(&prefetched, req, &quote, io, rec).await? {
                    Flow::Continue => Flow::Failed("The upstream ended the stream before it was complete.", "upstream_stream_interrupted"),
                    other => other,
                };
                break;
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        prefetched.clear();
        if parser.feed(&chunk, &mut prefetched).is_err() {
            flow = Flow::Failed("The upstream sent a malformed event stream.", "upstream_stream_invalid");
            break;
        }
        flow = forward_items(&prefetched, req, &quote, io, rec).await?;
    }
    if let Flow::Failed(message, code) = flow {
        rec.error = Some(code);
        tracing::warn!(request_id = %rec.request_id, deployment = rec.deployment.as_deref().unwrap_or(""), code, "stream failed after headers");
        io.send_body(Bytes::from(stream_error_event(message, code)), false).await?;
    }
    io.send_body(Bytes::new(), true).await
}
