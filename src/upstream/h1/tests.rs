//! The plain-HTTP client against a scripted server on loopback: every framing, connection
//! reuse, a reused connection the server closed, malformed answers and header injection.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use futures_util::StreamExt;
use tokio::net::TcpListener;

use super::*;

/// A server that answers the n-th request on each connection with `answers[n]` (as raw bytes)
/// and closes the connection after `per_connection` answers. Counts accepted connections.
struct Script {
    origin: Arc<Origin>,
    accepted: Arc<AtomicUsize>,
    /// The requests received, as raw bytes.
    seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

async fn serve(answers: Vec<&'static [u8]>, per_connection: usize) -> Script {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
    let (count, log) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        let mut next = 0usize;
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            for _ in 0..per_connection {
                let Some(request) = read_request(&mut conn).await else { break };
                log.lock().expect("log").push(request);
                let answer = answers[next.min(answers.len() - 1)];
                next += 1;
                if conn.write_all(answer).await.is_err() {
                    break;
                }
            }
        }
    });
    let url = reqwest::Url::parse(&format!("http://{addr}/v1/chat/completions")).expect("url");
    Script { origin: Origin::of(&url, Duration::from_secs(2)).expect("http origin"), accepted, seen }
}

/// Reads one request (head and a `content-length` body); `None` when the client closed.
async fn read_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    loop {
        let mut piece = [0u8; 1024];
        let n = conn.read(&mut piece).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&piece[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Some(buf);
        }
    }
}

fn head(origin: &Origin) -> RequestHead {
    RequestHead::post(origin, "/v1/chat/completions", &[("content-type", "application/json"), ("x-request-id", "r1")], 2).expect("head")
}

async fn whole(mut r: Response) -> Result<Vec<u8>, H1Error> {
    let mut out = Vec::new();
    while let Some(b) = r.chunk().await? {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

#[tokio::test]
async fn sends_the_request_as_written_and_reads_a_length_framed_answer() {
    let s = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"], 10).await;
    let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
    assert_eq!((r.status, r.content_type.as_deref(), r.content_length), (200, Some("application/json"), Some(7)));
    assert_eq!(whole(r).await.expect("body"), b"{\"a\":1}");
    let seen = s.seen.lock().expect("log")[0].clone();
    let text = String::from_utf8(seen).expect("utf-8");
    assert!(text.starts_with("POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:"), "{text}");
    assert!(text.contains("\r\ncontent-type: application/json\r\nx-request-id: r1\r\ncontent-length: 2\r\n\r\n{}"), "{text}");
}

#[tokio::test]
async fn keeps_the_connection_for_the_next_request() {
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let s = serve(vec![answer], 10).await;
    for _ in 0..5 {
        let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
        assert_eq!(whole(r).await.expect("body"), b"ok");
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "one connection carried all five");
}

#[tokio::test]
async fn a_reused_connection_the_server_closed_is_replaced() {
    // One answer per connection, without announcing the close: the pooled connection is dead
    // by the next request, which must still succeed on a new one.
    let s = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], 1).await;
    for _ in 0..3 {
        let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
        assert_eq!(whole(r).await.expect("body"), b"ok");
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(s.seen.lock().expect("log").len(), 3, "each request reached the server once");
}

#[tokio::test]
async fn reads_chunked_bodies_with_extensions_and_trailers_piece_by_piece() {
    let s = serve(
        vec![b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n"],
        10,
    )
    .await;
    let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
    assert_eq!(r.content_length, None);
    let pieces: Vec<Bytes> = r.into_stream().map(|p| p.expect("piece")).collect().await;
    assert_eq!(pieces.concat(), b"hello, world");
    // The trailers were read: the connection is clean and reused.
    let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
    assert_eq!(whole(r).await.expect("body"), b"hello, world");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_delimited_by_the_close_is_read_and_the_connection_not_reused() {
    let s = serve(vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"], 1).await;
    let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
    assert_eq!(whole(r).await.expect("body"), b"until the end");
    assert!(s.origin.idle.is_empty());
}

#[tokio::test]
async fn skips_interim_answers_and_reads_error_statuses() {
    let s = serve(vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"], 10).await;
    let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
    assert_eq!((r.status, r.retry_after.as_deref()), (429, Some("7")));
}

#[tokio::test]
async fn broken_and_malformed_answers_are_errors() {
    // A body shorter than its length, then the close.
    let s = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], 1).await;
    let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("head");
    assert!(matches!(whole(r).await, Err(H1Error::Closed)));
    for bad in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcdef\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
    ] {
        let s = serve(vec![bad], 1).await;
        let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("head");
        assert!(matches!(whole(r).await, Err(H1Error::Malformed(_))), "{}", String::from_utf8_lossy(bad));
    }
    for bad in [
        &b"garbage\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
    ] {
        let s = serve(vec![bad], 1).await;
        let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await;
        assert!(matches!(r, Err(H1Error::Malformed(_))), "{}", String::from_utf8_lossy(bad));
    }
    // A head that never ends is bounded.
    static ENDLESS: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut v = b"HTTP/1.1 200 OK\r\n".to_vec();
        while v.len() < MAX_HEAD + 1024 {
            v.extend_from_slice(b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        v
    });
    let s = serve(vec![ENDLESS.as_slice()], 1).await;
    assert!(matches!(s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await, Err(H1Error::Malformed(_))));
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let url = reqwest::Url::parse(&format!("http://{addr}/v1/chat/completions")).expect("url");
    let origin = Origin::of(&url, Duration::from_secs(2)).expect("origin");
    assert!(matches!(origin.send(head(&origin), Bytes::new()).await, Err(H1Error::Connect(_))));
}

#[test]
fn a_header_value_with_a_line_break_is_never_sent() {
    let url = reqwest::Url::parse("http://backend.internal/v1/chat/completions").expect("url");
    let origin = Origin::of(&url, Duration::from_secs(2)).expect("origin");
    assert_eq!(origin.authority(), "backend.internal");
    for bad in ["a\r\nx-injected: 1", "a\nb", "a\0b"] {
        assert!(matches!(RequestHead::post(&origin, "/", &[("x-request-id", bad)], 0), Err(H1Error::HeaderValue("x-request-id"))));
    }
    assert!(Origin::of(&reqwest::Url::parse("https://api.example.com/v1").expect("url"), Duration::from_secs(1)).is_none());
}

#[tokio::test]
async fn large_answers_arrive_whole_in_growing_reads() {
    static LENGTH: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut v = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 100_000).into_bytes();
        v.extend((0..100_000u32).map(|i| b'a' + (i % 26) as u8));
        v
    });
    static CHUNKED: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut v = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..10 {
            v.extend_from_slice(b"2710\r\n");
            v.extend((0..10_000u32).map(|i| b'a' + (i % 26) as u8));
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"0\r\n\r\n");
        v
    });
    let expected: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 10_000 % 26) as u8).collect();
    let s = serve(vec![LENGTH.as_slice(), CHUNKED.as_slice()], 10).await;
    let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
    let got = whole(r).await.expect("length-framed body");
    assert_eq!(got.len(), 100_000);
    assert!(got.iter().enumerate().all(|(i, &c)| c == b'a' + (i % 26) as u8));
    let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
    assert_eq!(whole(r).await.expect("chunked body"), expected);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

/// A stream answer of about 3 KiB: more than the first read takes, so a reader dropped after
/// its first piece leaves the rest in the socket.
fn long_stream(end: bool) -> &'static [u8] {
    let event = format!("data: {}\n\n", "x".repeat(3000));
    let mut answer = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n{:x}\r\ndata: [DONE]\n\n\r\n", event.len(), 14);
    if end {
        answer.push_str("0\r\n\r\n");
    }
    Box::leak(answer.into_bytes().into_boxed_slice())
}

#[tokio::test]
async fn a_body_dropped_after_its_end_arrived_gives_its_connection_back() {
    let s = serve(vec![long_stream(true)], 10).await;
    let mut r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
    let first = r.chunk().await.expect("piece").expect("a piece");
    assert!(first.len() < 3000, "the rest is still in the socket: {}", first.len());
    drop(r);
    assert_eq!(s.origin.idle.len(), 1, "read on to its end and kept");
    let r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
    assert!(whole(r).await.expect("body").ends_with(b"data: [DONE]\n\n"));
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "the second request reused it");
}

#[tokio::test]
async fn a_body_dropped_before_its_end_arrived_closes_its_connection() {
    // The end never comes; or it is further than a dropped reader reads past (all sent).
    let too_long = format!("HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n{}", "y".repeat(100_000));
    let too_long: &'static [u8] = Box::leak(too_long.into_bytes().into_boxed_slice());
    for answer in [long_stream(false), too_long] {
        let s = serve(vec![answer], 10).await;
        let mut r = s.origin.send(head(&s.origin), Bytes::from_static(b"{}")).await.expect("answer");
        r.chunk().await.expect("piece").expect("a piece");
        drop(r);
        assert!(s.origin.idle.is_empty(), "{}", String::from_utf8_lossy(&answer[..40]));
    }
}
