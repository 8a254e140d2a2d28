//! An in-memory client connection: a [`Downstream`] that serves a request body from memory and
//! records the response, so tests can drive `joule::proxy::handle` (the whole request
//! pipeline) without a gateway process, a listener or an HTTP client.
//!
//! The request side can be shaped to simulate client faults: the body in chunks of any size
//! ([`Client::chunked`]), a pause before each chunk ([`Client::slow`]), and an end other than a
//! clean one — a connection that breaks ([`BodyEnd::Break`]) or a client that never sends the
//! rest ([`BodyEnd::Stall`]: `read_body` awaits a future that never resolves, so only the
//! gateway's own timeout can end the wait). The response side can fail too
//! ([`Client::gone_after`]: every `send_body` after the first `n` fails, as when the client
//! disconnects mid-stream).
//!
//! Everything the gateway sent is kept: the [`ResponseHead`], every body chunk with its arrival
//! [`Instant`] and its `end` flag, and whether `close_after` was called. [`Client::response`]
//! reads it back as status + headers + body bytes, with helpers for JSON, OpenAI-shaped errors
//! and the SSE events of a stream (parsed with the gateway's own [`SseParser`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use joule::api::sse::{SseItem, SseParser};
use joule::proxy::{Downstream, DownstreamError, RequestHead, ResponseHead};

/// How the request body ends once its chunks are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The body is complete (`read_body` answers `None`).
    Complete,
    /// The connection breaks (`read_body` fails).
    Break,
    /// The client sends nothing more, ever (`read_body` never returns).
    Stall,
}

/// One body chunk the gateway sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub at: Instant,
    pub bytes: Bytes,
    /// Sent with `end = true` (the last chunk of the body).
    pub end: bool,
}

/// The client side of one exchange, in memory.
#[derive(Debug)]
pub struct Client {
    body: VecDeque<Bytes>,
    then: BodyEnd,
    pause: Option<Duration>,
    gone_after: Option<usize>,
    /// Body chunks handed to the gateway so far.
    pub chunks_read: usize,
    /// The response head, once sent.
    pub head: Option<ResponseHead>,
    /// How many times `send_head` was called (a correct handler calls it once).
    pub heads_sent: usize,
    /// Every body chunk, in order, with its arrival time.
    pub sent: Vec<Sent>,
    /// `close_after` was called: the connection must not be reused.
    pub closed_after: bool,
}

impl Client {
    /// A client sending `body` in one chunk, then ending it.
    pub fn new(body: impl Into<Bytes>) -> Client {
        let body: Bytes = body.into();
        let chunks = if body.is_empty() { VecDeque::new() } else { VecDeque::from([body]) };
        Client {
            body: chunks,
            then: BodyEnd::Complete,
            pause: None,
            gone_after: None,
            chunks_read: 0,
            head: None,
            heads_sent: 0,
            sent: Vec::new(),
            closed_after: false,
        }
    }

    /// A client sending `body` as JSON.
    pub fn json(body: &serde_json::Value) -> Client {
        Client::new(serde_json::to_vec(body).expect("serialisable body"))
    }

    /// Splits the body into chunks of at most `size` bytes.
    pub fn chunked(mut self, size: usize) -> Client {
        assert!(size > 0);
        let whole: Vec<u8> = self.body.drain(..).flat_map(|b| b.to_vec()).collect();
        self.body = whole.chunks(size).map(Bytes::copy_from_slice).collect();
        self
    }

    /// Waits `pause` (tokio time) before serving each body chunk.
    pub fn slow(mut self, pause: Duration) -> Client {
        self.pause = Some(pause);
        self
    }

    /// How the body ends after its chunks.
    pub fn then(mut self, end: BodyEnd) -> Client {
        self.then = end;
        self
    }

    /// The client goes away after receiving `n` body chunks: later `send_body` calls fail.
    pub fn gone_after(mut self, n: usize) -> Client {
        self.gone_after = Some(n);
        self
    }

    /// The response as received so far. Panics if no head was sent.
    pub fn response(&self) -> Response {
        let head = self.head.clone().expect("the gateway sent no response head");
        let body = self.sent.iter().flat_map(|s| s.bytes.iter().copied()).collect();
        Response { status: head.status, headers: head.headers, content_length: head.content_length, body }
    }
}

#[async_trait]
impl Downstream for Client {
    async fn read_body(&mut self) -> Result<Option<Bytes>, DownstreamError> {
        if let Some(p) = self.pause {
            tokio::time::sleep(p).await;
        }
        if let Some(chunk) = self.body.pop_front() {
            self.chunks_read += 1;
            return Ok(Some(chunk));
        }
        match self.then {
            BodyEnd::Complete => Ok(None),
            BodyEnd::Break => Err(DownstreamError("connection reset by the test client".into())),
            BodyEnd::Stall => std::future::pending().await,
        }
    }

    async fn send_head(&mut self, head: ResponseHead) -> Result<(), DownstreamError> {
        self.heads_sent += 1;
        self.head = Some(head);
        Ok(())
    }

    async fn send_body(&mut self, chunk: Bytes, end: bool) -> Result<(), DownstreamError> {
        assert!(self.head.is_some(), "body chunk sent before the head");
        assert!(!self.sent.last().is_some_and(|s| s.end), "body chunk sent after the end of the body");
        if self.gone_after.is_some_and(|n| self.sent.len() >= n) {
            return Err(DownstreamError("the test client went away".into()));
        }
        self.sent.push(Sent { at: Instant::now(), bytes: chunk, end });
        Ok(())
    }

    fn close_after(&mut self) {
        self.closed_after = true;
    }
}

/// A response as the in-memory client received it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub content_length: Option<usize>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON. Panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Asserts an OpenAI-shaped JSON error with `status` and `code`; returns the document.
    pub fn expect_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "status; body {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"), "{}", self.text());
        assert_eq!(self.content_length, Some(self.body.len()), "declared length");
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "shape: {v}");
        assert!(e.get("param").is_some(), "shape: {v}");
        assert_eq!(e["code"], code, "{v}");
        v
    }

    /// The SSE items of the whole body (a stream's events and comments).
    pub fn sse(&self) -> Vec<SseItem> {
        parse_sse(&self.body)
    }

    /// The `data` of every SSE event of the body.
    pub fn events(&self) -> Vec<String> {
        self.sse()
            .into_iter()
            .filter_map(|i| match i {
                SseItem::Event { data, .. } => Some(data),
                SseItem::Comment(_) => None,
            })
            .collect()
    }
}

/// Parses bytes as a complete SSE stream.
pub fn parse_sse(bytes: &[u8]) -> Vec<SseItem> {
    let mut parser = SseParser::default();
    let mut items = Vec::new();
    parser.feed(bytes, &mut items).expect("valid SSE");
    parser.finish(&mut items);
    items
}

/// A request head: `method path`, the bearer `key` if any, and the body's declared length.
pub fn head(method: http::Method, path: &str, key: Option<&str>, content_length: Option<usize>) -> RequestHead {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path.to_string(), None),
    };
    RequestHead {
        method,
        path,
        query,
        authorization: key.map(|k| format!("Bearer {k}").into_bytes()),
        content_length: content_length.map(|n| n as u64),
        content_type: None,
        explain: false,
        anthropic_beta: None,
        api_key: None,
        if_none_match: None,
    }
}
