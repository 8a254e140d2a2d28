//! The OpenAI-compatible surface of the mock upstream: routing, bearer authentication, the
//! failure modes, and the generation of `chat.completion` objects and SSE
//! `chat.completion.chunk` streams on a schedule derived from the [`MockConfig`].

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::config::{Failure, MockConfig};
use super::http::{full_response, response_head, Conn, Request, ResponseBody};
use super::server::Shared;

const CHAT_PATH: &str = "/v1/chat/completions";
const MODELS_PATH: &str = "/v1/models";
const CONTENT_TYPE_JSON: (&str, &str) = ("content-type", "application/json");
/// Upper bound on any simulated delay, so absurd configurations cannot overflow a deadline.
const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// What to do with the connection after a response.
enum Next {
    /// Serve the next request, if the client allows it.
    KeepAlive,
    /// Close the connection in an orderly way (TLS `close_notify`, FIN).
    Close,
    /// Drop the connection on the spot, as a crashing backend would.
    Abort,
}

/// Serves HTTP/1.1 requests on one connection until the client leaves, a response requires
/// closing, or the transport fails.
pub(crate) async fn serve_connection<S>(io: S, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn::new(io);
    loop {
        let request = match conn.read_request().await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "mock upstream: unreadable request");
                if let Some(status) = e.status() {
                    let error = ApiError::invalid_request(status, e.to_string());
                    if error.send(&mut conn, &[], false).await.is_ok() {
                        close(&mut conn).await;
                    }
                }
                return;
            }
        };
        let cfg = shared.config();
        match respond(&mut conn, &request, &cfg, shared).await {
            Ok(Next::KeepAlive) if request.keep_alive => {}
            Ok(Next::KeepAlive | Next::Close) => return close(&mut conn).await,
            Ok(Next::Abort) => return,
            Err(e) => {
                tracing::debug!(error = %e, "mock upstream: connection failed");
                return;
            }
        }
    }
}

async fn close<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) {
    if let Err(e) = conn.shutdown().await {
        tracing::debug!(error = %e, "mock upstream: shutdown failed");
    }
}

async fn respond<S>(
    conn: &mut Conn<S>,
    request: &Request,
    cfg: &MockConfig,
    shared: &Shared,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let route = (request.method.as_str(), request.path());
    if route == ("POST", CHAT_PATH) {
        shared.count_request();
    }
    shared.record(request);
    if cfg.failure == Failure::Refuse {
        return Ok(Next::Abort);
    }
    let keep_alive = request.keep_alive;
    if let Some(token) = &cfg.require_bearer {
        if !bearer_matches(request, token) {
            ApiError::invalid_api_key()
                .send(conn, &[], keep_alive)
                .await?;
            return Ok(Next::KeepAlive);
        }
    }
    match route {
        ("POST", CHAT_PATH) => chat(conn, request, cfg).await,
        ("GET", MODELS_PATH) => {
            let body = models(cfg).to_string();
            let response = full_response(200, &[CONTENT_TYPE_JSON], body.as_bytes(), keep_alive);
            conn.write(&response).await?;
            Ok(Next::KeepAlive)
        }
        (method, _) => {
            ApiError::unknown_url(method, &request.target)
                .send(conn, &[], keep_alive)
                .await?;
            Ok(Next::KeepAlive)
        }
    }
}

fn bearer_matches(request: &Request, expected: &str) -> bool {
    crate::api::bearer::bearer_token(request.header("authorization").map(str::as_bytes)).is_ok_and(|token| token == expected)
}

fn models(cfg: &MockConfig) -> Value {
    let created = unix_now();
    let data: Vec<Value> = cfg
        .models
        .iter()
        .map(
            |id| json!({"id": id, "object": "model", "created": created, "owned_by": "joule-mock"}),
        )
        .collect();
    json!({"object": "list", "data": data})
}

/// The fields of a chat-completion request the mock looks at; everything else is ignored.
#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

async fn chat<S>(conn: &mut Conn<S>, request: &Request, cfg: &MockConfig) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let keep_alive = request.keep_alive;
    let parsed: ChatRequest = match serde_json::from_slice(&request.body) {
        Ok(parsed) => parsed,
        Err(e) => {
            let message = format!("We could not parse the JSON body of your request: {e}");
            ApiError::invalid_request(400, message)
                .send(conn, &[], keep_alive)
                .await?;
            return Ok(Next::KeepAlive);
        }
    };
    match cfg.failure {
        Failure::Status500 => {
            ApiError::server_error().send(conn, &[], keep_alive).await?;
            return Ok(Next::KeepAlive);
        }
        Failure::Status429 { retry_after_s } => {
            let retry_after = retry_after_s.to_string();
            ApiError::rate_limited()
                .send(conn, &[("retry-after", &retry_after)], keep_alive)
                .await?;
            return Ok(Next::KeepAlive);
        }
        Failure::SlowHeaders { delay_ms } => {
            wait_until(deadline(Instant::now(), Duration::from_millis(delay_ms))).await;
        }
        Failure::HtmlAnswer => {
            let page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>";
            let headers = [("content-type", "text/html; charset=utf-8")];
            conn.write(&full_response(200, &headers, page, keep_alive)).await?;
            return Ok(Next::KeepAlive);
        }
        Failure::EmptyAnswer => {
            conn.write(&full_response(200, &[CONTENT_TYPE_JSON], b"", keep_alive)).await?;
            return Ok(Next::KeepAlive);
        }
        Failure::None
        | Failure::Refuse
        | Failure::DropMidStream { .. }
        | Failure::GarbageSse { .. }
        | Failure::TruncatedAnswer { .. }
        | Failure::SilentBody
        | Failure::EndlessEvent { .. } => {}
    }
    let completion = Completion {
        id: format!("chatcmpl-mock{:016x}", rand::random::<u64>()),
        created: unix_now(),
        model: parsed.model,
        tokens: cfg.tokens,
        prompt_tokens: u64::try_from(request.body.len() / 4)
            .unwrap_or(u64::MAX)
            .max(1),
        include_usage: parsed
            .stream_options
            .and_then(|options| options.include_usage)
            .unwrap_or(false),
        reported_usage: cfg.reported_usage.clone(),
    };
    if parsed.stream.unwrap_or(false) {
        stream(conn, &completion, cfg, keep_alive).await
    } else {
        complete(conn, &completion, cfg, keep_alive).await
    }
}

/// Non-streaming answer: wait for the whole generation, then send one `chat.completion`.
async fn complete<S>(
    conn: &mut Conn<S>,
    completion: &Completion,
    cfg: &MockConfig,
    keep_alive: bool,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let generation = Duration::from_millis(cfg.ttft_ms)
        .saturating_add(decode_time(cfg.tokens, cfg.tokens_per_s));
    wait_until(deadline(Instant::now(), generation)).await;
    let body = match cfg.failure {
        Failure::GarbageSse { .. } => b"{{{garbage".to_vec(),
        _ => completion.response().to_string().into_bytes(),
    };
    let head = || {
        response_head(
            200,
            &[CONTENT_TYPE_JSON],
            ResponseBody::Length(body.len()),
            keep_alive,
        )
    };
    match cfg.failure {
        Failure::DropMidStream { .. } => {
            conn.write(&head()).await?;
            return Ok(Next::Abort);
        }
        Failure::TruncatedAnswer { sent_bytes } => {
            let sent = usize::try_from(sent_bytes)
                .unwrap_or(usize::MAX)
                .min(body.len().saturating_sub(1));
            let mut partial = head();
            partial.extend_from_slice(&body[..sent]);
            conn.write(&partial).await?;
            return Ok(Next::Abort);
        }
        Failure::SilentBody => {
            conn.write(&head()).await?;
            wait_until(deadline(Instant::now(), MAX_DELAY)).await;
            return Ok(Next::Abort);
        }
        _ => {}
    }
    conn.write(&full_response(200, &[CONTENT_TYPE_JSON], &body, keep_alive))
        .await?;
    Ok(Next::KeepAlive)
}

/// Streaming answer: role chunk at once, content chunk `i` at `ttft + i / tokens_per_s` after
/// the headers, then the finish chunk, the optional usage chunk and `[DONE]`.
async fn stream<S>(
    conn: &mut Conn<S>,
    completion: &Completion,
    cfg: &MockConfig,
    keep_alive: bool,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cutoff = match cfg.failure {
        Failure::DropMidStream { after_tokens }
        | Failure::GarbageSse { after_tokens }
        | Failure::EndlessEvent { after_tokens } => Some(after_tokens),
        _ => None,
    };
    // The garbage case ends the body cleanly and then closes; announce it so pooling clients
    // do not race the close.
    let keep_alive = keep_alive && !matches!(cfg.failure, Failure::GarbageSse { .. });
    let headers = [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
    ];
    conn.write(&response_head(
        200,
        &headers,
        ResponseBody::Chunked,
        keep_alive,
    ))
    .await?;
    if cfg.failure == Failure::SilentBody {
        wait_until(deadline(Instant::now(), MAX_DELAY)).await;
        return Ok(Next::Abort);
    }
    let start = Instant::now();
    let mut sse = SseWriter::new(cfg);

    sse.send_json(conn, &completion.role_chunk(), false).await?;
    let ttft = Duration::from_millis(cfg.ttft_ms);
    let interval = decode_time(1, cfg.tokens_per_s);
    let mut last_sent: Option<Instant> = None;
    for index in 0..cutoff.map_or(cfg.tokens, |n| n.min(cfg.tokens)) {
        let due = deadline(start, ttft.saturating_add(decode_time(index, cfg.tokens_per_s)));
        // Never catch up on a late token with a burst: a token is sent at least one decode
        // interval after the previous one, so the spacing clients see is guaranteed at the
        // source even on a loaded machine (the long-run rate then drifts slightly low).
        let due = last_sent.map_or(due, |prev| due.max(prev + interval.min(MAX_DELAY)));
        wait_until(due).await;
        last_sent = Some(Instant::now());
        sse.send_json(conn, &completion.content_chunk(index), true)
            .await?;
    }
    match cfg.failure {
        Failure::DropMidStream { .. } => return Ok(Next::Abort),
        Failure::GarbageSse { .. } => {
            sse.send_lines(conn, &["{{{garbage"]).await?;
            conn.finish_chunked().await?;
            return Ok(Next::Close);
        }
        Failure::EndlessEvent { .. } => {
            let line = format!("data: {}{}", "x".repeat(1018), cfg.sse_framing.eol());
            loop {
                // Ends with an error once the client has gone away.
                conn.write_chunk(line.as_bytes()).await?;
            }
        }
        _ => {}
    }
    sse.send_json(conn, &completion.finish_chunk(), false)
        .await?;
    if completion.include_usage {
        sse.send_json(conn, &completion.usage_chunk(), false)
            .await?;
    }
    sse.send_lines(conn, &["[DONE]"]).await?;
    conn.finish_chunked().await?;
    Ok(Next::KeepAlive)
}

/// Time to decode `tokens` tokens at `rate` tokens per second; zero for a non-positive or
/// non-finite rate.
fn decode_time(tokens: u32, rate: f64) -> Duration {
    if !(rate.is_finite() && rate > 0.0) {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(f64::from(tokens) / rate).unwrap_or(MAX_DELAY)
}

/// `start + offset`, with `offset` capped at [`MAX_DELAY`].
fn deadline(start: Instant, offset: Duration) -> Instant {
    start + offset.min(MAX_DELAY)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// One generated completion: everything needed to render it as a whole or as chunks.
struct Completion {
    id: String,
    created: u64,
    model: String,
    tokens: u32,
    prompt_tokens: u64,
    include_usage: bool,
    /// [`MockConfig::reported_usage`].
    reported_usage: Option<Value>,
}

impl Completion {
    /// Content token `index`: `tok0`, ` tok1`, ` tok2`, … (so the whole reads "tok0 tok1 …").
    fn token(index: u32) -> String {
        if index == 0 {
            "tok0".to_owned()
        } else {
            format!(" tok{index}")
        }
    }

    fn usage(&self) -> Value {
        if let Some(u) = &self.reported_usage {
            return u.clone();
        }
        let completion_tokens = u64::from(self.tokens);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(completion_tokens),
        })
    }

    /// The non-streaming `chat.completion` object.
    fn response(&self) -> Value {
        let content: String = (0..self.tokens).map(Self::token).collect();
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": self.usage(),
        })
    }

    /// A `chat.completion.chunk`; when usage was requested every chunk carries `usage`, `null`
    /// except in the final usage chunk (as OpenAI does).
    fn chunk(&self, choices: Value, usage: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            if let Some(fields) = chunk.as_object_mut() {
                fields.insert("usage".to_owned(), usage);
            }
        }
        chunk
    }

    fn delta_chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let choice = json!({
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        });
        self.chunk(json!([choice]), Value::Null)
    }

    fn role_chunk(&self) -> Value {
        self.delta_chunk(json!({"role": "assistant", "content": ""}), None)
    }

    fn content_chunk(&self, index: u32) -> Value {
        self.delta_chunk(json!({"content": Self::token(index)}), None)
    }

    fn finish_chunk(&self) -> Value {
        self.delta_chunk(json!({}), Some("stop"))
    }

    fn usage_chunk(&self) -> Value {
        self.chunk(json!([]), self.usage())
    }
}

/// Writes SSE events, one HTTP chunk per event, each flushed on its own.
struct SseWriter {
    eol: &'static str,
    comments: bool,
    multiline: bool,
    events: usize,
}

impl SseWriter {
    fn new(cfg: &MockConfig) -> Self {
        Self {
            eol: cfg.sse_framing.eol(),
            comments: cfg.sse_comments,
            multiline: cfg.multiline_data,
            events: 0,
        }
    }

    /// Sends `value` as one event; with `split` and multi-line data configured, across two
    /// `data:` lines.
    async fn send_json<S>(
        &mut self,
        conn: &mut Conn<S>,
        value: &Value,
        split: bool,
    ) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let data = value.to_string();
        match split_point(&data).filter(|_| split && self.multiline) {
            Some(at) => {
                let (first, second) = data.split_at(at);
                self.send_lines(conn, &[first, second]).await
            }
            None => self.send_lines(conn, &[&data]).await,
        }
    }

    /// Sends one event made of the given `data:` lines (none may contain a line break),
    /// preceded by a `: keep-alive` comment block if configured and this is not the first event.
    async fn send_lines<S>(&mut self, conn: &mut Conn<S>, lines: &[&str]) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let eol = self.eol;
        if self.comments && self.events > 0 {
            conn.write_chunk(format!(": keep-alive{eol}{eol}").as_bytes())
                .await?;
        }
        let mut event = String::new();
        for line in lines {
            event.push_str("data: ");
            event.push_str(line);
            event.push_str(eol);
        }
        event.push_str(eol);
        conn.write_chunk(event.as_bytes()).await?;
        self.events += 1;
        Ok(())
    }
}

/// A byte offset just after a `,` outside any JSON string, as close to the middle of `json` as
/// possible: splitting there and re-joining with `\n` yields equivalent JSON.
fn split_point(json: &str) -> Option<usize> {
    let middle = json.len() / 2;
    let mut best: Option<usize> = None;
    let (mut in_string, mut escaped) = (false, false);
    for (i, byte) in json.bytes().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else if byte == b',' {
            let candidate = i + 1;
            if best.is_none_or(|b| candidate.abs_diff(middle) < b.abs_diff(middle)) {
                best = Some(candidate);
            }
        }
    }
    best
}

/// An OpenAI-shaped error response.
struct ApiError {
    status: u16,
    message: String,
    kind: &'static str,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid_request(status: u16, message: String) -> Self {
        Self {
            status,
            message,
            kind: "invalid_request_error",
            code: None,
        }
    }

    fn invalid_api_key() -> Self {
        Self {
            status: 401,
            message: "Incorrect API key provided.".to_owned(),
            kind: "invalid_request_error",
            code: Some("invalid_api_key"),
        }
    }

    fn unknown_url(method: &str, target: &str) -> Self {
        Self {
            status: 404,
            message: format!("Unknown request URL: {method} {target}."),
            kind: "invalid_request_error",
            code: Some("unknown_url"),
        }
    }

    fn server_error() -> Self {
        Self {
            status: 500,
            message: "The server had an error while processing your request.".to_owned(),
            kind: "server_error",
            code: None,
        }
    }

    fn rate_limited() -> Self {
        Self {
            status: 429,
            message: "Rate limit reached for requests.".to_owned(),
            kind: "requests",
            code: Some("rate_limit_exceeded"),
        }
    }

    fn body(&self) -> String {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
            }
        })
        .to_string()
    }

    async fn send<S>(
        &self,
        conn: &mut Conn<S>,
        extra_headers: &[(&str, &str)],
        keep_alive: bool,
    ) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut headers = vec![CONTENT_TYPE_JSON];
        headers.extend_from_slice(extra_headers);
        let response = full_response(self.status, &headers, self.body().as_bytes(), keep_alive);
        conn.write(&response).await
    }
}

/// Sleeps until `at`, returning at once when it is not in the future: tokio rounds timer
/// deadlines up to its next millisecond tick, which would make an "immediate" mock answer
/// take ~1 ms and inflate every baseline measured against it.
async fn wait_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_keeps_json_valid() {
        let json = r#"{"a":"x,y\",z","b":[1,2],"c":{"d":"e"}}"#;
        let at = split_point(json).expect("a comma outside strings");
        let joined = format!("{}\n{}", &json[..at], &json[at..]);
        let reparsed: Value = serde_json::from_str(&joined).expect("valid JSON");
        assert_eq!(
            reparsed,
            serde_json::from_str::<Value>(json).expect("valid JSON")
        );
        assert_eq!(split_point(r#"{"a":"b,c"}"#), None);
    }

    #[test]
    fn decode_time_tolerates_odd_rates() {
        assert_eq!(decode_time(10, 0.0), Duration::ZERO);
        assert_eq!(decode_time(10, f64::NAN), Duration::ZERO);
        assert_eq!(decode_time(10, -1.0), Duration::ZERO);
        assert_eq!(decode_time(10, 1e-300), MAX_DELAY);
        assert_eq!(decode_time(4, 8.0), Duration::from_millis(500));
    }
}
