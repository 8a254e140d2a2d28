//! Issue 11 ("Hardening"), the protocol classes — the real binary, spoken to over raw TCP so
//! the test controls every byte. Item 1: framing errors close the connection; item 2:
//! `Expect: 100-continue` is answered (or refused with the final status) before the body.
//!
//! A chunked request body with malformed framing is answered 400 (the OpenAI-shaped JSON
//! error) and the connection is closed after it: the bytes that follow the broken body must
//! never be read as the next request (the shape of a request-smuggling desync behind a front
//! proxy that frames differently). Each case pipelines `GET /healthz` behind the bad body and
//! asserts it is NOT answered; the control pipelines the same behind a well-formed chunked
//! body and asserts both are answered, so the harness can tell the two apart.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODEL: &str = "llama-framing";
const ADMIN_TOKEN: &str = "framing-admin-token";
/// How long a connection may take to answer and close; only a failing case waits this long.
const BOUND: Duration = Duration::from_secs(10);

/// The pipelined second request. Without `Connection: close`: were the connection reused, it
/// would stay open after answering it.
const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: joule\r\n\r\n";

/// Malformed chunked bodies, each as the bytes after the request head.
const MALFORMED: &[(&str, &str)] = &[
    ("non-hex size", "zz\r\nabc\r\n0\r\n\r\n"),
    ("negative size", "-1\r\nabc\r\n0\r\n\r\n"),
    ("overflowing size", "ffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
    ("0x prefix", "0x10\r\n0123456789abcdef\r\n0\r\n\r\n"),
    ("size with a space", "1 0\r\n0123456789abcdef\r\n0\r\n\r\n"),
    ("chunk missing its CRLF", "3\r\nabcXY0\r\n\r\n"),
    ("bare-LF framing", "3\nabc\n0\n\n"),
];

async fn gateway() -> (MockServer, Gateway) {
    let m = mock(MockConfig::default()).await;
    let admin = format!("\n[admin]\ntoken_sha256 = \"{}\"\n", joule::secret::KeyHash::of(ADMIN_TOKEN).to_hex());
    let gw = Gateway::start(&format!("{}\n{admin}", hosted_catalog(MODEL, &[m.base_url()]))).await;
    (m, gw)
}

/// A request head announcing a chunked body.
fn chunked_head(method: &str, path: &str, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!("{method} {path} HTTP/1.1\r\nHost: joule\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
}

/// What the client read on one connection.
struct Conversation {
    bytes: Vec<u8>,
    /// The gateway closed the connection (EOF or reset) within [`BOUND`].
    closed: bool,
}

impl Conversation {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Every response's status code, in order.
    fn statuses(&self) -> Vec<u16> {
        let text = self.text();
        let mut out = Vec::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("HTTP/1.1 ") {
            let after = &rest[i + "HTTP/1.1 ".len()..];
            out.push(after.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0));
            rest = after;
        }
        out
    }

    /// The first response's head (lower-cased) and body.
    fn first(&self) -> (String, serde_json::Value) {
        let text = self.text();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete head in {text:?}"));
        let head = head.to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no content-length in {head:?}"));
        let body = rest.get(..len).unwrap_or_else(|| panic!("body shorter than {len}: {rest:?}"));
        (head, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}")))
    }
}

/// Whether `bytes` hold at least one complete response (head and `content-length` body).
fn has_complete_response(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else { return false };
    let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    len.is_some_and(|n| rest.len() >= n)
}

/// Writes `first` in one go on a fresh connection. With `then`, waits for the answer to it and
/// writes `then` on the same connection (a write the closed connection refuses is not an
/// error: the request simply never arrives). Reads until the gateway closes the connection, or
/// [`BOUND`] passes.
async fn converse(port: u16, first: &str, then: Option<&str>) -> Conversation {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    s.write_all(first.as_bytes()).await.expect("write");
    let mut then = then;
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut buf = [0u8; 4096];
    let closed = loop {
        if let Some(next) = then.filter(|_| has_complete_response(&bytes)) {
            let _ = s.write_all(next.as_bytes()).await;
            then = None;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            // Closing with bytes of ours unread may reset rather than finish the connection.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Ok(Err(e)) => panic!("read: {e}"),
        }
    };
    Conversation { bytes, closed }
}

/// Sends `head` + `body` followed by [`HEALTHZ`] both ways — pipelined in the same write, and
/// written once the first answer is in — and returns both conversations.
async fn both_ways(port: u16, head: &str, body: &str) -> [(String, Conversation); 2] {
    [
        ("pipelined".to_string(), converse(port, &format!("{head}{body}{HEALTHZ}"), None).await),
        ("after the answer".to_string(), converse(port, &format!("{head}{body}"), Some(HEALTHZ)).await),
    ]
}

/// Asserts: one 400 with the OpenAI-shaped error body, announced and carried out as the end of
/// the connection; the pipelined request after it unanswered.
fn assert_answered_400_and_closed(c: &Conversation, case: &str) {
    assert!(c.closed, "{case}: the connection stayed open after a framing error: {:?}", c.text());
    assert_eq!(c.statuses(), vec![400], "{case}: exactly one answer, and the pipelined request unanswered: {:?}", c.text());
    let (head, v) = c.first();
    assert!(head.contains("\r\nconnection: close"), "{case}: {head}");
    assert!(head.contains("\r\ncontent-type: application/json"), "{case}: {head}");
    let e = &v["error"];
    assert_eq!(e["type"], "invalid_request_error", "{case}: {v}");
    assert!(e["message"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{case}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_are_answered_400_and_close_the_connection() {
    let (_m, gw) = gateway().await;
    for (case, body) in MALFORMED {
        for (way, c) in both_ways(gw.port, &chunked_head("POST", "/v1/chat/completions", Some(KEY)), body).await {
            assert_answered_400_and_closed(&c, &format!("chat, {case}, {way}"));
        }
    }
    // The admin API reads bodies through the same reader.
    for (case, body) in MALFORMED {
        for (way, c) in both_ways(gw.admin_port, &chunked_head("POST", "/admin/plugins", Some(ADMIN_TOKEN)), body).await {
            assert_answered_400_and_closed(&c, &format!("admin, {case}, {way}"));
        }
    }
    // The gateway is still serving.
    assert!(healthy(gw.port).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_behind_a_refused_request_is_never_read_as_the_next_request() {
    let (_m, gw) = gateway().await;
    // Refused before the body is read (no key; a method the path does not take): the answer
    // goes out, then pingora discards the unread body — and its broken framing ends the
    // connection.
    for (what, method, path, token, status) in [
        ("no key", "POST", "/v1/chat/completions", None, 401),
        ("wrong method", "POST", "/v1/models", Some(KEY), 405),
    ] {
        for (case, body) in MALFORMED {
            for (way, c) in both_ways(gw.port, &chunked_head(method, path, token), body).await {
                let case = format!("{what}, {case}, {way}");
                assert!(c.closed, "{case}: the connection stayed open: {:?}", c.text());
                assert_eq!(c.statuses(), vec![status], "{case}: the second request must stay unanswered: {:?}", c.text());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_chunked_body_keeps_the_connection_for_the_next_request() {
    let (m, gw) = gateway().await;
    let body = serde_json::to_string(&chat_body(MODEL, false)).unwrap();
    let (a, b) = body.split_at(body.len() / 2);
    let chunked = format!("{:x}\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
    // The second request asks to close, so the reused connection ends without waiting.
    let healthz_close = "GET /healthz HTTP/1.1\r\nHost: joule\r\nConnection: close\r\n\r\n";
    let head = chunked_head("POST", "/v1/chat/completions", Some(KEY));
    let c = converse(gw.port, &format!("{head}{chunked}"), Some(healthz_close)).await;
    assert!(c.closed, "{:?}", c.text());
    assert_eq!(c.statuses(), vec![200, 200], "both answered on one connection: {:?}", c.text());
    let (head, v) = c.first();
    assert!(head.contains("\r\nconnection: keep-alive"), "{head}");
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(c.text().ends_with(r#"{"status":"ok"}"#), "{:?}", c.text());
    assert_eq!(m.requests(), 1);
}

/// Reads from `s` until `bytes` hold a complete head (`\r\n\r\n`), bounded by [`BOUND`].
async fn read_head(s: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + BOUND;
    while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
            other => panic!("no head within {BOUND:?}: {other:?}, got {:?}", String::from_utf8_lossy(&bytes)),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Issue 11, item 2: `Expect: 100-continue` is answered as soon as the checks that need no
/// body pass, so curl and clients like it do not wait out their own timeout (curl: 1 s)
/// before sending a long context. The client here never sends the body until it has the
/// `100 Continue`: without it the test fails at [`BOUND`], not after a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body() {
    let (_m, gw) = gateway().await;
    let body = serde_json::to_string(&chat_body(MODEL, false)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: joule\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let interim = read_head(&mut s).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{interim:?}");
    assert_eq!(interim.matches("\r\n\r\n").count(), 1, "only the interim head before the body: {interim:?}");
    // The body; once it is answered, a second request on the same connection: it stays
    // reusable.
    s.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    while !has_complete_response(&rest) {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.expect("answered").unwrap();
        assert!(n > 0, "closed before the answer: {:?}", String::from_utf8_lossy(&rest));
        rest.extend_from_slice(&buf[..n]);
    }
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: joule\r\nConnection: close\r\n\r\n").await.unwrap();
    tokio::time::timeout(BOUND, s.read_to_end(&mut rest)).await.expect("answered and closed").unwrap();
    let c = Conversation { bytes: rest, closed: true };
    assert_eq!(c.statuses(), vec![200, 200], "{:?}", c.text());
    let (_, v) = c.first();
    assert_eq!(v["object"], "chat.completion", "{v}");

    // A body that turns out bad after `100 Continue` is still judged on its content.
    let bad = r#"{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: joule\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        bad.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 100 Continue\r\n"));
    s.write_all(bad.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut rest)).await.expect("answered").unwrap();
    let c = Conversation { bytes: rest, closed: true };
    assert_eq!(c.statuses(), vec![404], "{:?}", c.text());
    assert_eq!(c.first().1["error"]["code"], "model_not_found");
}

/// A request refused by what needs no body gets its final status at once, never `100
/// Continue`, and the connection closes (the announced body is not coming).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_refused_without_the_body() {
    let (_m, gw) = gateway().await;
    let head = |method: &str, path: &str, token: Option<&str>, len: u64| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        format!("{method} {path} HTTP/1.1\r\nHost: joule\r\n{auth}Content-Type: application/json\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n")
    };
    let cases = [
        ("no key", gw.port, head("POST", "/v1/chat/completions", None, 100), 401),
        ("wrong key", gw.port, head("POST", "/v1/chat/completions", Some("sk-wrong"), 100), 401),
        ("unknown path", gw.port, head("POST", "/v1/nothing-here", Some(KEY), 100), 404),
        ("wrong method", gw.port, head("POST", "/v1/models", Some(KEY), 100), 405),
        ("declared length over the limit", gw.port, head("POST", "/v1/chat/completions", Some(KEY), 64 * 1024 * 1024), 413),
        ("admin, no token", gw.admin_port, head("POST", "/admin/plugins", None, 100), 401),
    ];
    for (case, port, head, status) in cases {
        let c = converse(port, &head, None).await;
        assert!(!c.text().contains(" 100 Continue"), "{case}: {:?}", c.text());
        assert_eq!(c.statuses(), vec![status], "{case}: {:?}", c.text());
        assert!(c.closed, "{case}: the connection must close: {:?}", c.text());
        assert!(c.first().1["error"]["message"].is_string(), "{case}");
    }
}
