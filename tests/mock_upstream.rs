//! Integration tests of `joule::mock`, the in-repo OpenAI-compatible mock upstream: response
//! shapes, stream timing, every failure mode byte by byte, SSE framing variants, large bodies,
//! keep-alive and TLS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use joule::mock::{parse_failure, Failure, MockConfig, MockServer, SseFraming, TestCa};
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
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
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

/// Incremental SSE parser: LF or CRLF lines, comments, multi-line `data:` joined with `\n`.
#[derive(Default)]
struct SseParser {
    pending: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event completed by them.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
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
                    events.push(self.data.join("\n"));
                    self.data.clear();
                }
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
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut bytes = response.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(EXCHANGE_TIMEOUT, bytes.next())
        .await
        .expect("stream stalled")
    {
        let chunk = chunk.expect("stream chunk");
        let now = Instant::now();
        events.extend(parser.push(&chunk).into_iter().map(|e| (now, e)));
    }
    TimedStream {
        status,
        headers,
        events,
    }
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
