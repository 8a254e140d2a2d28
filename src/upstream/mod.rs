//! Upstream forwarding: send a chat request to the ranked deployments in order until one
//! answers. A deployment is skipped when its breaker refuses it, or on a connect error, no
//! response headers within the first-byte timeout, 429/5xx, an unreadable 2xx answer (a
//! non-stream body that is not a JSON object, a stream request answered without
//! `text/event-stream`) — for non-stream answers, when the body breaks, does not arrive within
//! the request timeout or exceeds the answer size limit (the body is read whole here, before
//! the client sees anything) — and, for streams, when no content token arrives within the
//! model's TTFT timeout (the events before it are held back, so nothing has reached the client
//! yet). Once an [`Answer`] is returned, no other deployment is tried. Every failed attempt is
//! reported to the caller, which records it (`proxy::observe`).

pub mod client;
pub mod decode;
pub mod h1;
pub mod probe;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http::header::CONTENT_TYPE;

use crate::api::chat::{read_doc, ChatRequest, Chunk, StreamEvent};
use crate::api::error::ApiError;
use crate::catalog::{Catalog, DeploymentKind, Model, ProviderApi};
use crate::translate::anthropic::{self, inbound::Inbound, StreamConverter};
use crate::translate::TranslateError;
use decode::{Decoded, StreamDecoder};
use crate::routing::RouteDecision;
use crate::telemetry::{Admission, DeploymentStats, InFlightGuard, Telemetry};
pub use client::Clients;

/// Bounds on one exchange (`[limits]` in the config): the client's body size and every
/// timeout of the client and upstream sides. Not rate limits (those are in `access::limits`).
#[derive(Debug, Clone)]
pub struct ExchangeLimits {
    /// Largest accepted request body. Default 16 MiB; larger → 413.
    pub max_body_bytes: usize,
    /// TCP+TLS connect to an upstream. Default 2 s; past it the next deployment is tried.
    pub connect_timeout: Duration,
    /// From sending the request to the upstream's response headers. Default 30 s; past it
    /// the next deployment is tried.
    pub first_byte_timeout: Duration,
    /// Longest silence between two upstream stream chunks. Default 120 s; past it the
    /// stream ends with an SSE error event.
    pub stream_idle_timeout: Duration,
    /// Whole non-stream upstream exchange with one deployment, from sending the request to
    /// the last byte of the answer. Default 600 s; past it the next deployment is tried.
    pub request_timeout: Duration,
    /// Largest non-stream upstream answer (and error document). Default 32 MiB; larger → the
    /// next deployment is tried.
    pub max_answer_bytes: usize,
    /// Reading the client's request body. Default 30 s.
    pub client_body_timeout: Duration,
    /// Reading one request head (line and headers), from its first byte. Default 10 s; past
    /// it the client gets 408 and the connection closes.
    pub client_header_timeout: Duration,
    /// An open client connection with no request on it: a new one that sends nothing, or a
    /// keep-alive one between requests. Default 60 s; past it the connection is closed
    /// quietly (pingora itself would keep an idle HTTP/1.1 keep-alive connection forever).
    pub client_idle_timeout: Duration,
}


/// Why one attempt at a deployment failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptFailure {
    /// TCP/TLS/DNS failure, or the connection closed before a response.
    Connect,
    /// This process is out of file descriptors (EMFILE/ENFILE): the connection could not even
    /// be opened. The gateway's failure, not the deployment's.
    NoDescriptors,
    /// No response headers within the first-byte timeout.
    Timeout,
    /// The request cannot be said in this deployment's API (a parameter Anthropic has no
    /// equivalent for): the client's doing, not the deployment's — not counted against it.
    Untranslatable(TranslateError),
    /// The upstream answered 429 or 5xx.
    Status { code: u16, retry_after: Option<u64> },
    /// A stream produced no content token within the model's TTFT timeout.
    TtftTimeout,
    /// A stream broke or sent garbage before its first content token.
    EarlyStreamFailure,
    /// A 2xx answer the client could not use: a non-stream body that is not a JSON object
    /// (garbage, an HTML page, empty), or a stream request answered without
    /// `text/event-stream`.
    UnreadableAnswer,
    /// The connection failed while a non-stream body was being read.
    BrokenAnswer,
    /// A non-stream body did not arrive whole within the request timeout.
    AnswerTimeout,
    /// A non-stream body larger than `max_answer_bytes` (the limit).
    AnswerTooLarge { limit: usize },
}

impl AttemptFailure {
    /// Closed-set metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptFailure::Connect => "connect",
            AttemptFailure::NoDescriptors => "no_descriptors",
            AttemptFailure::Timeout => "timeout",
            AttemptFailure::Untranslatable(_) => "untranslatable",
            AttemptFailure::Status { code: 429, .. } => "status_429",
            AttemptFailure::Status { .. } => "status_5xx",
            AttemptFailure::TtftTimeout => "ttft_timeout",
            AttemptFailure::EarlyStreamFailure => "early_stream_failure",
            AttemptFailure::UnreadableAnswer => "unreadable_answer",
            AttemptFailure::BrokenAnswer => "broken_answer",
            AttemptFailure::AnswerTimeout => "answer_timeout",
            AttemptFailure::AnswerTooLarge { .. } => "answer_too_large",
        }
    }

    fn describe(&self) -> String {
        match self {
            AttemptFailure::Connect => "connection failed".into(),
            AttemptFailure::NoDescriptors => "out of file descriptors".into(),
            AttemptFailure::Timeout => "no response in time".into(),
            AttemptFailure::Untranslatable(e) => e.to_string(),
            AttemptFailure::Status { code, .. } => format!("HTTP {code}"),
            AttemptFailure::TtftTimeout => "no first token in time".into(),
            AttemptFailure::EarlyStreamFailure => "stream failed before the first token".into(),
            AttemptFailure::UnreadableAnswer => "unreadable answer".into(),
            AttemptFailure::BrokenAnswer => "connection failed while sending the answer".into(),
            AttemptFailure::AnswerTimeout => "answer not complete in time".into(),
            AttemptFailure::AnswerTooLarge { limit } => format!("answer larger than the limit of {limit} bytes"),
        }
    }

    fn is_timeout(&self) -> bool {
        matches!(self, AttemptFailure::Timeout | AttemptFailure::TtftTimeout | AttemptFailure::AnswerTimeout)
    }
}

/// A failed attempt: the deployment's index in the model, what went wrong and how long after
/// sending it was given up.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub deployment: usize,
    pub failure: AttemptFailure,
    pub elapsed: Duration,
}

/// The body of an answer.
pub enum AnswerBody {
    /// A complete (non-SSE) answer, read whole: a JSON document for a 2xx, the upstream's
    /// error document as sent for any other status; `doc` is the body parsed (once, here), if
    /// it is JSON.
    Full { bytes: Bytes, doc: Option<Chunk> },
    /// An SSE stream: the events read before the first content token (held back until the
    /// deployment proved it answers), and the rest of the stream.
    Stream { prefetched: Vec<Decoded>, decoder: Box<StreamDecoder>, rest: BodyStream },
}

/// The upstream that answered.
pub struct Answer {
    /// Index into the model's deployments.
    pub deployment: usize,
    /// Position in the ranking (0 = first choice).
    pub rank: usize,
    pub status: u16,
    pub content_type: String,
    pub body: AnswerBody,
    /// The body (or its events) is in the client's own API as the provider sent it (an
    /// Anthropic client answered by an Anthropic deployment), not in the OpenAI form.
    pub native: bool,
    /// When the request was sent to this deployment.
    pub sent_at: Instant,
    /// When its first content token arrived (streams).
    pub first_token_at: Option<Instant>,
    /// Its telemetry, for recording the rest of the exchange.
    pub stats: Option<Arc<DeploymentStats>>,
    _in_flight: Option<InFlightGuard>,
}

/// What [`send`] needs besides the request.
pub struct Route<'a> {
    pub clients: &'a Clients,
    pub catalog: &'a Catalog,
    pub telemetry: &'a Telemetry,
    pub model: &'a Model,
    pub model_index: usize,
    pub first_byte_timeout: Duration,
    /// Limit on a whole non-stream answer, from sending the request.
    pub request_timeout: Duration,
    /// Largest non-stream answer.
    pub max_answer_bytes: usize,
    /// Limit on the first content token of a stream, from sending the request.
    pub ttft_timeout: Duration,
    pub request_id: &'a str,
    /// The client's `anthropic-beta` header, passed to Anthropic providers.
    pub anthropic_beta: Option<&'a str>,
    /// The client's own Messages request when it spoke Anthropic (`POST /v1/messages`): sent
    /// as-is (model replaced) to deployments that speak Anthropic, whose answers then pass
    /// through natively; deployments that speak OpenAI get the chat form.
    pub native: Option<NativeRequest<'a>>,
}

/// A client request in a provider's own API, beside its chat form.
#[derive(Clone, Copy)]
pub struct NativeRequest<'a> {
    /// The body as the client sent it.
    pub body: &'a [u8],
    /// Its conversion (model span, what the chat form cannot carry).
    pub inbound: &'a Inbound,
}

/// A send error: [`AttemptFailure::NoDescriptors`] when an OS error in its chain says this
/// process (EMFILE) or the system (ENFILE) has no file descriptor left, else `Connect`.
fn connect_failure(e: &(dyn std::error::Error + 'static)) -> AttemptFailure {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(EMFILE | ENFILE)) {
                return AttemptFailure::NoDescriptors;
            }
        }
        cur = err.source();
    }
    AttemptFailure::Connect
}

/// Logs that the process ran out of descriptors, at most once a second.
fn descriptors_exhausted(request_id: &str) {
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = crate::clock::now_ms() / 1000;
    if LAST.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
        tracing::error!(request_id, "out of file descriptors: upstream connection not opened; raise the process limit (LimitNOFILE; two per proxied stream)");
    }
}

/// A piece of an answer's body that could not be read; `timeout` when a client's own timer
/// ended it.
#[derive(Debug)]
pub struct BodyError {
    pub timeout: bool,
}

/// The rest of a streamed answer.
pub type BodyStream = BoxStream<'static, Result<Bytes, BodyError>>;

/// An upstream's answer, its head read, from either client.
enum Reply {
    Plain(h1::Response),
    Pooled(reqwest::Response),
}

impl Reply {
    fn status(&self) -> u16 {
        match self {
            Reply::Plain(r) => r.status,
            Reply::Pooled(r) => r.status().as_u16(),
        }
    }

    fn content_type(&self) -> Option<&str> {
        match self {
            Reply::Plain(r) => r.content_type.as_deref(),
            Reply::Pooled(r) => r.headers().get(CONTENT_TYPE)?.to_str().ok(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        let value = match self {
            Reply::Plain(r) => r.retry_after.as_deref()?,
            Reply::Pooled(r) => r.headers().get("retry-after")?.to_str().ok()?,
        };
        value.trim().parse().ok()
    }

    fn content_length(&self) -> Option<u64> {
        match self {
            Reply::Plain(r) => r.content_length,
            Reply::Pooled(r) => r.content_length(),
        }
    }

    async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        match self {
            Reply::Plain(r) => r.chunk().await.map_err(|_| BodyError { timeout: false }),
            Reply::Pooled(r) => r.chunk().await.map_err(|e| BodyError { timeout: e.is_timeout() }),
        }
    }

    fn into_stream(self) -> BodyStream {
        match self {
            Reply::Plain(r) => r.into_stream().map(|c| c.map_err(|_| BodyError { timeout: false })).boxed(),
            Reply::Pooled(r) => r.bytes_stream().map(|c| c.map_err(|e| BodyError { timeout: e.is_timeout() })).boxed(),
        }
    }
}

/// Tries the ranked deployments in order; calls `on_failure` for every failed attempt (the
/// caller records it in telemetry and metrics: this module only reads the breakers).
///
/// # Errors
/// When every deployment failed: 504 if all timed out, 503 if all refused with 429/503
/// (with the smallest `retry-after` seen), 502 otherwise. Messages name deployments, never
/// URLs or credentials.
pub async fn send(
    route: &Route<'_>,
    decision: &RouteDecision,
    request: &ChatRequest,
    body: &[u8],
    on_failure: &mut (dyn FnMut(&Attempt) + Send),
) -> Result<Answer, ApiError> {
    let mut attempts: Vec<Attempt> = Vec::new();
    let settings = &route.telemetry.settings;
    for (rank, (cand, _)) in decision.ranked.iter().enumerate() {
        let Some(dep) = route.model.deployments.get(cand.deployment) else { continue };
        let stats = if settings.enabled { route.telemetry.get(route.model_index, cand.deployment) } else { None };
        if let Some(st) = stats {
            match st.admit() {
                Admission::Allowed | Admission::Trial => {}
                // Routing admits an open deployment only when every deployment is open.
                Admission::Refused if decision.ranked.len() == 1 => st.force_trial(),
                Admission::Refused => continue,
            }
        }
        let guard = stats.map(|s| s.begin());
        let sent_at = Instant::now();
        let failure = match attempt(route, cand.deployment, dep, request, body, sent_at).await {
            Ok((status, content_type, body, first_token_at, native)) => {
                return Ok(Answer {
                    native,
                    deployment: cand.deployment,
                    rank,
                    status,
                    content_type,
                    body,
                    sent_at,
                    first_token_at,
                    stats: stats.cloned(),
                    _in_flight: guard,
                });
            }
            Err(f) => f,
        };
        if failure == AttemptFailure::NoDescriptors {
            // Every other deployment would fail the same way, and none of them is at fault:
            // nothing is reported against their health.
            descriptors_exhausted(route.request_id);
            return Err(ApiError::DescriptorsExhausted);
        }
        let attempt = Attempt { deployment: cand.deployment, failure, elapsed: sent_at.elapsed() };
        if !matches!(attempt.failure, AttemptFailure::Untranslatable(_)) {
            tracing::warn!(request_id = route.request_id, deployment = %dep.id, failure = attempt.failure.describe(), "upstream attempt failed");
            on_failure(&attempt);
        }
        attempts.push(attempt);
    }
    Err(all_failed(route.model, &attempts))
}

type AttemptOk = (u16, String, AnswerBody, Option<Instant>, bool);

/// How one deployment is spoken to.
enum Wire<'a> {
    OpenAi,
    /// Anthropic Messages; `forced_json_tool` when `response_format` became a forced tool.
    Anthropic { version: &'a str, forced_json_tool: Option<String> },
    /// Anthropic Messages from an Anthropic client: its body and the answer pass through.
    AnthropicNative { version: &'a str },
}

impl Wire<'_> {
    fn version(&self) -> Option<&str> {
        match self {
            Wire::OpenAi => None,
            Wire::Anthropic { version, .. } | Wire::AnthropicNative { version } => Some(version),
        }
    }
}

fn unix_now() -> u64 {
    u64::try_from(crate::clock::now_ms() / 1000).unwrap_or(0)
}

async fn attempt(
    route: &Route<'_>,
    index: usize,
    dep: &crate::catalog::Deployment,
    request: &ChatRequest,
    body: &[u8],
    sent_at: Instant,
) -> Result<AttemptOk, AttemptFailure> {
    let (_, key) = route.catalog.endpoint_of(dep);
    let url = route.clients.chat_url(route.model_index, index).ok_or(AttemptFailure::Connect)?;
    let (wire, upstream_body) = match (route.catalog.provider_of(dep).map(|p| &p.api), route.native) {
        (Some(ProviderApi::Anthropic { version }), Some(native)) => {
            (Wire::AnthropicNative { version }, anthropic::inbound::with_model(native.body, &native.inbound.model_span, &dep.upstream_model))
        }
        (_, Some(NativeRequest { inbound: Inbound { unsupported: Some(e), .. }, .. })) => {
            return Err(AttemptFailure::Untranslatable(e.clone()));
        }
        (Some(ProviderApi::Anthropic { version }), None) => {
            let max_tokens = match dep.kind {
                DeploymentKind::Provider { default_max_tokens, .. } => default_max_tokens,
                DeploymentKind::Hosted { .. } => 4096,
            };
            let r = anthropic::request_to_anthropic(body, &dep.upstream_model, max_tokens).map_err(AttemptFailure::Untranslatable)?;
            (Wire::Anthropic { version, forced_json_tool: r.forced_json_tool }, r.body)
        }
        (_, _) => (Wire::OpenAi, request.upstream_body(body, &dep.upstream_model)),
    };
    let accept = if request.stream { "text/event-stream" } else { "application/json" };
    let mut headers: Vec<(&'static str, &str)> = Vec::with_capacity(6);
    headers.extend([("content-type", "application/json"), ("accept", accept), ("x-request-id", route.request_id)]);
    let bearer: String;
    match wire.version() {
        None => {
            if let Some(k) = key {
                bearer = format!("Bearer {}", k.expose());
                headers.push(("authorization", &bearer));
            }
        }
        Some(version) => {
            headers.push(("anthropic-version", version));
            if let Some(k) = key {
                headers.push(("x-api-key", k.expose()));
            }
            if let Some(beta) = route.anthropic_beta {
                headers.push(("anthropic-beta", beta));
            }
        }
    }
    let exchange = async {
        match route.clients.plain(route.model_index, index) {
            Some(target) => {
                let head = h1::RequestHead::post(&target.origin, &target.path, &headers, upstream_body.len()).map_err(|_| AttemptFailure::Connect)?;
                target.origin.send(head, Bytes::from(upstream_body)).await.map(Reply::Plain).map_err(|e| match e.io() {
                    Some(io) => connect_failure(io),
                    None => AttemptFailure::Connect,
                })
            }
            None => {
                let mut rb = route.clients.for_deployment(dep).post(url.clone()).body(upstream_body);
                for (name, value) in &headers {
                    rb = rb.header(*name, *value);
                }
                match rb.send().await {
                    Ok(resp) => Ok(Reply::Pooled(resp)),
                    Err(e) if e.is_timeout() => Err(AttemptFailure::Timeout),
                    Err(e) => Err(connect_failure(&e)),
                }
            }
        }
    };
    let resp = match tokio::time::timeout(route.first_byte_timeout, exchange).await {
        Err(_) => return Err(AttemptFailure::Timeout),
        Ok(r) => r?,
    };
    let status = resp.status();
    if status == 429 || status >= 500 {
        return Err(AttemptFailure::Status { code: status, retry_after: resp.retry_after() });
    }
    let content_type = resp.content_type().unwrap_or("application/json").to_string();
    let success = (200..300).contains(&status);
    let sse = content_type.starts_with("text/event-stream");
    if request.stream && success && !sse {
        return Err(AttemptFailure::UnreadableAnswer);
    }
    if !(request.stream && sse) {
        let deadline = tokio::time::Instant::from_std(sent_at + route.request_timeout);
        let bytes = read_answer(resp, route.max_answer_bytes, deadline).await?;
        let (bytes, content_type, doc) = match &wire {
            Wire::OpenAi => {
                let doc = parse_answer(&bytes, success)?;
                (bytes, content_type, doc)
            }
            // Read through its conversion, which checks it as strictly as a converted answer.
            Wire::AnthropicNative { .. } => {
                let doc = match success {
                    // The spans of the conversion are not the answer's: only its usage counts.
                    true => anthropic::response_from_anthropic(&bytes, None, 0).ok().and_then(|c| read_doc(&c)).map(|d| Chunk { model: None, usage_at: None, ..d }),
                    false => None,
                };
                if success && doc.is_none() {
                    return Err(AttemptFailure::UnreadableAnswer);
                }
                (bytes, content_type, doc)
            }
            Wire::Anthropic { forced_json_tool, .. } => {
                let converted = if success {
                    anthropic::response_from_anthropic(&bytes, forced_json_tool.as_deref(), unix_now())
                        .map_err(|_| AttemptFailure::UnreadableAnswer)?
                } else {
                    anthropic::error_from_anthropic(status, &bytes)
                };
                let doc = parse_answer(&converted, success)?;
                (Bytes::from(converted), "application/json".to_string(), doc)
            }
        };
        let native = matches!(wire, Wire::AnthropicNative { .. });
        return Ok((status, content_type, AnswerBody::Full { bytes, doc }, None, native));
    }
    // Hold the stream back until its first content token (or its end): until then the client
    // has seen nothing and another deployment can still take over.
    let deadline = tokio::time::Instant::from_std(sent_at + route.ttft_timeout);
    let mut rest = resp.into_stream();
    let native = matches!(wire, Wire::AnthropicNative { .. });
    let mut decoder = match wire {
        Wire::OpenAi => StreamDecoder::openai(),
        Wire::Anthropic { forced_json_tool, .. } => StreamDecoder::anthropic(StreamConverter::new(unix_now(), forced_json_tool)),
        Wire::AnthropicNative { .. } => StreamDecoder::anthropic_native(StreamConverter::new(unix_now(), None)),
    };
    let mut prefetched = Vec::new();
    // Complete events held back are bounded like one event (the unfinished one is bounded by
    // the parser): an upstream that streams endless events without content (role-only
    // deltas, comments) is committed to, not buffered until the TTFT deadline.
    let mut held = 0usize;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, rest.next()).await {
            Err(_) => return Err(AttemptFailure::TtftTimeout),
            Ok(None) | Ok(Some(Err(_))) => return Err(AttemptFailure::EarlyStreamFailure),
            Ok(Some(Ok(c))) => c,
        };
        let before = prefetched.len();
        if decoder.feed(&chunk, &mut prefetched).is_err() {
            return Err(AttemptFailure::EarlyStreamFailure);
        }
        for d in &prefetched[before..] {
            held += d.len();
            let Some(class) = &d.class else { continue };
            match class {
                StreamEvent::Done => return Ok((status, content_type, AnswerBody::Stream { prefetched, decoder: Box::new(decoder), rest }, None, native)),
                StreamEvent::Malformed => return Err(AttemptFailure::EarlyStreamFailure),
                StreamEvent::Chunk(c) if c.error => return Err(AttemptFailure::EarlyStreamFailure),
                StreamEvent::Chunk(c) if c.content => {
                    let first = Some(Instant::now());
                    return Ok((status, content_type, AnswerBody::Stream { prefetched, decoder: Box::new(decoder), rest }, first, native));
                }
                StreamEvent::Chunk(_) => {}
            }
        }
        if held > crate::api::sse::DEFAULT_MAX_EVENT {
            return Ok((status, content_type, AnswerBody::Stream { prefetched, decoder: Box::new(decoder), rest }, None, native));
        }
    }
}

/// Forwards an Anthropic client's `POST /v1/messages/count_tokens` body (model replaced) to
/// the first deployment of the route's model that speaks Anthropic, with that provider's
/// credentials and version (and the client's `anthropic-beta`), and returns its status and
/// body as sent. `None` when no deployment of the model speaks Anthropic.
///
/// # Errors
/// The deployment could not be reached, or did not answer whole within the request timeout
/// or the answer size limit.
pub async fn count_tokens(route: &Route<'_>, body: &[u8], model_span: &std::ops::Range<usize>) -> Option<Result<(u16, Bytes), AttemptFailure>> {
    let (index, dep, version) = route.model.deployments.iter().enumerate().find_map(|(i, d)| match route.catalog.provider_of(d).map(|p| &p.api) {
        Some(ProviderApi::Anthropic { version }) => Some((i, d, version)),
        _ => None,
    })?;
    let url = route.clients.chat_url(route.model_index, index)?.as_str().to_string() + "/count_tokens";
    let (_, key) = route.catalog.endpoint_of(dep);
    let mut rb = route
        .clients
        .for_deployment(dep)
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header("anthropic-version", version.as_str())
        .header("x-request-id", route.request_id)
        .body(anthropic::inbound::with_model(body, model_span, &dep.upstream_model));
    if let Some(k) = key {
        rb = rb.header("x-api-key", k.expose());
    }
    if let Some(beta) = route.anthropic_beta {
        rb = rb.header("anthropic-beta", beta);
    }
    let sent_at = Instant::now();
    let resp = match tokio::time::timeout(route.first_byte_timeout, rb.send()).await {
        Err(_) => return Some(Err(AttemptFailure::Timeout)),
        Ok(Err(e)) => return Some(Err(connect_failure(&e))),
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let deadline = tokio::time::Instant::from_std(sent_at + route.request_timeout);
    Some(read_answer(Reply::Pooled(resp), route.max_answer_bytes, deadline).await.map(|b| (status, b)))
}

/// Reads a whole non-stream body, at most `limit` bytes, by `deadline`.
async fn read_answer(mut resp: Reply, limit: usize, deadline: tokio::time::Instant) -> Result<Bytes, AttemptFailure> {
    let too_large = AttemptFailure::AnswerTooLarge { limit };
    let declared = resp.content_length().map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    // A declared length is a promise, not a fact: reserve at most 64 KiB up front.
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(64 * 1024));
    loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Err(_) => return Err(AttemptFailure::AnswerTimeout),
            Ok(Err(e)) if e.timeout => return Err(AttemptFailure::AnswerTimeout),
            Ok(Err(_)) => return Err(AttemptFailure::BrokenAnswer),
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(too_large);
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// What joule reads of the answer, if it is a JSON object. A 2xx answer must be one (what a
/// chat completion is); other statuses pass through whatever they hold.
fn parse_answer(bytes: &[u8], success: bool) -> Result<Option<Chunk>, AttemptFailure> {
    let doc = read_doc(bytes);
    if success && doc.is_none() {
        return Err(AttemptFailure::UnreadableAnswer);
    }
    Ok(doc)
}

fn all_failed(model: &Model, attempts: &[Attempt]) -> ApiError {
    // A request no remaining deployment could even be sent to is the client's to fix: answer
    // as the provider would, 400 naming the parameter.
    if !attempts.is_empty() && attempts.iter().all(|a| matches!(a.failure, AttemptFailure::Untranslatable(_))) {
        if let Some(AttemptFailure::Untranslatable(e)) = attempts.first().map(|a| &a.failure) {
            let code = match e {
                TranslateError::Unsupported { .. } => Some("unsupported_parameter"),
                _ => None,
            };
            return ApiError::InvalidRequest { message: e.to_string(), param: None, code };
        }
    }
    let detail: Vec<String> = attempts
        .iter()
        .map(|a| {
            let id = model.deployments.get(a.deployment).map_or("?", |d| d.id.as_str());
            format!("{id}: {}", a.failure.describe())
        })
        .collect();
    let message = if attempts.is_empty() {
        format!("No deployment of `{}` is available right now.", model.id)
    } else {
        format!("All deployments of `{}` failed ({}).", model.id, detail.join("; "))
    };
    let all = |f: &dyn Fn(&AttemptFailure) -> bool| !attempts.is_empty() && attempts.iter().all(|a| f(&a.failure));
    if all(&|f| f.is_timeout()) {
        ApiError::UpstreamTimeout { message }
    } else if attempts.is_empty() || all(&|f| matches!(f, AttemptFailure::Status { code: 429 | 503, .. })) {
        let retry_after = attempts
            .iter()
            .filter_map(|a| match a.failure {
                AttemptFailure::Status { retry_after, .. } => retry_after,
                _ => None,
            })
            .min();
        ApiError::UpstreamUnavailable { message, retry_after }
    } else {
        ApiError::UpstreamFailed { message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response whose body arrives as `chunks` (no declared length), then ends, breaks or
    /// stalls.
    fn streamed(chunks: &[&'static [u8]], end: &'static str) -> Reply {
        let items: Vec<std::io::Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        let tail = futures_util::stream::once(async move {
            match end {
                "break" => Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")),
                "stall" => std::future::pending::<std::io::Result<Bytes>>().await,
                _ => Ok(Bytes::new()),
            }
        });
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(items).chain(tail));
        Reply::Pooled(reqwest::Response::from(http::Response::new(body)))
    }

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(200)
    }

    #[tokio::test]
    async fn reads_a_whole_answer_within_the_limit() {
        let got = read_answer(streamed(&[b"{\"a\":", b" 1}"], "end"), 10, soon()).await;
        assert_eq!(got, Ok(Bytes::from_static(b"{\"a\": 1}")));
        let exact = Reply::Pooled(reqwest::Response::from(http::Response::new(reqwest::Body::from(vec![b'x'; 10]))));
        assert_eq!(read_answer(exact, 10, soon()).await.map(|b| b.len()), Ok(10));
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_fails_declared_or_not() {
        let declared = Reply::Pooled(reqwest::Response::from(http::Response::new(reqwest::Body::from(vec![b'x'; 11]))));
        assert_eq!(read_answer(declared, 10, soon()).await, Err(AttemptFailure::AnswerTooLarge { limit: 10 }));
        // Without a length, the chunk that crosses the limit fails it, before the rest arrives.
        let undeclared = streamed(&[b"123456", b"789012"], "stall");
        assert_eq!(read_answer(undeclared, 10, soon()).await, Err(AttemptFailure::AnswerTooLarge { limit: 10 }));
    }

    #[test]
    fn only_a_json_object_is_a_readable_answer() {
        for ok in [&b"{}"[..], b" \r\n{\"choices\":[]}\n"] {
            assert!(parse_answer(ok, true).is_ok_and(|d| d.is_some()), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [&b""[..], b"   ", b"{{{garbage", b"<html><body>502</body></html>", b"[]", b"\"ok\"", b"1", b"null", b"{\"a\":1", b"{} {}"] {
            assert_eq!(parse_answer(bad, true), Err(AttemptFailure::UnreadableAnswer), "{}", String::from_utf8_lossy(bad));
            assert!(parse_answer(bad, false).is_ok(), "an error document passes through");
        }
    }

    #[tokio::test]
    async fn a_broken_or_stalled_answer_fails() {
        assert_eq!(read_answer(streamed(&[b"{\"a\""], "break"), 100, soon()).await, Err(AttemptFailure::BrokenAnswer));
        let started = Instant::now();
        assert_eq!(read_answer(streamed(&[b"{\"a\""], "stall"), 100, soon()).await, Err(AttemptFailure::AnswerTimeout));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn answer_timeouts_count_as_timeouts_and_labels_are_distinct() {
        assert!(AttemptFailure::AnswerTimeout.is_timeout());
        assert!(!AttemptFailure::BrokenAnswer.is_timeout() && !AttemptFailure::UnreadableAnswer.is_timeout());
        let labels = [
            AttemptFailure::UnreadableAnswer.label(),
            AttemptFailure::BrokenAnswer.label(),
            AttemptFailure::AnswerTimeout.label(),
            AttemptFailure::AnswerTooLarge { limit: 1 }.label(),
        ];
        assert_eq!(labels, ["unreadable_answer", "broken_answer", "answer_timeout", "answer_too_large"]);
    }
}
