//! Issue 11 ("Hardening"), item 7 and pingora's bare answers — the real binary over raw TCP.
//!
//! A request head has one deadline from its first byte (`client_header_timeout_ms`): a client
//! trickling its headers a byte at a time gets an OpenAI-shaped 408 and the connection closes.
//! A connection with no request on it — new, or kept alive after one — is closed after
//! `client_idle_timeout_ms` (pingora alone keeps an idle HTTP/1.1 keep-alive connection
//! forever). A head pingora cannot parse is answered 400 with the JSON error body, not
//! pingora's bare one. And a thousand trickling connections do not stop a normal client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODEL: &str = "llama-slow";
/// Bound on anything the gateway should do within a few seconds; only a failure waits this long.
const BOUND: Duration = Duration::from_secs(15);

async fn gateway(limits: &str) -> (MockServer, Gateway) {
    // Answers at once: the latency measured below is the gateway's.
    let m = mock(MockConfig { ttft_ms: 0, tokens_per_s: 0.0, ..Default::default() }).await;
    let gw = Gateway::start(&format!("{}\n[limits]\n{limits}\n", hosted_catalog(MODEL, &[m.base_url()]))).await;
    (m, gw)
}

/// Reads until the gateway closes the connection (or resets it), bounded by [`BOUND`]; `None`
/// when it is still open then.
async fn read_until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) => return Some(bytes),
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(bytes),
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }
}

/// The status, lower-cased head and JSON body of the one response in `bytes`.
fn response(bytes: &[u8]) -> (u16, String, serde_json::Value) {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response in {text:?}"));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: body {body:?}"));
    (status, head.to_ascii_lowercase(), v)
}

fn assert_openai_error(v: &serde_json::Value, code: &str, case: &str) {
    let e = &v["error"];
    assert_eq!(e["type"], "invalid_request_error", "{case}: {v}");
    assert_eq!(e["code"], code, "{case}: {v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()) && e.get("param").is_some(), "{case}: {v}");
}

/// Sends `prefix` at once, then one byte of `trickle` every `every` until the gateway closes.
/// Returns what it answered and when, or `None` if it never closed within [`BOUND`].
async fn trickle(port: u16, prefix: &str, trickle: &str, every: Duration) -> Option<(Vec<u8>, Duration)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let start = Instant::now();
    s.write_all(prefix.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let mut rest = trickle.as_bytes().iter().cycle();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some((bytes, start.elapsed())),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(every) => {
                let b = *rest.next().unwrap_or(&b'x');
                // A refused write means the gateway is closing: read what it sent.
                let _ = s.write_all(&[b]).await;
            }
            _ = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_at_the_head_deadline_with_408() {
    let (_m, gw) = gateway("client_header_timeout_ms = 1500").await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: joule\r\n";
    // One header byte every 200 ms: each read is quick, the head never completes.
    let (bytes, after) = trickle(gw.port, head, "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Duration::from_millis(200))
        .await
        .expect("the trickling connection was never closed");
    assert!(after >= Duration::from_millis(1500), "closed before the deadline: {after:?}");
    let (status, head, v) = response(&bytes);
    assert_eq!(status, 408, "{head}");
    assert!(head.contains("connection: close") && head.contains("content-type: application/json"), "{head}");
    assert_openai_error(&v, "request_timeout", "slow head");
    metrics_containing(&gw, "joule_connections_closed_total{reason=\"head_timeout\"} 1\n").await;

    // The deadline is per head: a second request on a kept-alive connection gets its own.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: joule\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let bytes = read_until_closed(&mut s).await.expect("the second, unfinished head was never cut");
    assert_eq!(response(&bytes).0, 408);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_new_or_kept_alive() {
    let (_m, gw) = gateway("client_idle_timeout_ms = 1000").await;
    // A new connection that never sends anything: closed without a word.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let start = Instant::now();
    let bytes = read_until_closed(&mut s).await.expect("a silent new connection stayed open");
    assert!(bytes.is_empty() && start.elapsed() >= Duration::from_millis(1000), "{bytes:?} after {:?}", start.elapsed());

    // Kept alive after a request: pingora alone would wait forever for the next one.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: joule\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200") && text.contains("connection: keep-alive"), "{text}");
    let rest = read_until_closed(&mut s).await.expect("an idle keep-alive connection stayed open");
    assert!(rest.is_empty(), "nothing more is sent on an idle close: {rest:?}");
    let m = metrics_containing(&gw, "joule_connections_closed_total{reason=\"idle_timeout\"}").await;
    assert!(!m.contains("joule_connections_closed_total{reason=\"idle_timeout\"} 0\n"), "{m}");
}

/// Heads pingora refuses before any handler runs are answered with the OpenAI-shaped body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_pingora_refuses_get_the_json_error_body() {
    let (_m, gw) = gateway("").await;
    let cases: [(&str, &[u8], u16, &str); 9] = [
        ("garbage request line", b"GARBAGE\r\n\r\n", 400, "malformed_request"),
        ("header without a colon", b"GET /v1/models HTTP/1.1\r\nHost: joule\r\nNoColonHere\r\n\r\n", 400, "malformed_request"),
        ("space before the colon", b"GET /v1/models HTTP/1.1\r\nHost : joule\r\n\r\n", 400, "malformed_request"),
        ("NUL in a header", b"GET /v1/models HTTP/1.1\r\nHost: jo\0ule\r\n\r\n", 400, "malformed_request"),
        ("unknown HTTP version", b"GET /v1/models HTTP/9.9\r\n\r\n", 400, "malformed_request"),
        ("two content-lengths", b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, "malformed_request"),
        ("folded header", b"GET /v1/models HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400, "malformed_request"),
        ("TLS hello on the plain port", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400, "malformed_request"),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405, "method_not_allowed"),
    ];
    for (case, request, status, code) in cases {
        for port in [gw.port, gw.admin_port] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let _ = s.write_all(request).await;
            let bytes = read_until_closed(&mut s).await.unwrap_or_else(|| panic!("{case}: connection stayed open"));
            let (got, head, v) = response(&bytes);
            assert_eq!(got, status, "{case}: {head}");
            assert!(head.contains("content-type: application/json") && head.contains("connection: close"), "{case}: {head}");
            assert_eq!(status == 405, head.contains("allow: get, post"), "{case}: a 405 says what is allowed: {head}");
            assert_openai_error(&v, code, case);
        }
    }
    assert!(healthy(gw.port).await);
}

/// 1 000 connections trickling their heads (a byte every 2 s, under the default 10 s head
/// deadline) do not stop or stall a normal client: every normal request during the attack is
/// answered, and each slow connection is cut at its deadline. The p50/p99 of the normal
/// client with and without the attack in the same run are printed (`--nocapture`): a
/// figure for the record, not an assertion on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_heads_do_not_stop_a_normal_client() {
    let (_m, gw) = gateway("").await;
    let c = client();
    let body = chat_body(MODEL, false);
    let sample = |n: usize| {
        let c = c.clone();
        let body = body.clone();
        let gw = &gw;
        async move {
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let resp = gw.chat(&c, body.clone()).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.bytes().await.unwrap();
                times.push(t.elapsed());
            }
            times.sort();
            times
        }
    };
    let pct = |t: &[Duration], p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)];
    sample(20).await; // warm-up
    let quiet = sample(1500).await;

    const SLOW: usize = 1000;
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap_or_else(|e| panic!("slow connection {i}: {e}"));
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: joule\r\n").await.unwrap();
        slow.push(s);
    }
    let attacker = tokio::spawn(async move {
        // A byte on each connection every 2 s until the gateway has closed them all.
        let mut open = slow;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !open.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut still = Vec::with_capacity(open.len());
            for mut s in open {
                if s.write_all(b"X").await.is_ok() {
                    still.push(s);
                }
            }
            open = still;
        }
        open.len()
    });
    let attacked = sample(1500).await;
    println!(
        "normal client, {} requests each: quiet p50 {:?} p99 {:?}; during {SLOW} slow heads p50 {:?} p99 {:?}",
        quiet.len(),
        pct(&quiet, 0.5),
        pct(&quiet, 0.99),
        pct(&attacked, 0.5),
        pct(&attacked, 0.99)
    );
    assert_eq!(attacker.await.unwrap(), 0, "some slow connections outlived the head deadline by far");
    metrics_containing(&gw, &format!("joule_connections_closed_total{{reason=\"head_timeout\"}} {SLOW}\n")).await;
}

/// A client that leaves mid-stream ends the exchange at once: the upstream connection closes
/// (freeing both descriptors and stopping the upstream's generation) although the upstream
/// sends nothing more — before, joule noticed only when it next wrote, here never until the
/// two-minute idle timeout.
#[tokio::test]
async fn a_client_leaving_mid_stream_closes_the_upstream_connection_at_once() {
    // An upstream that sends the stream's head and one content event, then stays silent and
    // reports when its connection is closed.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", upstream.local_addr().unwrap());
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if !head.starts_with(b"POST ") {
                    // A health probe.
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 28\r\n\r\n{\"object\":\"list\",\"data\":[]}").await;
                    return;
                }
                let event = r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#;
                let chunk = format!("{:x}\r\n{event}\n\n\r\n", event.len() + 2);
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{chunk}");
                s.write_all(head.as_bytes()).await.unwrap();
                // Silent from here on; read (the rest of the request body, if any) until the
                // gateway closes.
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = closed_tx.send(Instant::now());
            });
        }
    });
    let gw = Gateway::start(&hosted_catalog(MODEL, &[url])).await;

    let mut client = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let body = chat_body(MODEL, true).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: joule\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"Hi\"") {
        let n = tokio::time::timeout(BOUND, client.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no first token in time; got: {}", String::from_utf8_lossy(&seen)))
            .unwrap();
        assert!(n > 0, "the gateway closed before the first token: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let left = Instant::now();
    drop(client);
    let closed = tokio::time::timeout(BOUND, closed_rx.recv())
        .await
        .expect("the upstream connection was still open 15 s after the client left")
        .unwrap();
    eprintln!("upstream connection closed {:?} after the client left", closed - left);
}
