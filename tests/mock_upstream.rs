//! Integration tests of `joule::mock`, the in-repo OpenAI- and Anthropic-compatible mock
//! upstream: response shapes, stream timing, every failure mode byte by byte, SSE framing
//! variants, large bodies, keep-alive and TLS; Anthropic's messages, named events, tool use and
//! error shapes; the `joule mock` flags.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use clap::Parser;
use joule::mock::{parse_failure, Failure, MockApi, MockConfig, MockServer, SseFraming, TestCa};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single exchange, so a broken mock fails the test instead of hanging it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

fn config(tokens: u32) -> MockConfig {
    MockConfig {
        ttft_ms: 0,
        tokens_per_s: 0.0,
        tokens,
        ..MockConfig::default()
    }
}

fn chat_body(model: &str, stream: bool, include_usage: bool) -> Vec<u8> {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0.2,
        "some_vendor_extension": {"nested": [1, 2, 3]},
    });
    if stream {
        body["stream"] = json!(true);
    }
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    serde_json::to_vec(&body).expect("serialize request")
}

/// Reads a whole response body as JSON.
async fn json_of(response: reqwest::Response) -> Value {
    let body = response.bytes().await.expect("response body");
    serde_json::from_slice(&body).expect("JSON body")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("reqwest client")
}

// ---------------------------------------------------------------------------------------------
// A tiny raw HTTP/1.1 client, so failure modes can be checked byte by byte.

/// A raw POST of `body` to `/v1/chat/completions` with `connection: close`.
fn raw_post(body: &[u8], extra_headers: &str) -> Vec<u8> {
    raw_post_to("/v1/chat/completions", body, extra_headers)
}

/// A raw POST of `body` to `path` with `connection: close`.
fn raw_post_to(path: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{extra_headers}connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Sends `request` on a fresh connection and reads until the server closes it (a reset counts
/// as a close). Returns the bytes received.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The server may close before reading everything (refuse); that is not our failure.
        let _ = stream.write_all(request).await;
        let mut received = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .expect("exchange timed out")
}

/// A response as seen on the wire.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    /// Everything after the head, still framed.
    rest: Vec<u8>,
}

impl RawResponse {
    fn parse(raw: &[u8]) -> Self {
        let end = find(raw, b"\r\n\r\n").expect("complete response head") + 4;
        let head = std::str::from_utf8(&raw[..end]).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        Self {
            status,
            headers,
            rest: raw[end..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// De-chunks the body; the flag says whether the terminating chunk arrived.
    fn dechunk(&self) -> (Vec<u8>, bool) {
        let mut body = Vec::new();
        let mut rest = &self.rest[..];
        loop {
            let Some(line_end) = find(rest, b"\r\n") else {
                return (body, false);
            };
            let size_text = std::str::from_utf8(&rest[..line_end]).expect("chunk size");
            let size = usize::from_str_radix(size_text, 16).expect("hex chunk size");
            rest = &rest[line_end + 2..];
            if size == 0 {
                return (body, rest == b"\r\n");
            }
            if rest.len() < size + 2 {
                body.extend_from_slice(rest);
                return (body, false);
            }
            assert_eq!(
                &rest[size..size + 2],
                b"\r\n",
                "chunk data must end with CRLF"
            );
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// SSE parsing as a spec-following client would do it.

/// Incremental SSE parser: LF or CRLF lines, comments, `event:` names, multi-line `data:`
/// joined with `\n`.
#[derive(Default)]
struct SseParser {
    pending: Vec<u8>,
    data: Vec<String>,
    name: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event completed by them.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.push_named(bytes).into_iter().map(|(_, data)| data).collect()
    }

    /// Feeds bytes; returns the name (`message` when none was given, as the SSE specification
    /// says) and data of every event completed by them.
    fn push_named(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(newline) = self.pending.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=newline).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).expect("UTF-8 SSE line");
            if line.is_empty() {
                if !self.data.is_empty() {
                    let name = self.name.take().unwrap_or_else(|| "message".to_owned());
                    events.push((name, self.data.join("\n")));
                    self.data.clear();
                }
                self.name = None;
            } else if let Some(value) = line.strip_prefix("event:") {
                self.name = Some(value.strip_prefix(' ').unwrap_or(value).to_owned());
            } else if let Some(value) = line.strip_prefix("data:") {
                self.data
                    .push(value.strip_prefix(' ').unwrap_or(value).to_owned());
            } else {
                assert!(line.starts_with(':'), "unexpected SSE line {line:?}");
            }
        }
        events
    }
}

fn sse_events(body: &[u8]) -> Vec<String> {
    let mut parser = SseParser::default();
    let events = parser.push(body);
    assert!(parser.pending.is_empty(), "trailing partial SSE line");
    events
}

fn json_events(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("JSON event"))
        .collect()
}

fn content_of(chunk: &Value) -> Option<&str> {
    chunk["choices"][0]["delta"]["content"].as_str()
}

/// The head of a streamed response and its SSE events, each timestamped on arrival.
struct TimedStream {
    status: reqwest::StatusCode,
    headers: reqwest::header::HeaderMap,
    events: Vec<(Instant, String)>,
}

/// Streams a chat completion through reqwest and timestamps every SSE event on arrival.
async fn timed_stream(server: &MockServer, body: Vec<u8>) -> TimedStream {
    let response = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    let status = response.status();
    let headers = response.headers().clone();
    let events = timed_events(response)
        .await
        .into_iter()
        .map(|(at, _, data)| (at, data))
        .collect();
    TimedStream {
        status,
        headers,
        events,
    }
}

/// Reads a streamed body, timestamping every SSE event (name and data) on arrival.
async fn timed_events(response: reqwest::Response) -> Vec<(Instant, String, String)> {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut bytes = response.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(EXCHANGE_TIMEOUT, bytes.next())
        .await
        .expect("stream stalled")
    {
        let chunk = chunk.expect("stream chunk");
        let now = Instant::now();
        events.extend(
            parser
                .push_named(&chunk)
                .into_iter()
                .map(|(name, data)| (now, name, data)),
        );
    }
    events
}

fn untimed(stream: TimedStream) -> Vec<String> {
    stream.events.into_iter().map(|(_, e)| e).collect()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn non_stream_completion_has_openai_shape() {
    let cfg = MockConfig {
        ttft_ms: 30,
        tokens_per_s: 100.0,
        tokens: 4,
        ..MockConfig::default()
    };
    let server = MockServer::start(cfg).await.expect("start");
    let body = chat_body("llama-3.1-8b-instruct", false, false);
    let started = Instant::now();
    let response = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("send");
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "JSON response"
    );
    let completion: Value = json_of(response).await;

    // ttft 30 ms + 4 tokens at 100/s = 70 ms before the response.
    assert!(
        elapsed >= Duration::from_millis(70),
        "answered after {elapsed:?}"
    );
    assert!(completion["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(completion["object"], "chat.completion");
    assert!(completion["created"].as_u64().is_some());
    assert_eq!(completion["model"], "llama-3.1-8b-instruct");
    let choice = &completion["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "tok0 tok1 tok2 tok3");
    assert_eq!(choice["finish_reason"], "stop");
    let prompt_tokens = (body.len() / 4) as u64;
    assert_eq!(completion["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(completion["usage"]["completion_tokens"], 4);
    assert_eq!(completion["usage"]["total_tokens"], prompt_tokens + 4);

    assert_eq!(server.requests(), 1);
    let recorded = server.last_request().expect("recorded request");
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, "/v1/chat/completions");
    assert_eq!(recorded.header("Content-Type"), Some("application/json"));
    assert_eq!(&recorded.body[..], &body[..]);
}

#[tokio::test]
async fn stream_events_are_timed_and_flushed_individually() {
    let cfg = MockConfig {
        ttft_ms: 100,
        tokens_per_s: 10.0,
        tokens: 5,
        ..MockConfig::default()
    };
    let server = MockServer::start(cfg).await.expect("start");
    let TimedStream {
        status,
        headers,
        events,
    } = timed_stream(&server, chat_body("m", true, false)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(headers.get("content-length").is_none());

    let (done_at, done) = events.last().expect("events");
    assert_eq!(done, "[DONE]");
    let chunks: Vec<(Instant, Value)> = events
        .iter()
        .filter(|(_, e)| e != "[DONE]")
        .map(|(t, e)| (*t, serde_json::from_str(e).expect("JSON chunk")))
        .collect();
    let id = &chunks[0].1["id"];
    for (_, chunk) in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(&chunk["id"], id, "one id per stream");
        assert_eq!(chunk["model"], "m");
        assert!(chunk.get("usage").is_none(), "no usage unless asked for");
    }

    // Role chunk first, at once; the first content token only after the TTFT.
    let (role_at, role) = &chunks[0];
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(role["choices"][0]["delta"]["content"], "");
    let content: Vec<(Instant, &str)> = chunks[1..]
        .iter()
        .filter_map(|(t, c)| content_of(c).map(|text| (*t, text)))
        .collect();
    assert_eq!(content.len(), 5);
    let text: String = content.iter().map(|(_, t)| *t).collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 tok4");
    let ttft = content[0].0 - *role_at;
    assert!(
        ttft >= Duration::from_millis(80),
        "first token after {ttft:?}"
    );

    // 10 tokens/s: each content event arrives on its own, about 100 ms after the previous one.
    for pair in content.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(80),
            "content events {gap:?} apart"
        );
    }

    let finish = &chunks.last().expect("finish chunk").1;
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(*done_at >= content[4].0);
}

#[tokio::test]
async fn include_usage_adds_a_final_usage_chunk() {
    let server = MockServer::start(config(3)).await.expect("start");
    let body = chat_body("m", true, true);
    let events = untimed(timed_stream(&server, body.clone()).await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = json_events(&events);
    let (usage_chunk, others) = chunks.split_last().expect("chunks");
    assert_eq!(usage_chunk["choices"], json!([]));
    let prompt_tokens = (body.len() / 4) as u64;
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 3, "total_tokens": prompt_tokens + 3})
    );
    // Like OpenAI: the other chunks carry `"usage": null`.
    for chunk in others {
        assert_eq!(chunk["usage"], Value::Null);
        assert!(chunk.get("usage").is_some());
    }
    assert_eq!(
        others.last().expect("finish chunk")["choices"][0]["finish_reason"],
        "stop"
    );

    // Without include_usage: no usage chunk, no usage fields.
    let events = untimed(timed_stream(&server, chat_body("m", true, false)).await);
    let chunks = json_events(&events);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(chunks
        .iter()
        .all(|c| c["choices"].as_array().is_some_and(|a| a.len() == 1)));
    assert_eq!(chunks.len(), 1 + 3 + 1, "role, 3 tokens, finish");
}

#[tokio::test]
async fn refuse_closes_without_a_response() {
    let server = MockServer::start(MockConfig {
        failure: Failure::Refuse,
        ..config(2)
    })
    .await
    .expect("start");
    let raw = raw_exchange(server.addr(), &raw_post(&chat_body("m", false, false), "")).await;
    assert!(raw.is_empty(), "got {:?}", String::from_utf8_lossy(&raw));
    assert_eq!(server.requests(), 1);
    assert!(server.last_request().is_none());

    // Also for a request on a connection opened before the switch to Refuse.
    server.set_config(config(2));
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let request = chat_body("m", false, false);
    let wire = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-length: {}\r\n\r\n",
        request.len()
    );
    stream.write_all(wire.as_bytes()).await.expect("write");
    stream.write_all(&request).await.expect("write");
    let mut first = vec![0u8; 64 * 1024];
    let n = stream.read(&mut first).await.expect("first response");
    assert!(first[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    server.set_config(MockConfig {
        failure: Failure::Refuse,
        ..config(2)
    });
    stream.write_all(wire.as_bytes()).await.expect("write");
    stream.write_all(&request).await.expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(EXCHANGE_TIMEOUT, stream.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(read.is_err() || rest.is_empty(), "no response after refuse");
}

#[tokio::test]
async fn status_failures_are_openai_shaped() {
    let server = MockServer::start(MockConfig {
        failure: Failure::Status500,
        ..config(2)
    })
    .await
    .expect("start");
    let url = format!("{}/chat/completions", server.base_url());
    let response = client()
        .post(&url)
        .body(chat_body("m", true, false))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 500);
    let error: Value = json_of(response).await;
    assert_eq!(error["error"]["type"], "server_error");
    assert!(error["error"]["message"].as_str().is_some());

    server.set_config(MockConfig {
        failure: Failure::Status429 { retry_after_s: 7 },
        ..config(2)
    });
    let response = client()
        .post(&url)
        .body(chat_body("m", false, false))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let error: Value = json_of(response).await;
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(server.requests(), 2, "failed requests are counted too");
    assert!(server.last_request().is_some(), "and recorded");
}

#[tokio::test]
async fn slow_headers_delays_the_response_head() {
    let server = MockServer::start(MockConfig {
        failure: Failure::SlowHeaders { delay_ms: 300 },
        ..config(2)
    })
    .await
    .expect("start");
    let started = Instant::now();
    let response = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .body(chat_body("m", true, false))
        .send()
        .await
        .expect("send");
    let headers_after = started.elapsed();
    assert!(
        headers_after >= Duration::from_millis(300),
        "headers after {headers_after:?}"
    );
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("body");
    let events = sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn drop_mid_stream_cuts_the_connection() {
    let server = MockServer::start(MockConfig {
        failure: Failure::DropMidStream { after_tokens: 3 },
        ..config(10)
    })
    .await
    .expect("start");
    let raw = raw_exchange(server.addr(), &raw_post(&chat_body("m", true, false), "")).await;
    let response = RawResponse::parse(&raw);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    let (body, complete) = response.dechunk();
    assert!(!complete, "no terminating chunk");
    let events = sse_events(&body);
    assert!(!events.iter().any(|e| e == "[DONE]"));
    let chunks = json_events(&events);
    assert_eq!(chunks.len(), 1 + 3, "role chunk and 3 content chunks");
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));

    // Non-streaming: the head promises a body that never comes.
    let raw = raw_exchange(server.addr(), &raw_post(&chat_body("m", false, false), "")).await;
    let response = RawResponse::parse(&raw);
    assert_eq!(response.status, 200);
    let promised: usize = response
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    assert!(promised > 0);
    assert!(response.rest.is_empty());
}

#[tokio::test]
async fn garbage_sse_sends_a_non_json_event_then_closes() {
    let server = MockServer::start(MockConfig {
        failure: Failure::GarbageSse { after_tokens: 2 },
        ..config(10)
    })
    .await
    .expect("start");
    let raw = raw_exchange(server.addr(), &raw_post(&chat_body("m", true, false), "")).await;
    let response = RawResponse::parse(&raw);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    let (body, complete) = response.dechunk();
    assert!(complete, "the HTTP body itself is well-framed");
    assert!(body.ends_with(b"data: {{{garbage\n\n"));
    let events = sse_events(&body);
    let (garbage, valid) = events.split_last().expect("events");
    assert_eq!(garbage, "{{{garbage");
    assert!(serde_json::from_str::<Value>(garbage).is_err());
    assert_eq!(json_events(valid).len(), 1 + 2);

    // Non-streaming: a 200 whose body is not JSON.
    let raw = raw_exchange(server.addr(), &raw_post(&chat_body("m", false, false), "")).await;
    let response = RawResponse::parse(&raw);
    assert_eq!(response.status, 200);
    assert_eq!(response.rest, b"{{{garbage");
}

#[tokio::test]
async fn crlf_framing_is_used_throughout() {
    let server = MockServer::start(MockConfig {
        sse_framing: SseFraming::Crlf,
        ..config(3)
    })
    .await
    .expect("start");
    let raw = raw_exchange(server.addr(), &raw_post(&chat_body("m", true, true), "")).await;
    let (body, complete) = RawResponse::parse(&raw).dechunk();
    assert!(complete);
    assert!(body.ends_with(b"data: [DONE]\r\n\r\n"));
    for (i, _) in body.iter().enumerate().filter(|(_, &b)| b == b'\n') {
        assert!(i > 0 && body[i - 1] == b'\r', "bare LF at byte {i}");
    }
    let events = sse_events(&body);
    assert_eq!(json_events(&events).len(), 1 + 3 + 1 + 1);
}

#[tokio::test]
async fn comments_and_multiline_data_are_valid_sse() {
    let server = MockServer::start(MockConfig {
        sse_comments: true,
        multiline_data: true,
        ..config(3)
    })
    .await
    .expect("start");
    let raw = raw_exchange(server.addr(), &raw_post(&chat_body("m", true, false), "")).await;
    let (body, complete) = RawResponse::parse(&raw).dechunk();
    assert!(complete);
    let text = String::from_utf8(body.clone()).expect("UTF-8 stream");
    assert_eq!(
        text.matches(": keep-alive\n\n").count(),
        1 + 3 + 1,
        "between events"
    );
    // Each content event spans two data lines.
    let two_line_events = text
        .split("\n\n")
        .filter(|event| event.lines().filter(|l| l.starts_with("data: ")).count() == 2)
        .count();
    assert_eq!(two_line_events, 3);
    let events = sse_events(&body);
    let chunks = json_events(&events);
    let content: String = chunks.iter().filter_map(content_of).collect();
    assert_eq!(content, "tok0 tok1 tok2");
}

#[tokio::test]
async fn large_bodies_are_recorded_byte_exact() {
    let server = MockServer::start(config(1)).await.expect("start");
    // 2 MiB of varied content, escapes and multi-byte UTF-8 included.
    let filler: String = (0..)
        .map(|i: u32| match i % 7 {
            0 => 'é',
            1 => '"',
            2 => '\n',
            _ => char::from(b'a' + (i % 26) as u8),
        })
        .take(1_600_000)
        .collect();
    let body = serde_json::to_vec(&json!({
        "model": "m",
        "messages": [{"role": "user", "content": filler}],
    }))
    .expect("serialize");
    assert!(body.len() >= 2 * 1024 * 1024, "{} bytes", body.len());

    // Content-Length framing, through reqwest.
    let response = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let completion: Value = json_of(response).await;
    assert_eq!(
        completion["usage"]["prompt_tokens"],
        (body.len() / 4) as u64
    );
    let recorded = server.last_request().expect("recorded");
    assert!(recorded.body == body[..], "Content-Length body differs");

    // Chunked framing with irregular chunk sizes, an extension and `Expect: 100-continue`.
    let mut wire = b"POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\n\
                     transfer-encoding: chunked\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n"
        .to_vec();
    let mut offset = 0;
    for size in [1usize, 4095, 65_536, 300_001].iter().cycle() {
        let end = (offset + size).min(body.len());
        wire.extend_from_slice(format!("{:X};ext=v\r\n", end - offset).as_bytes());
        wire.extend_from_slice(&body[offset..end]);
        wire.extend_from_slice(b"\r\n");
        offset = end;
        if offset == body.len() {
            break;
        }
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let raw = raw_exchange(server.addr(), &wire).await;
    assert!(raw.starts_with(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"));
    let recorded = server.last_request().expect("recorded");
    assert!(recorded.body == body[..], "chunked body differs");
    assert_eq!(recorded.header("transfer-encoding"), Some("chunked"));
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn keep_alive_serves_pipelined_requests() {
    let server = MockServer::start(config(2)).await.expect("start");
    let body = chat_body("m", true, false);
    let keep_alive = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut wire = keep_alive.into_bytes();
    wire.extend_from_slice(&body);
    wire.extend_from_slice(&raw_post(&chat_body("m", false, false), ""));
    let raw = raw_exchange(server.addr(), &wire).await;
    let first = RawResponse::parse(&raw);
    assert_eq!(first.header("connection"), Some("keep-alive"));
    let terminator = find(&first.rest, b"0\r\n\r\n").expect("end of first body") + 5;
    let second = RawResponse::parse(&first.rest[terminator..]);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"));
    let completion: Value = serde_json::from_slice(&second.rest).expect("JSON");
    assert_eq!(completion["choices"][0]["message"]["content"], "tok0 tok1");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn routes_errors_and_auth() {
    let server = MockServer::start(MockConfig {
        require_bearer: Some("sk-upstream".to_owned()),
        models: vec!["a".to_owned(), "b".to_owned()],
        ..config(1)
    })
    .await
    .expect("start");
    let base = server.base_url();
    let http = client();

    let response = http
        .get(format!("{base}/models"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401);
    let error: Value = json_of(response).await;
    assert_eq!(error["error"]["code"], "invalid_api_key");

    let response = http
        .get(format!("{base}/models"))
        .bearer_auth("sk-upstream")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let models: Value = json_of(response).await;
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(server.requests(), 0, "only chat completions count");
    let recorded = server.last_request().expect("recorded");
    assert_eq!(recorded.header("authorization"), Some("Bearer sk-upstream"));

    let response = http
        .post(format!("{base}/chat/completions"))
        .bearer_auth("sk-upstream")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let error: Value = json_of(response).await;
    assert_eq!(error["error"]["type"], "invalid_request_error");

    let response = http
        .post(format!("{base}/completions"))
        .bearer_auth("sk-upstream")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    let error: Value = json_of(response).await;
    assert_eq!(error["error"]["code"], "unknown_url");

    // Malformed HTTP gets a 400 and a close, not a hang.
    let raw = raw_exchange(server.addr(), b"NOT HTTP AT ALL\r\n\r\n").await;
    assert_eq!(RawResponse::parse(&raw).status, 400);
}

#[tokio::test]
async fn set_config_applies_to_the_next_request() {
    let server = MockServer::start(config(1)).await.expect("start");
    let url = format!("{}/chat/completions", server.base_url());
    let http = client();
    let first = json_of(
        http.post(&url)
            .body(chat_body("m", false, false))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(first["choices"][0]["message"]["content"], "tok0");
    server.set_config(config(3));
    assert_eq!(server.config().tokens, 3);
    let second = json_of(
        http.post(&url)
            .body(chat_body("m", false, false))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(second["choices"][0]["message"]["content"], "tok0 tok1 tok2");
}

#[tokio::test]
async fn tls_with_test_ca() {
    let ca = TestCa::new().expect("CA");
    let identity = ca.issue(&["localhost", "127.0.0.1"]).expect("leaf");
    let server = MockServer::start_tls(config(3), identity)
        .await
        .expect("start TLS");
    let base = server.base_url();
    assert_eq!(
        base,
        format!("https://localhost:{}/v1", server.addr().port())
    );
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.ca_cert_pem.as_bytes()).expect("CA PEM"),
        )
        .build()
        .expect("client");

    let response = http
        .post(format!("{base}/chat/completions"))
        .body(chat_body("m", true, true))
        .send()
        .await
        .expect("TLS request");
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("body");
    let events = sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let content: String = json_events(&events).iter().filter_map(content_of).collect();
    assert_eq!(content, "tok0 tok1 tok2");

    // A client that does not trust the CA is turned away.
    let untrusting = reqwest::Client::builder().build().expect("client");
    assert!(untrusting
        .get(format!("{base}/models"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn shutdown_closes_connections_and_listener() {
    let server = MockServer::start(config(1)).await.expect("start");
    let addr = server.addr();
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    // Make sure the connection is being served before shutting down.
    let body = chat_body("m", false, false);
    let wire = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    idle.write_all(wire.as_bytes()).await.expect("write");
    idle.write_all(&body).await.expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    assert!(idle.read(&mut buf).await.expect("response") > 0);

    server.shutdown();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(EXCHANGE_TIMEOUT, idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "open connection closed on shutdown");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[test]
fn parse_failure_accepts_the_cli_forms() {
    let cases = [
        ("none", Failure::None),
        ("refuse", Failure::Refuse),
        ("500", Failure::Status500),
        ("429", Failure::Status429 { retry_after_s: 1 }),
        ("429:30", Failure::Status429 { retry_after_s: 30 }),
        ("slow-headers:250", Failure::SlowHeaders { delay_ms: 250 }),
        ("drop:5", Failure::DropMidStream { after_tokens: 5 }),
        ("GARBAGE:2", Failure::GarbageSse { after_tokens: 2 }),
        ("529", Failure::Overloaded),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_failure(text), Ok(expected), "{text}");
        assert_eq!(parse_failure(&expected.to_string()), Ok(expected));
    }
    for bad in [
        "",
        "drop",
        "drop:x",
        "500:1",
        "529:1",
        "slow-headers",
        "explode",
        "drop:-1",
        "drop:99999999999",
    ] {
        assert!(parse_failure(bad).is_err(), "{bad} should be rejected");
    }
    assert_eq!("crlf".parse::<SseFraming>(), Ok(SseFraming::Crlf));
}

#[test]
fn parse_failure_accepts_the_unusable_answer_forms() {
    let cases = [
        ("html", Failure::HtmlAnswer),
        ("EMPTY", Failure::EmptyAnswer),
        ("truncate:10", Failure::TruncatedAnswer { sent_bytes: 10 }),
        ("silent-body", Failure::SilentBody),
        ("endless-event:2", Failure::EndlessEvent { after_tokens: 2 }),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_failure(text), Ok(expected), "{text}");
        assert_eq!(parse_failure(&expected.to_string()), Ok(expected));
    }
    for bad in ["html:1", "empty:0", "truncate", "truncate:x", "silent-body:5"] {
        assert!(parse_failure(bad).is_err(), "{bad} should be rejected");
    }
}

// ---------------------------------------------------------------------------------------------
// Anthropic mode.

const ANTHROPIC_VERSION: &str = "2023-06-01";

fn anthropic_config(tokens: u32) -> MockConfig {
    MockConfig {
        api: MockApi::Anthropic,
        ..config(tokens)
    }
}

/// A Messages request; the members of `extra` are added, or removed when `null`.
fn messages_body(extra: Value) -> Vec<u8> {
    let mut body = json!({
        "model": "claude-mock",
        "max_tokens": 1024,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0.2,
    });
    if let (Some(fields), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (name, value) in extra {
            if value.is_null() {
                fields.remove(name);
            } else {
                fields.insert(name.clone(), value.clone());
            }
        }
    }
    serde_json::to_vec(&body).expect("serialize request")
}

/// A POST to the mock's `/v1/messages` with `anthropic-version` (and `x-api-key` if given).
fn messages_post(server: &MockServer, key: Option<&str>, body: Vec<u8>) -> reqwest::RequestBuilder {
    let request = client()
        .post(format!("{}/messages", server.base_url()))
        .header("content-type", "application/json")
        .header("anthropic-version", ANTHROPIC_VERSION)
        .body(body);
    match key {
        Some(key) => request.header("x-api-key", key),
        None => request,
    }
}

fn weather_tools() -> Value {
    json!([
        {"name": "get_weather", "description": "Weather of a city",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "get_time", "input_schema": {"type": "object"}},
    ])
}

/// A named SSE event, timestamped on arrival, with its data parsed as JSON.
struct NamedEvent {
    at: Instant,
    name: String,
    data: Value,
}

/// Streams a Messages request and returns the response head and its named events.
async fn named_stream(
    server: &MockServer,
    body: Vec<u8>,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Vec<NamedEvent>) {
    let response = messages_post(server, None, body).send().await.expect("send");
    let status = response.status();
    let headers = response.headers().clone();
    let events = timed_events(response)
        .await
        .into_iter()
        .map(|(at, name, data)| NamedEvent {
            at,
            name,
            data: serde_json::from_str(&data).expect("JSON event"),
        })
        .collect();
    (status, headers, events)
}

fn names(events: &[NamedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

#[tokio::test]
async fn anthropic_non_stream_message_has_anthropic_shape() {
    let server = MockServer::start(MockConfig {
        api: MockApi::Anthropic,
        ttft_ms: 30,
        tokens_per_s: 100.0,
        tokens: 4,
        require_bearer: Some("sk-ant-upstream".to_owned()),
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let body = messages_body(json!({}));
    let started = Instant::now();
    let response = messages_post(&server, Some("sk-ant-upstream"), body.clone())
        .send()
        .await
        .expect("send");
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let message = json_of(response).await;

    // ttft 30 ms + 4 tokens at 100/s = 70 ms before the response, as in OpenAI mode.
    assert!(elapsed >= Duration::from_millis(70), "answered after {elapsed:?}");
    assert!(message["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "claude-mock");
    assert_eq!(
        message["content"],
        json!([{"type": "text", "text": "tok0 tok1 tok2 tok3"}])
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["stop_sequence"], Value::Null);
    assert_eq!(
        message["usage"],
        json!({
            "input_tokens": (body.len() / 4) as u64,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 4,
        })
    );
    assert_eq!(server.requests(), 1);
    let recorded = server.last_request().expect("recorded");
    assert_eq!(recorded.path, "/v1/messages");
    assert_eq!(recorded.header("x-api-key"), Some("sk-ant-upstream"));
    assert_eq!(recorded.header("anthropic-version"), Some(ANTHROPIC_VERSION));
    assert_eq!(&recorded.body[..], &body[..]);

    // `reported_usage` replaces the usage object.
    let absurd = json!({"input_tokens": u64::MAX, "output_tokens": u64::MAX});
    server.set_config(MockConfig {
        reported_usage: Some(absurd.clone()),
        ..anthropic_config(2)
    });
    let message = json_of(
        messages_post(&server, None, messages_body(json!({})))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(message["usage"], absurd);
}

#[tokio::test]
async fn anthropic_max_tokens_cuts_the_text() {
    let server = MockServer::start(anthropic_config(5)).await.expect("start");
    let message = json_of(
        messages_post(&server, None, messages_body(json!({"max_tokens": 2})))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(message["content"][0]["text"], "tok0 tok1");
    assert_eq!(message["stop_reason"], "max_tokens");
    assert_eq!(message["usage"]["output_tokens"], 2);

    // A budget of exactly the configured length is not a cut.
    let message = json_of(
        messages_post(&server, None, messages_body(json!({"max_tokens": 5})))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(message["stop_reason"], "end_turn");

    let (_, _, events) =
        named_stream(&server, messages_body(json!({"max_tokens": 2, "stream": true}))).await;
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|e| e.name == "content_block_delta")
        .map(|e| &e.data)
        .collect();
    assert_eq!(deltas.len(), 2);
    let delta = events
        .iter()
        .find(|e| e.name == "message_delta")
        .expect("message_delta");
    assert_eq!(delta.data["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta.data["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn anthropic_stream_events_are_ordered_and_paced() {
    let server = MockServer::start(MockConfig {
        api: MockApi::Anthropic,
        ttft_ms: 100,
        tokens_per_s: 10.0,
        tokens: 5,
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let body = messages_body(json!({"stream": true}));
    let (status, headers, events) = named_stream(&server, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(headers.get("content-length").is_none());
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 5]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), expected);
    for event in &events {
        assert_eq!(event.data["type"], event.name.as_str(), "type matches the event name");
    }

    let start = &events[0].data["message"];
    assert!(start["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(start["type"], "message");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["model"], "claude-mock");
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["input_tokens"], (body.len() / 4) as u64);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        events[1].data["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(events[1].data["index"], 0);

    let deltas = &events[3..8];
    let text: String = deltas
        .iter()
        .map(|e| {
            assert_eq!(e.data["index"], 0);
            assert_eq!(e.data["delta"]["type"], "text_delta");
            e.data["delta"]["text"].as_str().expect("text")
        })
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 tok4");
    let ttft = deltas[0].at - events[0].at;
    assert!(ttft >= Duration::from_millis(80), "first token after {ttft:?}");
    // 10 tokens/s: each delta arrives on its own, about 100 ms after the previous one.
    for pair in deltas.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(80), "deltas {gap:?} apart");
    }
    let delta = &events[9].data;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["delta"]["stop_sequence"], Value::Null);
    assert_eq!(delta["usage"]["output_tokens"], 5);
    assert_eq!(events[8].data["index"], 0);
}

#[tokio::test]
async fn anthropic_tool_use_answers_with_a_tool_block() {
    let server = MockServer::start(anthropic_config(3)).await.expect("start");
    let ask = |choice: Value| {
        let body = messages_body(json!({"tools": weather_tools(), "tool_choice": choice}));
        let request = messages_post(&server, None, body);
        async move { json_of(request.send().await.expect("send")).await }
    };

    let message = ask(json!({"type": "tool", "name": "get_time"})).await;
    assert_eq!(message["stop_reason"], "tool_use");
    let block = &message["content"][0];
    assert_eq!(message["content"].as_array().map(Vec::len), Some(1));
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().is_some_and(|id| id.starts_with("toolu_")));
    assert_eq!(block["name"], "get_time");
    assert_eq!(block["input"], json!({"arg": "value"}));
    assert!(message["usage"]["output_tokens"].as_u64().is_some_and(|n| n > 0));

    let message = ask(json!({"type": "any"})).await;
    assert_eq!(message["content"][0]["name"], "get_weather", "the first tool");
    // `auto` (and no choice at all) leaves the model free: the mock writes text.
    let message = ask(json!({"type": "auto"})).await;
    assert_eq!(message["content"][0]["type"], "text");
    assert_eq!(message["stop_reason"], "end_turn");

    // `tool_use` forces a call whenever tools are offered, unless the choice is `none`.
    server.set_config(MockConfig {
        tool_use: true,
        ..anthropic_config(3)
    });
    let message = ask(json!({"type": "auto"})).await;
    assert_eq!(message["content"][0]["name"], "get_weather");
    let message = ask(json!({"type": "none"})).await;
    assert_eq!(message["content"][0]["type"], "text");
    let without_tools = json_of(
        messages_post(&server, None, messages_body(json!({})))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(without_tools["content"][0]["type"], "text");
}

#[tokio::test]
async fn anthropic_streamed_tool_input_arrives_in_pieces() {
    let server = MockServer::start(anthropic_config(3)).await.expect("start");
    let body = messages_body(json!({
        "stream": true,
        "tools": weather_tools(),
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }));
    let (status, _, events) = named_stream(&server, body).await;
    assert_eq!(status, 200);
    let start = &events[1];
    assert_eq!(start.name, "content_block_start");
    let block = &start.data["content_block"];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "get_weather");
    assert!(block["id"].as_str().is_some_and(|id| id.starts_with("toolu_")));
    assert_eq!(block["input"], json!({}));
    let pieces: Vec<&str> = events
        .iter()
        .filter(|e| e.name == "content_block_delta")
        .map(|e| {
            assert_eq!(e.data["delta"]["type"], "input_json_delta");
            e.data["delta"]["partial_json"].as_str().expect("partial_json")
        })
        .collect();
    assert!(pieces.len() >= 3, "{} pieces", pieces.len());
    assert!(
        pieces.iter().all(|piece| serde_json::from_str::<Value>(piece).is_err()),
        "no piece is JSON on its own"
    );
    let input: Value = serde_json::from_str(&pieces.concat()).expect("joined input is JSON");
    assert_eq!(input, json!({"arg": "value"}));
    let delta = events
        .iter()
        .find(|e| e.name == "message_delta")
        .expect("message_delta");
    assert_eq!(delta.data["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta.data["usage"]["output_tokens"], pieces.len());
    assert_eq!(events.last().map(|e| e.name.as_str()), Some("message_stop"));
}

#[tokio::test]
async fn anthropic_errors_have_anthropic_shape() {
    let server = MockServer::start(MockConfig {
        require_bearer: Some("sk-ant".to_owned()),
        models: vec!["claude-a".to_owned(), "claude-b".to_owned()],
        ..anthropic_config(1)
    })
    .await
    .expect("start");
    let base = server.base_url();
    let is_error = |error: &Value, kind: &str| {
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["error"]["type"], kind, "{error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    };

    // The key goes in `x-api-key`: missing, wrong, or sent as a bearer token, it is refused.
    for key in [None, Some("sk-wrong")] {
        let response = messages_post(&server, key, messages_body(json!({})))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 401);
        is_error(&json_of(response).await, "authentication_error");
    }
    let response = messages_post(&server, None, messages_body(json!({})))
        .bearer_auth("sk-ant")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401);

    // `anthropic-version` is required.
    let response = client()
        .post(format!("{base}/messages"))
        .header("x-api-key", "sk-ant")
        .body(messages_body(json!({})))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    is_error(&json_of(response).await, "invalid_request_error");

    // So are `max_tokens` and `messages`, and the body must be JSON.
    for (body, mentions) in [
        (messages_body(json!({"max_tokens": null})), "max_tokens"),
        (messages_body(json!({"messages": null})), "messages"),
        (messages_body(json!({"max_tokens": "many"})), ""),
        (b"{not json".to_vec(), ""),
    ] {
        let response = messages_post(&server, Some("sk-ant"), body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400);
        let error = json_of(response).await;
        is_error(&error, "invalid_request_error");
        assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains(mentions)));
    }

    // The OpenAI route does not exist here.
    let response = client()
        .post(format!("{base}/chat/completions"))
        .header("x-api-key", "sk-ant")
        .body(chat_body("m", false, false))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    is_error(&json_of(response).await, "not_found_error");

    // Models, in Anthropic's list shape.
    let response = client()
        .get(format!("{base}/models"))
        .header("x-api-key", "sk-ant")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let models = json_of(response).await;
    assert_eq!(models["data"][0]["type"], "model");
    assert_eq!(models["data"][1]["id"], "claude-b");
    assert_eq!(models["has_more"], false);
    assert_eq!(models["first_id"], "claude-a");
    assert_eq!(models["last_id"], "claude-b");
    assert_eq!(server.requests(), 8, "only POST /v1/messages counts");
}

#[tokio::test]
async fn anthropic_path_is_404_in_openai_mode() {
    let server = MockServer::start(config(1)).await.expect("start");
    let response = messages_post(&server, None, messages_body(json!({})))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    let error = json_of(response).await;
    assert_eq!(error["error"]["code"], "unknown_url");
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn overloaded_answers_529_in_each_shape() {
    let server = MockServer::start(MockConfig {
        failure: Failure::Overloaded,
        ..anthropic_config(2)
    })
    .await
    .expect("start");
    for stream in [false, true] {
        let response = messages_post(&server, None, messages_body(json!({"stream": stream})))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 529);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            json_of(response).await,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
    }

    server.set_config(MockConfig {
        failure: Failure::Overloaded,
        ..config(2)
    });
    let response = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .body(chat_body("m", true, false))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 529);
    let error = json_of(response).await;
    assert_eq!(error["error"]["type"], "server_error");
    assert!(error["error"]["message"].as_str().is_some());
}

#[tokio::test]
async fn anthropic_failures_take_anthropic_shape() {
    let server = MockServer::start(MockConfig {
        failure: Failure::Status500,
        ..anthropic_config(4)
    })
    .await
    .expect("start");
    let response = messages_post(&server, None, messages_body(json!({})))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 500);
    assert_eq!(json_of(response).await["error"]["type"], "api_error");

    server.set_config(MockConfig {
        failure: Failure::Status429 { retry_after_s: 9 },
        ..anthropic_config(4)
    });
    let response = messages_post(&server, None, messages_body(json!({})))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "9");
    assert_eq!(json_of(response).await["error"]["type"], "rate_limit_error");

    // Mid-stream drop: the opening events and two deltas, then no terminating chunk.
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}\r\n");
    let stream_body = messages_body(json!({"stream": true}));
    server.set_config(MockConfig {
        failure: Failure::DropMidStream { after_tokens: 2 },
        ..anthropic_config(4)
    });
    let raw = raw_exchange(server.addr(), &raw_post_to("/v1/messages", &stream_body, &version)).await;
    let (body, complete) = RawResponse::parse(&raw).dechunk();
    assert!(!complete, "no terminating chunk");
    let mut parser = SseParser::default();
    let events = parser.push_named(&body);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta"]
    );

    // Garbage: a malformed delta, then a well-framed end of body and a close.
    server.set_config(MockConfig {
        failure: Failure::GarbageSse { after_tokens: 1 },
        ..anthropic_config(4)
    });
    let raw = raw_exchange(server.addr(), &raw_post_to("/v1/messages", &stream_body, &version)).await;
    let response = RawResponse::parse(&raw);
    assert_eq!(response.header("connection"), Some("close"));
    let (body, complete) = response.dechunk();
    assert!(complete);
    assert!(body.ends_with(b"event: content_block_delta\ndata: {{{garbage\n\n"));

    // HTML instead of a message.
    server.set_config(MockConfig {
        failure: Failure::HtmlAnswer,
        ..anthropic_config(4)
    });
    let response = messages_post(&server, None, messages_body(json!({})))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .is_ok_and(|v| v.starts_with("text/html")));
    assert_eq!(server.requests(), 5);
}

#[test]
fn mock_command_parses_api_and_anthropic_flags() {
    let config_of = |args: &[&str]| {
        let cli = joule::cli::Cli::try_parse_from(args.iter().copied()).expect("parses");
        match cli.command {
            joule::cli::Command::Mock(args) => args.config().expect("valid flags"),
            _ => panic!("not the mock command"),
        }
    };
    let cfg = config_of(&["joule", "mock", "--api", "anthropic", "--failure", "529", "--tool-use"]);
    assert_eq!(cfg.api, MockApi::Anthropic);
    assert_eq!(cfg.failure, Failure::Overloaded);
    assert!(cfg.tool_use);
    let cfg = config_of(&["joule", "mock"]);
    assert_eq!(cfg.api, MockApi::OpenAi);
    assert!(!cfg.tool_use);
    assert_eq!(config_of(&["joule", "mock", "--api", "OpenAI"]).api, MockApi::OpenAi);
    assert!(joule::cli::Cli::try_parse_from(["joule", "mock", "--api", "gemini"]).is_err());
    assert_eq!("anthropic".parse::<MockApi>(), Ok(MockApi::Anthropic));
    assert_eq!(MockApi::Anthropic.to_string(), "anthropic");
}
