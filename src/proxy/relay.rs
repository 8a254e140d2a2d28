//! Relaying the answer to the client: the `x-joule-*` headers, `usage.cost` inserted into the
//! usage object, and streams forwarded as their events arrive (those that arrived together in
//! one write and flush, none waiting for another) with a terminal SSE error event if the
//! upstream fails mid-stream — all in the API the client
//! spoke: an Anthropic client answered by a deployment that speaks OpenAI gets the answer
//! converted (`translate::anthropic::inbound`), one chunk at a time.

use std::fmt::Write as _;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

use super::chat::AnswerAs;
use super::{ClientApi, Downstream, DownstreamError, Record, ResponseHead, World};
use crate::api::chat::{self, ChatRequest, StreamEvent, TokenCounts, Usage};
use crate::api::error::stream_error_event;
use crate::api::sse::{self, SseItem};
use crate::catalog::{Model, Quote};
use crate::pricing::cost::{insert_cost, remove_cost, usage_with_cost, Cost};
use crate::routing::RouteDecision;
use crate::translate::anthropic::inbound::{self, EventStream};
use crate::translate::responses::{self, Finished, ResponseStream};
use crate::upstream::decode::{Decoded, StreamBroken, StreamDecoder};
use crate::upstream::{Answer, AnswerBody, BodyError, BodyStream};

fn joule_headers(world: &World, model: &Model, decision: &RouteDecision, answer: &Answer, rec: &Record) -> Vec<(&'static str, String)> {
    let mut h = vec![("x-request-id", rec.request_id.clone())];
    if let Some(d) = model.deployments.get(answer.deployment) {
        h.push(("x-joule-deployment", d.id.clone()));
        h.push(("x-joule-upstream-model", d.upstream_model.clone()));
        if let Some(dc) = world.catalog.data_center_of(d) {
            h.push(("x-joule-data-center", dc.id.clone()));
        }
        let q = quote_of(decision, answer.deployment);
        h.push(("x-joule-price-input", six_decimals(q.price.input)));
        h.push(("x-joule-price-output", six_decimals(q.price.output)));
    }
    h.push(("x-joule-strategy", decision.strategy_header()));
    h
}

/// `format!("{:.6}", x)`, byte for byte. The float formatter's fixed-precision path is exact
/// and slow (it was ~1.4 % of a request's CPU for the two price headers); a price in the
/// usual range is scaled to millionths and printed as integers instead. The scaled product
/// is off by at most ~2.2e-4 for |x| < 1e6, so whenever its fraction is more than 1e-3 away
/// from a half both roundings agree; anything else (a near-tie, a negative or huge value)
/// goes to the formatter.
fn six_decimals(x: f64) -> String {
    let scaled = x * 1e6;
    let fraction = scaled - scaled.floor();
    if !(0.0..1e6).contains(&x) || (fraction - 0.5).abs() < 1e-3 {
        return format!("{x:.6}");
    }
    let micros = scaled.round() as u64;
    let mut out = String::with_capacity(16);
    // Integers print without the float formatter; writing to a String cannot fail.
    let _ = write!(out, "{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    out
}

/// The quote the decision used for a deployment (the price charged).
fn quote_of(decision: &RouteDecision, deployment: usize) -> Quote {
    decision.ranked.iter().find(|(c, _)| c.deployment == deployment).map(|(c, _)| c.quote).unwrap_or_default()
}

/// What the relay changes in an upstream document's `usage` object.
enum UsageEdit {
    /// joule's cost goes in (replacing an upstream's own).
    Set(Cost),
    /// An upstream's own cost comes out (its usage is not believed).
    Remove,
}

impl UsageEdit {
    fn cost(&self) -> Option<&Cost> {
        match self {
            UsageEdit::Set(c) => Some(c),
            UsageEdit::Remove => None,
        }
    }
}

/// The edit for a reported usage, recording usage and cost: joule's cost for believable
/// tokens when the answer is `charged`, the upstream's own cost removed for unbelievable
/// ones, nothing otherwise.
fn usage_edit(usage: Usage, quote: &Quote, charged: bool, rec: &mut Record) -> Option<UsageEdit> {
    match record_usage(usage, rec) {
        Some(tokens) if charged => {
            let cost = Cost::of(quote, &tokens);
            rec.cost = Some(cost);
            Some(UsageEdit::Set(cost))
        }
        Some(_) => None,
        None => Some(UsageEdit::Remove),
    }
}

/// `text` (an upstream document or chunk) with its model name made `model` (at `model_at`,
/// when it names another) and its usage object edited, in one copy; `None` when nothing
/// changes. Both spans come from reading the document (`Chunk::model`, `Chunk::usage_at`);
/// without the usage object's, the document is parsed again to find it.
fn rewrite(text: &str, model_at: Option<(usize, usize)>, model: &str, usage_at: Option<(usize, usize)>, usage: Option<&UsageEdit>) -> Option<String> {
    let name = model_at
        .filter(|at| text.get(at.0 + 1..at.1.saturating_sub(1)) != Some(model))
        .and_then(|at| Some((at, serde_json::to_string(model).ok()?)));
    let usage_in_place = match (usage, usage_at) {
        (Some(e), Some(at)) => text.get(at.0..at.1).and_then(|u| usage_with_cost(u, e.cost())).map(|u| (at, u)),
        _ => None,
    };
    let mut edits = [name, usage_in_place];
    edits.sort_by_key(|e| e.as_ref().map_or(usize::MAX, |(at, _)| at.0));
    let spliced = match edits.iter().any(Option::is_some) {
        false => None,
        true => {
            let mut out = String::with_capacity(text.len() + edits.iter().flatten().map(|(_, s)| s.len()).sum::<usize>());
            let mut from = 0;
            for (at, new) in edits.iter().flatten() {
                // Top-level members: the spans are disjoint and in order.
                out.push_str(text.get(from..at.0)?);
                out.push_str(new);
                from = at.1;
            }
            out.push_str(text.get(from..)?);
            Some(out)
        }
    };
    let Some(edit) = usage.filter(|_| usage_at.is_none()) else { return spliced };
    let base = spliced.as_deref().unwrap_or(text).as_bytes();
    let reparsed = match edit {
        UsageEdit::Set(c) => insert_cost(base, c),
        UsageEdit::Remove => remove_cost(base),
    };
    reparsed.and_then(|b| String::from_utf8(b).ok()).or(spliced)
}

/// Records the usage an upstream reported, returning the tokens to charge: none for an
/// unbelievable report, which flags the record (`upstream_usage_invalid`) instead — the client
/// gets the upstream's usage object without `cost`.
fn record_usage(usage: Usage, rec: &mut Record) -> Option<TokenCounts> {
    match usage {
        Usage::Tokens(t) => {
            rec.prompt_tokens = Some(t.prompt);
            rec.completion_tokens = Some(t.completion);
            Some(t)
        }
        Usage::Invalid => {
            rec.prompt_tokens = None;
            rec.completion_tokens = None;
            rec.cost = None;
            rec.error = Some(chat::USAGE_INVALID);
            tracing::warn!(request_id = %rec.request_id, deployment = rec.deployment.as_deref().unwrap_or(""), "upstream reported invalid usage");
            None
        }
    }
}

fn broken_flow(broken: StreamBroken) -> Flow {
    match broken {
        StreamBroken::Malformed => Flow::Failed("The upstream sent a malformed event stream.", "upstream_stream_invalid"),
        StreamBroken::UpstreamError => Flow::Failed("The upstream reported an error mid-stream.", "upstream_stream_error"),
    }
}

/// A whole answer from a deployment that speaks OpenAI, for an Anthropic client: a Messages
/// answer for a 2xx (with `cost` carried over), Anthropic's error shape otherwise.
fn to_anthropic(bytes: &[u8], status: u16, model: &str, rec: &mut Record) -> (u16, Vec<u8>) {
    if !(200..300).contains(&status) {
        return (status, inbound::error_from_openai(status, bytes));
    }
    inbound::message_from_chat(bytes, model).map(|b| (status, b)).unwrap_or_else(|e| {
        // `upstream::send` admitted it as a JSON object; one without `choices` is still
        // unusable, and the client is told so in its API.
        tracing::warn!(request_id = %rec.request_id, error = %e, "answer could not be converted");
        rec.error = Some("upstream_answer_invalid");
        rec.status = 502;
        (502, inbound::error_body(502, "The upstream sent an answer that could not be converted."))
    })
}

/// How the answer is put into the client's API.
enum Output {
    /// As the upstream (or its conversion to OpenAI) gave it: an OpenAI client, or an
    /// Anthropic client answered by a deployment that speaks Anthropic.
    Same(ClientApi),
    /// OpenAI chunks turned into Anthropic events for an Anthropic client.
    ToAnthropic(EventStream),
    /// OpenAI chunks turned into Responses events; the finished response once `[DONE]` came.
    ToResponses(Box<ResponseStream>, Option<Finished>),
}

impl Output {
    /// Appends the bytes for one event to `wire`: `data` is its data as rewritten, if it was;
    /// `done`: it ends the stream.
    fn event(&mut self, item: &SseItem, data: Option<&str>, done: bool, wire: &mut Vec<u8>) {
        match (self, item) {
            (Output::ToAnthropic(events), SseItem::Event { .. }) if done => wire.extend_from_slice(&events.done()),
            (Output::ToAnthropic(events), SseItem::Event { data: sent, .. }) => events.chunk_into(data.unwrap_or(sent), wire),
            (Output::ToResponses(events, finished), SseItem::Event { .. }) if done => {
                let (bytes, f) = events.done();
                *finished = Some(f);
                wire.extend_from_slice(&bytes);
            }
            (Output::ToResponses(events, _), SseItem::Event { data: sent, .. }) => events.chunk_into(data.unwrap_or(sent), wire),
            (Output::Same(_), SseItem::Event { event, data: sent }) => sse::encode_event_into(event.as_deref(), data.unwrap_or(sent), wire),
            (_, SseItem::Comment(_)) => sse::encode_into(item, wire),
        }
    }

    /// The terminal error event for a stream that failed after it started; `None` when the
    /// upstream's own error event, already in the client's API, has said it.
    fn error(&mut self, message: &str, code: &str, upstream_said: bool) -> Option<Vec<u8>> {
        match self {
            Output::ToResponses(events, _) => Some(events.error(message, code)),
            Output::Same(ClientApi::OpenAi | ClientApi::Responses) => Some(stream_error_event(message, code)),
            Output::Same(ClientApi::Anthropic) if upstream_said => None,
            Output::Same(ClientApi::Anthropic) | Output::ToAnthropic(_) => Some(inbound::error_event(message)),
        }
    }
}

/// How forwarding one batch of events ended.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Done,
    Failed(&'static str, &'static str),
    /// The upstream's error event was forwarded.
    UpstreamError,
}

/// What forwarding needs to know of the exchange.
struct Answering<'a> {
    req: &'a ChatRequest,
    /// Where a finished Responses API response is kept, if it is.
    keeper: Option<&'a super::responses::Keeper>,
    /// The price charged.
    quote: Quote,
    /// The catalog model, which every answer names.
    model: &'a str,
}

/// Appends decoded upstream events, in the client's API, to `wire` (what the client is sent
/// next), recording usage along the way.
async fn forward_items(items: &[Decoded], ctx: &Answering<'_>, out: &mut Output, wire: &mut Vec<u8>, rec: &mut Record) -> Flow {
    for Decoded { item, class } in items {
        let (SseItem::Event { data, .. }, Some(class)) = (item, class) else {
            out.event(item, None, false, wire);
            continue;
        };
        let chunk = match class {
            StreamEvent::Done => {
                out.event(item, None, true, wire);
                if let (Output::ToResponses(_, finished), Some(keeper)) = (&mut *out, ctx.keeper) {
                    if let Some(f) = finished.take() {
                        keeper.keep(f).await;
                    }
                }
                return Flow::Done;
            }
            StreamEvent::Malformed => return Flow::Failed("The upstream sent a malformed event.", "upstream_stream_invalid"),
            StreamEvent::Chunk(c) => *c,
        };
        if rec.first_token_at.is_none() && chunk.content {
            rec.first_token_at = Some(Instant::now());
        }
        // The upstream's model name becomes the catalog's (a converting output names the
        // catalog model itself); the usage event gets `cost` (or loses an upstream's own when
        // its usage is not believed). Other bytes pass as sent.
        let passed_as_is = matches!(out, Output::Same(_));
        let edit = chunk.usage.and_then(|u| usage_edit(u, &ctx.quote, true, rec));
        let rewritten = rewrite(data, chunk.model.filter(|_| passed_as_is), ctx.model, chunk.usage_at, edit.as_ref());
        if chunk.usage_only && !ctx.req.include_usage {
            continue;
        }
        out.event(item, rewritten.as_deref(), false, wire);
        if chunk.error {
            return Flow::UpstreamError;
        }
    }
    Flow::Continue
}

/// Most upstream pieces that have already arrived gathered into one write to the client.
const MAX_PIECES: usize = 32;

/// Decodes `piece` and the pieces after it that have already arrived (up to [`MAX_PIECES`],
/// never waiting for one) into `items`, so that they go to the client in one write — one
/// system call and one wake-up of the client for all of them — and none waits for another.
/// `Some` when the stream ended or broke among them; what decoded before is in `items`.
fn gather(mut piece: Option<Result<Bytes, BodyError>>, rest: &mut BodyStream, decoder: &mut StreamDecoder, items: &mut Vec<Decoded>) -> Option<Flow> {
    let mut pieces = 0;
    loop {
        match piece {
            Some(Ok(chunk)) => {
                if let Err(broken) = decoder.feed(&chunk, items) {
                    return Some(broken_flow(broken));
                }
            }
            Some(Err(_)) => return Some(Flow::Failed("The upstream connection failed mid-stream.", "upstream_stream_interrupted")),
            None => {
                return Some(match decoder.finish(items) {
                    Ok(()) => Flow::Failed("The upstream ended the stream before it was complete.", "upstream_stream_interrupted"),
                    Err(broken) => broken_flow(broken),
                })
            }
        }
        pieces += 1;
        if pieces == MAX_PIECES {
            return None;
        }
        piece = rest.next().now_or_never()?;
    }
}

/// Sends the answer to the client: a whole document (with `usage.cost` inserted), or the
/// event stream as it arrives, ending with an SSE error event if the upstream fails
/// mid-stream.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    world: &World,
    model: &Model,
    decision: &RouteDecision,
    req: &ChatRequest,
    explain: Option<String>,
    answer_as: &AnswerAs,
    answer: Answer,
    io: &mut dyn Downstream,
    rec: &mut Record,
) -> Result<(), DownstreamError> {
    let client = answer_as.api();
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
    let mut status = answer.status;
    rec.status = status;
    if let Some(first) = answer.first_token_at {
        rec.first_token_at = Some(first);
        rec.ttft = Some(first.duration_since(answer.sent_at));
    }
    let (mut prefetched, mut decoder, mut rest) = match answer.body {
        AnswerBody::Full { mut bytes, doc } => {
            // Non-stream answer (or an upstream error document for a stream request), read
            // and parsed whole by `upstream::send`: nothing can fail here but the client.
            if let Some(d) = doc {
                let edit = d.usage.and_then(|u| usage_edit(u, &quote, (200..300).contains(&status), rec));
                if let Some(t) = std::str::from_utf8(&bytes).ok().and_then(|t| rewrite(t, d.model, &model.id, d.usage_at, edit.as_ref())) {
                    bytes = Bytes::from(t);
                }
            }
            let mut content_type = answer.content_type;
            if client == ClientApi::Anthropic && !answer.native {
                let (converted_status, converted) = to_anthropic(&bytes, status, &model.id, rec);
                (status, bytes) = (converted_status, Bytes::from(converted));
                content_type = "application/json".into();
            }
            if let (AnswerAs::Responses(r), true) = (answer_as, (200..300).contains(&status)) {
                match responses::response_from_chat(&bytes, &r.meta, &r.conversation) {
                    Ok(f) => {
                        bytes = Bytes::from(f.object.clone());
                        if let Some(k) = &r.keeper {
                            k.keep(f).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(request_id = %rec.request_id, error = %e, "answer could not be converted");
                        rec.error = Some("upstream_answer_invalid");
                        (status, rec.status) = (502, 502);
                        bytes = Bytes::from(crate::api::error::ApiError::UpstreamFailed { message: "The upstream sent an answer that could not be converted.".into() }.body());
                    }
                }
                content_type = "application/json".into();
            }
            headers.push(("content-type", content_type));
            return io.send_whole(status, headers, bytes).await;
        }
        AnswerBody::Stream { prefetched, decoder, rest } => (prefetched, decoder, rest),
    };

    headers.push(("content-type", "text/event-stream".into()));
    headers.push(("cache-control", "no-cache".into()));
    let keeper = match answer_as {
        AnswerAs::Responses(r) => r.keeper.as_ref(),
        _ => None,
    };
    let ctx = Answering { req, keeper, quote, model: &model.id };
    let mut out = match answer_as {
        AnswerAs::Anthropic if !answer.native => Output::ToAnthropic(EventStream::new(&model.id)),
        AnswerAs::Responses(r) => Output::ToResponses(Box::new(ResponseStream::new(r.meta.clone(), r.conversation.clone())), None),
        _ => Output::Same(client),
    };
    // What the client is sent next: every event that has arrived, written at once.
    let mut wire = Vec::new();
    let mut flow = forward_items(&prefetched, &ctx, &mut out, &mut wire, rec).await;
    io.send_start(ResponseHead { status, headers, content_length: None }, Bytes::from(std::mem::take(&mut wire))).await?;
    // One idle timer for the whole stream, moved only when it fires (a timer per event cost a
    // timer-wheel insertion and removal each).
    let idle_limit = world.limits.stream_idle_timeout;
    let mut last_chunk = tokio::time::Instant::now();
    let idle = tokio::time::sleep(idle_limit);
    tokio::pin!(idle);
    while let Flow::Continue = flow {
        let piece = tokio::select! {
            biased;
            next = rest.next() => next,
            () = &mut idle => {
                if last_chunk.elapsed() < idle_limit {
                    idle.as_mut().reset(last_chunk + idle_limit);
                    continue;
                }
                flow = Flow::Failed("The upstream stopped sending for too long.", "upstream_stream_timeout");
                break;
            }
            () = io.closed() => return Err(DownstreamError("client closed the connection mid-stream".into())),
        };
        last_chunk = tokio::time::Instant::now();
        prefetched.clear();
        let ended = gather(piece, &mut rest, &mut decoder, &mut prefetched);
        flow = match forward_items(&prefetched, &ctx, &mut out, &mut wire, rec).await {
            Flow::Continue => ended.unwrap_or(Flow::Continue),
            other => other,
        };
        if matches!(flow, Flow::Continue) && !wire.is_empty() {
            io.send_body(Bytes::from(std::mem::take(&mut wire)), false).await?;
        }
    }
    // The last events go out with the end of the body.
    let (message, code, upstream_said) = match flow {
        Flow::Failed(message, code) => (message, code, false),
        Flow::UpstreamError => ("The upstream reported an error mid-stream.", "upstream_stream_error", true),
        Flow::Continue | Flow::Done => return io.send_body(Bytes::from(wire), true).await,
    };
    rec.error = Some(code);
    tracing::warn!(request_id = %rec.request_id, deployment = rec.deployment.as_deref().unwrap_or(""), code, "stream failed after headers");
    if let Some(event) = out.error(message, code, upstream_said) {
        wire.extend_from_slice(&event);
    }
    io.send_body(Bytes::from(wire), true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::read_doc;
    use crate::pricing::cost::Cost;

    fn cost() -> Cost {
        Cost::of(&Quote::default(), &TokenCounts::new(3, 4))
    }

    /// `rewrite` with the spans `read_doc` finds, and with the usage span withheld (the
    /// re-parsing path): both must give the same document.
    fn both_ways(text: &str, model: &str, edit: Option<&UsageEdit>) -> Option<String> {
        let doc = read_doc(text.as_bytes()).expect("a document");
        let spanned = rewrite(text, doc.model, model, doc.usage_at, edit);
        let reparsed = rewrite(text, doc.model, model, None, edit);
        assert_eq!(spanned, reparsed, "{text}");
        spanned
    }

    #[test]
    fn model_and_cost_are_set_in_one_copy_whatever_their_order() {
        let members = cost().members_json();
        let text = r#"{"id":"x","model":"up-1","usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let want = format!(r#"{{"id":"x","model":"cat","usage":{{"prompt_tokens":3,"completion_tokens":4,{members}}}}}"#);
        assert_eq!(both_ways(text, "cat", Some(&UsageEdit::Set(cost()))).as_deref(), Some(want.as_str()));

        let text = r#"{"usage":{"prompt_tokens":3},  "model" : "up-1" ,"choices":[]}"#;
        let want = format!(r#"{{"usage":{{"prompt_tokens":3,{members}}},  "model" : "c\"at" ,"choices":[]}}"#);
        assert_eq!(both_ways(text, "c\"at", Some(&UsageEdit::Set(cost()))).as_deref(), Some(want.as_str()));
    }

    #[test]
    fn an_upstream_cost_is_replaced_or_removed_and_nothing_else_moves() {
        let text = r#"{"model":"cat","usage":{"cost":9,"prompt_tokens":3,"cost_details":{}}}"#;
        let set = both_ways(text, "cat", Some(&UsageEdit::Set(cost()))).unwrap();
        assert_eq!(set, format!(r#"{{"model":"cat","usage":{{"prompt_tokens":3,{}}}}}"#, cost().members_json()));
        let removed = both_ways(text, "cat", Some(&UsageEdit::Remove)).unwrap();
        assert_eq!(removed, r#"{"model":"cat","usage":{"prompt_tokens":3}}"#);
    }

    #[test]
    fn six_decimals_is_the_formatters_output() {
        let mut values = vec![0.0, 1e-7, 4.9999995e-7, 5e-7, 0.0000015, 0.1, 0.125, 2.5e-6, 0.2, 1.0, 999_999.999_999_5, 123.456_789_5, 1e6, 2e9, -0.3, f64::NAN, f64::INFINITY];
        // A fixed pseudo-random sweep over the price range, including every tie it meets.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let magnitude = 10f64.powi((seed % 12) as i32 - 6);
            values.push((seed >> 11) as f64 / (1u64 << 53) as f64 * magnitude);
            values.push(((seed >> 20) % 2_000_000) as f64 / 2e6 * magnitude);
        }
        for x in values {
            assert_eq!(six_decimals(x), format!("{x:.6}"), "{x:e}");
        }
    }

    fn token(n: usize) -> Bytes {
        Bytes::from(format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{n}\"}}}}]}}\n\n"))
    }

    fn ready(pieces: Vec<Result<Bytes, BodyError>>) -> BodyStream {
        futures_util::stream::iter(pieces).boxed()
    }

    fn content(items: &[Decoded]) -> usize {
        items.iter().filter(|d| matches!(&d.class, Some(StreamEvent::Chunk(c)) if c.content)).count()
    }

    #[test]
    fn pieces_already_arrived_are_gathered_and_none_is_waited_for() {
        // Two more pieces have arrived (one ends an event the first began); the next has not.
        let first = token(0);
        let second = token(1);
        let (head, tail) = second.split_at(9);
        let mut rest = ready(vec![Ok(Bytes::copy_from_slice(head)), Ok(Bytes::copy_from_slice(tail))]).chain(futures_util::stream::pending()).boxed();
        let mut decoder = StreamDecoder::openai();
        let mut items = Vec::new();
        assert_eq!(gather(Some(Ok(first)), &mut rest, &mut decoder, &mut items), None, "nothing ended");
        assert_eq!(content(&items), 2);

        // More pieces than one write takes: the rest stay for the next.
        let mut rest = ready((1..MAX_PIECES + 3).map(|n| Ok(token(n))).collect());
        items.clear();
        assert_eq!(gather(Some(Ok(token(0))), &mut rest, &mut decoder, &mut items), None);
        assert_eq!(content(&items), MAX_PIECES);
        items.clear();
        let next = futures_util::FutureExt::now_or_never(rest.next()).expect("ready");
        let ended = gather(next, &mut rest, &mut decoder, &mut items);
        assert_eq!(content(&items), 3, "the rest, then the end");
        assert_eq!(ended, Some(Flow::Failed("The upstream ended the stream before it was complete.", "upstream_stream_interrupted")));
    }

    #[test]
    fn an_end_or_a_break_among_them_comes_after_what_decoded_before_it() {
        let gathered = |pieces: Vec<Result<Bytes, BodyError>>| {
            let mut rest = ready(pieces);
            let mut decoder = StreamDecoder::openai();
            let mut items = Vec::new();
            let ended = gather(Some(Ok(token(0))), &mut rest, &mut decoder, &mut items);
            (items, ended)
        };
        let (items, ended) = gathered(vec![Ok(token(1)), Err(BodyError { timeout: false }), Ok(token(2))]);
        assert_eq!((content(&items), ended), (2, Some(Flow::Failed("The upstream connection failed mid-stream.", "upstream_stream_interrupted"))));

        let (items, ended) = gathered(vec![Ok(Bytes::from_static(b"data: [DONE]\n\n"))]);
        assert!(matches!(items.last().and_then(|d| d.class.as_ref()), Some(StreamEvent::Done)), "{items:?}");
        assert_eq!(content(&items), 1);
        assert!(ended.is_some(), "the body's end is seen too: forwarding stops at [DONE] first");

        let (items, ended) = gathered(vec![Ok(token(1)), Ok(Bytes::from_static(b"data: \xff\n\n")), Ok(token(2))]);
        assert_eq!((content(&items), ended), (2, Some(Flow::Failed("The upstream sent a malformed event stream.", "upstream_stream_invalid"))));
    }

    #[test]
    fn nothing_to_change_is_none() {
        let text = r#"{"model":"cat","usage":{"prompt_tokens":3}}"#;
        assert_eq!(both_ways(text, "cat", None), None, "same model, no usage edit");
        assert_eq!(both_ways(text, "cat", Some(&UsageEdit::Remove)), None, "no upstream cost to remove");
        let text = r#"{"model":"up","usage":null}"#;
        assert_eq!(both_ways(text, "cat", Some(&UsageEdit::Set(cost()))).as_deref(), Some(r#"{"model":"cat","usage":null}"#));
    }
}
