//! End-to-end tests of the gateway core: the real binary on ephemeral loopback ports against
//! in-process mock upstreams.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const MODEL: &str = "llama-test";

async fn gateway_with(mocks: &[&MockServer], extra: &str) -> Gateway {
    let urls: Vec<String> = mocks.iter().map(|m| m.base_url()).collect();
    Gateway::start(&format!("{}\n{extra}", hosted_catalog(MODEL, &urls))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_routes_to_cheapest_and_rewrites_model() {
    let a = mock(MockConfig::default()).await;
    let b = mock(MockConfig::default()).await;
    let gw = gateway_with(&[&a, &b], "").await;
    let c = client();
    let resp = gw.chat(&c, chat_body(MODEL, false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-joule-deployment"], "dep0");
    assert_eq!(h["x-joule-data-center"], "dc0");
    assert!(h["x-joule-strategy"].to_str().unwrap().starts_with("price"));
    assert!(h["x-request-id"].to_str().unwrap().starts_with("req_"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let seen = a.last_request().expect("dep0 got the request");
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["model"], "upstream-0");
    assert_eq!(b.requests(), 0);
    // The client's key never travels upstream.
    assert!(seen.header("authorization").is_none_or(|v| !v.contains(KEY)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gets_its_own_credentials_never_the_clients() {
    let m = mock(MockConfig { require_bearer: Some(PROVIDER_SECRET.into()), ..Default::default() }).await;
    let extra = format!(
        "[[providers]]\nid = \"prov\"\nbase_url = \"{}\"\napi_key_env = \"TEST_PROVIDER_KEY\"\n\n[[models]]\nid = \"tp\"\ncategory = \"third-party\"\n[[models.deployments]]\nid = \"tp-route\"\nprovider = \"prov\"\nupstream_model = \"gpt-x\"\nlist_price_input = 1.0\nlist_price_output = 2.0\n",
        m.base_url()
    );
    let mut gw = Gateway::start_with(&extra, "", &[("TEST_PROVIDER_KEY", PROVIDER_SECRET)]).await;
    let c = client();
    let resp = gw.chat(&c, chat_body("tp", false)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let seen = m.last_request().unwrap();
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {PROVIDER_SECRET}").as_str()));
    assert!(resp_headers_price(&gw, &c).await > 1.0, "list price + 5% fee");
    // Neither secret appears in any log line.
    gw.terminate(Duration::from_secs(15));
    let logs = gw.logs();
    assert!(logs.contains("\"status\":200"), "access line present");
    assert!(!logs.contains(PROVIDER_SECRET) && !logs.contains(KEY), "secret leaked:\n{logs}");
}

async fn resp_headers_price(gw: &Gateway, c: &reqwest::Client) -> f64 {
    let resp = gw.chat(c, chat_body("tp", false)).send().await.unwrap();
    resp.headers()["x-joule-price-input"].to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_request_errors_are_openai_shaped() {
    let m = mock(MockConfig::default()).await;
    let gw = gateway_with(&[&m], "").await;
    let c = client();
    let url = format!("{}/chat/completions", gw.base());
    let body = chat_body(MODEL, false);
    expect_error(c.post(&url).json(&body).send().await.unwrap(), 401, Some("invalid_api_key")).await;
    expect_error(c.post(&url).bearer_auth("sk-wrong").json(&body).send().await.unwrap(), 401, Some("invalid_api_key")).await;
    expect_error(c.get(format!("{}/models", gw.base())).send().await.unwrap(), 401, Some("invalid_api_key")).await;
    expect_error(gw.chat(&c, chat_body("nope", false)).send().await.unwrap(), 404, Some("model_not_found")).await;
    let v = expect_error(gw.chat(&c, chat_body(&format!("{MODEL}@cheapest"), false)).send().await.unwrap(), 400, None).await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("latency") && msg.contains("price") && msg.contains("tokenrate"), "{msg}");
    expect_error(gw.chat(&c, chat_body(&format!("{MODEL}@"), false)).send().await.unwrap(), 400, None).await;
    expect_error(gw.chat(&c, chat_body(&format!("{MODEL}@@price"), false)).send().await.unwrap(), 400, None).await;
    for bad in [
        "{not json",
        "[]",
        r#"{"model":"llama-test"}"#,
        r#"{"model":"llama-test","messages":"hi"}"#,
        r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"llama-test","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
        "",
    ] {
        let resp = c.post(&url).bearer_auth(KEY).header("content-type", "application/json").body(bad).send().await.unwrap();
        expect_error(resp, 400, None).await;
    }
    expect_error(c.get(format!("{}/nope", gw.base())).bearer_auth(KEY).send().await.unwrap(), 404, Some("unknown_url")).await;
    expect_error(c.get(&url).bearer_auth(KEY).send().await.unwrap(), 405, None).await;
    expect_error(c.delete(format!("{}/models", gw.base())).bearer_auth(KEY).send().await.unwrap(), 405, None).await;
    assert_eq!(m.requests(), 0, "no refused request reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mib_body_reaches_upstream_byte_exact() {
    let m = mock(MockConfig::default()).await;
    let gw = gateway_with(&[&m], "").await;
    let filler = "abcdefghij\u{e9}\"\\ ".repeat(2 * 1024 * 1024 / 16);
    let body = format!(
        r#"{{"model": "{MODEL}",  "messages": [{{"role":"user","content":"{}"}}], "temperature": 0.50, "x_extra": {{"k": [1, 2.0, "3"]}}}}"#,
        filler.replace('\\', "\\\\").replace('"', "\\\"")
    );
    assert!(body.len() > 2 * 1024 * 1024);
    let resp = client()
        .post(format!("{}/chat/completions", gw.base()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let expected = body.replacen(&format!(r#""model": "{MODEL}""#), r#""model": "upstream-0""#, 1);
    let seen = m.last_request().unwrap();
    assert_eq!(seen.body.len(), expected.len());
    assert!(seen.body == expected.as_bytes(), "body not byte-exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_limit_is_413() {
    let m = mock(MockConfig::default()).await;
    let gw = gateway_with(&[&m], "[limits]\nmax_body_bytes = 1048576\n").await;
    let big = format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(2 * 1024 * 1024));
    let c = client();
    let url = format!("{}/chat/completions", gw.base());
    let resp = c.post(&url).bearer_auth(KEY).body(big.clone()).send().await.unwrap();
    expect_error(resp, 413, Some("request_too_large")).await;
    // Chunked (no content-length): refused once the limit is crossed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.into_bytes().chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = c.post(&url).bearer_auth(KEY).body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))).send().await;
    // The gateway answers 413 and closes; depending on timing the client sees the 413 or a reset.
    if let Ok(resp) = resp {
        expect_error(resp, 413, Some("request_too_large")).await;
    }
    assert_eq!(m.requests(), 0);
    // Still serving.
    let resp = gw.chat(&c, chat_body(MODEL, false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_really_streams() {
    let m = mock(MockConfig { ttft_ms: 50, tokens_per_s: 10.0, tokens: 6, ..Default::default() }).await;
    let gw = gateway_with(&[&m], "").await;
    let c = client();
    let resp = gw.chat(&c, chat_body(MODEL, true)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let got = read_sse(resp, Duration::from_secs(20)).await;
    let times = got.content_times();
    assert_eq!(times.len(), 6, "{:?}", got.data());
    assert_spread(&times, Duration::from_millis(100), "chat stream");
    assert_eq!(got.data().last().copied(), Some("[DONE]"));
    // The client did not ask for usage: the usage-only chunk is withheld...
    assert!(got.json().iter().all(|v| v["usage"].is_null()), "{:?}", got.data());
    // ...but the gateway asked the upstream for it.
    let up: serde_json::Value = serde_json::from_slice(&m.last_request().unwrap().body).unwrap();
    assert_eq!(up["stream_options"]["include_usage"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_usage_chunk_only_when_asked() {
    let m = mock(MockConfig { tokens: 3, ..Default::default() }).await;
    let gw = gateway_with(&[&m], "").await;
    let c = client();
    let mut body = chat_body(MODEL, true);
    body["stream_options"] = json!({"include_usage": true});
    let got = read_sse(gw.chat(&c, body).send().await.unwrap(), Duration::from_secs(20)).await;
    let usage: Vec<_> = got.json().into_iter().filter(|v| !v["usage"].is_null()).collect();
    assert_eq!(usage.len(), 1, "{:?}", got.data());
    assert_eq!(usage[0]["usage"]["completion_tokens"], 3);
    assert_eq!(got.data().last().copied(), Some("[DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sse_framing_variants() {
    for cfg in [
        MockConfig { sse_framing: SseFraming::Crlf, tokens: 5, ..Default::default() },
        MockConfig { sse_comments: true, tokens: 5, ..Default::default() },
        MockConfig { multiline_data: true, tokens: 5, ..Default::default() },
        MockConfig { sse_framing: SseFraming::Crlf, sse_comments: true, multiline_data: true, tokens: 5, ..Default::default() },
    ] {
        let m = mock(cfg.clone()).await;
        let gw = gateway_with(&[&m], "").await;
        let got = read_sse(gw.chat(&client(), chat_body(MODEL, true)).send().await.unwrap(), Duration::from_secs(20)).await;
        assert_eq!(got.content_times().len(), 5, "{cfg:?}: {:?}", got.data());
        assert_eq!(got.data().last().copied(), Some("[DONE]"), "{cfg:?}");
        assert!(got.json().iter().all(|v| v.get("error").is_none()), "{cfg:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_failure_ends_with_error_event() {
    for failure in [Failure::DropMidStream { after_tokens: 2 }, Failure::GarbageSse { after_tokens: 2 }] {
        let m = mock(MockConfig { failure, tokens: 10, ..Default::default() }).await;
        let spare = mock(MockConfig::default()).await;
        let gw = gateway_with(&[&m, &spare], "").await;
        let got = read_sse(gw.chat(&client(), chat_body(MODEL, true)).send().await.unwrap(), Duration::from_secs(20)).await;
        assert_eq!(got.content_times().len(), 2, "{failure:?}: {:?}", got.data());
        let last = got.json().pop().expect("an event");
        assert!(last["error"]["message"].is_string(), "{failure:?}: last event {last}");
        assert!(!got.data().contains(&"[DONE]"), "not a clean end");
        assert_eq!(spare.requests(), 0, "never retried after bytes reached the client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_before_first_byte() {
    for failure in [
        Failure::Refuse,
        Failure::Status500,
        Failure::Status429 { retry_after_s: 3 },
        Failure::SlowHeaders { delay_ms: 3000 },
    ] {
        let bad = mock(MockConfig { failure, ..Default::default() }).await;
        let good = mock(MockConfig::default()).await;
        let gw = gateway_with(&[&bad, &good], "[limits]\nfirst_byte_timeout_ms = 500\n").await;
        for stream in [false, true] {
            let resp = gw.chat(&client(), chat_body(MODEL, stream)).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{failure:?}");
            assert_eq!(resp.headers()["x-joule-deployment"], "dep1", "{failure:?}");
            if stream {
                let got = read_sse(resp, Duration::from_secs(20)).await;
                assert_eq!(got.data().last().copied(), Some("[DONE]"));
            }
        }
        assert_eq!(good.requests(), 2, "{failure:?}");
        metrics_containing(&gw, "joule_upstream_failures_total{deployment=\"dep0\"").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_deployments_failed() {
    // 5xx everywhere → 502
    let a = mock(MockConfig { failure: Failure::Status500, ..Default::default() }).await;
    let b = mock(MockConfig { failure: Failure::Refuse, ..Default::default() }).await;
    let gw = gateway_with(&[&a, &b], "").await;
    let v = expect_error(gw.chat(&client(), chat_body(MODEL, false)).send().await.unwrap(), 502, Some("upstream_failed")).await;
    assert!(!v.to_string().contains("127.0.0.1"), "no upstream address in errors: {v}");
    drop(gw);
    // 429 everywhere → 503 with retry-after
    let a = mock(MockConfig { failure: Failure::Status429 { retry_after_s: 7 }, ..Default::default() }).await;
    let b = mock(MockConfig { failure: Failure::Status429 { retry_after_s: 4 }, ..Default::default() }).await;
    let gw = gateway_with(&[&a, &b], "").await;
    let resp = gw.chat(&client(), chat_body(MODEL, true)).send().await.unwrap();
    assert_eq!(resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()), Some("4".into()));
    expect_error(resp, 503, Some("upstream_unavailable")).await;
    drop(gw);
    // timeouts everywhere → 504
    let a = mock(MockConfig { failure: Failure::SlowHeaders { delay_ms: 5000 }, ..Default::default() }).await;
    let gw = gateway_with(&[&a], "[limits]\nfirst_byte_timeout_ms = 300\n").await;
    expect_error(gw.chat(&client(), chat_body(MODEL, false)).send().await.unwrap(), 504, Some("upstream_timeout")).await;
    drop(gw);
    // nothing listening → 502
    let (_reserved, refusing) = refusing_port();
    let gw = Gateway::start(&hosted_catalog(MODEL, &[format!("http://127.0.0.1:{refusing}/v1")])).await;
    expect_error(gw.chat(&client(), chat_body(MODEL, false)).send().await.unwrap(), 502, Some("upstream_failed")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategy_tags_steer_and_are_order_independent() {
    let a = mock(MockConfig::default()).await;
    let b = mock(MockConfig::default()).await;
    let c3 = mock(MockConfig::default()).await;
    let gw = gateway_with(&[&a, &b, &c3], "").await;
    let c = client();
    // dep0 is cheapest, dep2 has the lowest prior TTFT and the highest prior token rate.
    let dep = |r: &reqwest::Response| r.headers()["x-joule-deployment"].to_str().unwrap().to_string();
    let r = gw.chat(&c, chat_body(&format!("{MODEL}@latency"), false)).send().await.unwrap();
    assert_eq!(dep(&r), "dep2");
    assert!(r.headers()["x-joule-strategy"].to_str().unwrap().starts_with("latency"));
    let r = gw.chat(&c, chat_body(&format!("{MODEL}@tokenrate"), false)).send().await.unwrap();
    assert_eq!(dep(&r), "dep2");
    let r1 = gw.chat(&c, chat_body(&format!("{MODEL}@price@latency"), false)).send().await.unwrap();
    let r2 = gw.chat(&c, chat_body(&format!("{MODEL}@latency@price"), false)).send().await.unwrap();
    assert_eq!(dep(&r1), dep(&r2));
    assert_eq!(r1.headers()["x-joule-strategy"], r2.headers()["x-joule-strategy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_endpoints_and_health() {
    let m = mock(MockConfig::default()).await;
    let gw = gateway_with(&[&m], "").await;
    let c = client();
    let v: serde_json::Value = c.get(format!("{}/models", gw.base())).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["object"], "list");
    let model = &v["data"][0];
    assert_eq!(model["id"], MODEL);
    assert_eq!(model["object"], "model");
    assert!(model["created"].is_u64() && model["owned_by"].is_string());
    assert_eq!(model["category"], "hosted");
    assert_eq!(model["deployments"][0]["data_center"], "dc0");
    assert!(model["price"]["input"].is_f64());
    let one: serde_json::Value = c.get(format!("{}/models/{MODEL}", gw.base())).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["id"], MODEL);
    expect_error(c.get(format!("{}/models/nope", gw.base())).bearer_auth(KEY).send().await.unwrap(), 404, Some("model_not_found")).await;
    let h = c.get(format!("http://127.0.0.1:{}/healthz", gw.port)).send().await.unwrap();
    assert_eq!(h.status(), 200);
    gw.chat(&c, chat_body(MODEL, false)).send().await.unwrap();
    let metrics = metrics_containing(&gw, "joule_requests_total{deployment=\"dep0\",model=\"llama-test\",status=\"200\"} 1").await;
    assert!(metrics.contains("joule_request_duration_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_speaks_http1_and_http2() {
    let m = mock(MockConfig::default()).await;
    let ca = TestCa::new().unwrap();
    let id = ca.issue(&["localhost"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &id.cert_chain_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &id.key_pem).unwrap();
    let server_extra = format!(
        "[server.tls]\nlisten = [\"127.0.0.1:{{tls_port}}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    let gw = Gateway::start_with(&hosted_catalog(MODEL, &[m.base_url()]), &server_extra, &[]).await;
    let tls_port = gw.tls_port.unwrap();
    let root = reqwest::Certificate::from_pem(ca.ca_cert_pem.as_bytes()).unwrap();
    for (h2, version) in [(false, reqwest::Version::HTTP_11), (true, reqwest::Version::HTTP_2)] {
        let mut b = reqwest::Client::builder().no_proxy().add_root_certificate(root.clone());
        if !h2 {
            b = b.http1_only();
        }
        let c = b.build().unwrap();
        let url = format!("https://localhost:{tls_port}/v1/chat/completions");
        let resp = c.post(&url).bearer_auth(KEY).json(&chat_body(MODEL, true)).send().await.unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        let got = read_sse(resp, Duration::from_secs(20)).await;
        assert_eq!(got.data().last().copied(), Some("[DONE]"));
    }
    let _ = gw;
}

/// h2c: HTTP/2 with prior knowledge on the cleartext listener, beside HTTP/1.1 — streams
/// arrive event by event either way; curl's `--http2-prior-knowledge` works; a short
/// HTTP/1.1 head (shorter than the 24-byte preface pingora peeks for) is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_listener_speaks_http1_and_h2c() {
    // 5 tokens at 10/s: events 100 ms apart upstream.
    let m = mock(MockConfig { tokens: 5, tokens_per_s: 10.0, ttft_ms: 0, ..Default::default() }).await;
    let gw = Gateway::start(&hosted_catalog(MODEL, &[m.base_url()])).await;
    for (h2, version) in [(false, reqwest::Version::HTTP_11), (true, reqwest::Version::HTTP_2)] {
        let mut b = reqwest::Client::builder().no_proxy();
        b = if h2 { b.http2_prior_knowledge() } else { b.http1_only() };
        let c = b.build().unwrap();
        let resp = gw.chat(&c, chat_body(MODEL, true)).send().await.unwrap();
        assert_eq!((resp.version(), resp.status().as_u16()), (version, 200));
        let got = read_sse(resp, Duration::from_secs(20)).await;
        assert_eq!(got.data().last().copied(), Some("[DONE]"), "h2 {h2}");
        let times = got.content_times();
        assert_eq!(times.len(), 5, "h2 {h2}");
        assert_spread(&times, Duration::from_millis(100), if h2 { "h2" } else { "http/1.1" });
        let models = c.get(format!("{}/models", gw.base())).bearer_auth(KEY).send().await.unwrap();
        assert_eq!((models.version(), models.status().as_u16()), (version, 200));
    }
    // curl, as a user would try it.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_version} %{http_code}"])
        .arg(format!("{}/chat/completions", gw.base()))
        .args(["-H", &format!("Authorization: Bearer {KEY}"), "-H", "Content-Type: application/json"])
        .args(["-d", &chat_body(MODEL, true).to_string()])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("2 200"), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("data: [DONE]"), "{text}");
    // The smallest HTTP/1.1 request there is: 18 bytes, under the preface's 24.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await.expect("answered").unwrap();
    assert!(answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_over_tls_verifies_certificates() {
    let ca = TestCa::new().unwrap();
    let m = MockServer::start_tls(MockConfig::default(), ca.issue(&["localhost"]).unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.ca_cert_pem).unwrap();
    let catalog = |ca_line: String| {
        format!(
            "[[providers]]\nid = \"prov\"\nbase_url = \"https://localhost:{}/v1\"\n{ca_line}\n[[models]]\nid = \"tp\"\ncategory = \"third-party\"\n[[models.deployments]]\nid = \"tp-route\"\nprovider = \"prov\"\nlist_price_input = 1.0\nlist_price_output = 2.0\n",
            m.addr().port()
        )
    };
    let gw = Gateway::start(&catalog(format!("ca_file = \"{}\"", ca_path.display()))).await;
    let resp = gw.chat(&client(), chat_body("tp", false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-joule-data-center").is_none(), "provider routes have no data center");
    drop(gw);
    // Without the test CA the certificate is not trusted: verification is on.
    let gw = Gateway::start(&catalog(String::new())).await;
    expect_error(gw.chat(&client(), chat_body("tp", false)).send().await.unwrap(), 502, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_streams() {
    let m = mock(MockConfig { ttft_ms: 10, tokens_per_s: 10.0, tokens: 12, ..Default::default() }).await;
    let mut gw = gateway_with(&[&m], "").await;
    let resp = gw.chat(&client(), chat_body(MODEL, true)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let pid = gw.pid();
    let reader = tokio::spawn(read_sse(resp, Duration::from_secs(20)));
    // SIGTERM while the stream is in flight.
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let got = reader.await.unwrap();
    assert_eq!(got.data().last().copied(), Some("[DONE]"), "stream finished despite SIGTERM");
    let started = Instant::now();
    let status = gw.terminate(Duration::from_secs(8)).expect("exited after draining");
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn bad_config_lists_every_problem() {
    let out = check_config(
        r#"
[server]
listen = ["not-an-address"]
[server.tls]
listen = ["127.0.0.1:0"]
cert_file = "missing-cert.pem"
key_file = "missing-key.pem"
[log]
format = "xml"
[[models]]
id = "m"
category = "weird"
[[models.deployments]]
id = "d"
data_center = "nowhere"
url = "ftp://x"
[[keys]]
name = "k"
sha256 = "zz"
"#,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.listen[0]",
        "server.tls",
        "missing-cert.pem",
        "log.format",
        "models[0].category",
        "models[0].deployments[0].data_center",
        "models[0].deployments[0].url",
        "models[0].deployments[0].base_price_input",
        "keys[0].sha256",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bogus.toml");
    std::fs::write(&path, "[server]\nlisten = [\"127.0.0.1:1\"]\nbogus = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_joule")).arg("serve").arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}

#[test]
fn example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/joule.example.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_joule"))
        .args(["check-config", "--config", path])
        .env("OPENAI_API_KEY", "sk-example")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The demo's generated config goes through the same validation.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_joule")).args(["demo", "--print-config"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("[[models.deployments]]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_joule")).args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
    // The harness recognises it, and so retries such a start on fresh ports.
    assert!(ports::port_taken(&err), "{err}");
}

#[test]
fn only_a_port_in_use_counts_as_a_lost_port() {
    // As pingora logs it when its own bind finds the port taken (it retries for 30 s).
    let pingora = r#"{"timestamp":"2026-11-26T13:13:35.688595Z","level":"WARN","fields":{"message":"127.0.0.1:48111 is in use, will try again","log.target":"pingora_core::listeners::l4"},"target":"pingora_core::listeners::l4"}"#;
    assert!(ports::port_taken(pingora));
    assert!(!ports::port_taken("error: cannot listen on 192.0.2.1:8080: Cannot assign requested address (os error 99)"));
    assert!(!ports::port_taken("error: server.listen[0]: not an address"));
}

#[test]
fn listening_is_told_apart_from_bound_and_from_other_processes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(ports::listens_on(std::process::id(), port));
    // PID 1 is never this test's process.
    assert!(!ports::listens_on(1, port));
    drop(listener);
    assert!(!ports::listens_on(std::process::id(), port));
    let (_bound, port) = refusing_port();
    assert!(!ports::listens_on(std::process::id(), port));
}

/// `joule serve` on `ports`, with the harness's minimal config in `dir`.
fn spawn_serve(dir: &std::path::Path, api: u16, admin: u16, extra: &str) -> std::process::Child {
    let path = dir.join("joule.toml");
    let config = format!("[server]\nlisten = [\"127.0.0.1:{api}\"]\nadmin_listen = \"127.0.0.1:{admin}\"\nthreads = 1\n{extra}\n{}", keys_toml());
    std::fs::write(&path, config).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_joule")).arg("serve").arg("--config").arg(&path).stderr(log_file(&dir.join("log"))).spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_loses_its_port_is_retried_on_fresh_ports() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let m = mock(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut attempts = 0;
    let (mut child, ports) = serve(0, &dir.path().join("log"), |p| {
        attempts += 1;
        // The first attempt gets a port another process took since it was picked.
        let api = if attempts == 1 { taken_port } else { p.api };
        spawn_serve(dir.path(), api, p.admin, &hosted_catalog(MODEL, &[m.base_url()]))
    })
    .await;
    assert_eq!(attempts, 2);
    assert_ne!(ports.api, taken_port);
    let v: serde_json::Value = client().get(format!("http://127.0.0.1:{}/v1/models", ports.api)).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["data"][0]["id"], MODEL, "{v}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_otherwise_is_not_retried() {
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let mut attempts = 0;
    let started = std::panic::AssertUnwindSafe(serve(0, &dir.path().join("log"), |p| {
        attempts += 1;
        spawn_serve(dir.path(), p.api, p.admin, "[limits]\nno_such_limit = 1\n")
    }))
    .catch_unwind()
    .await;
    let message = started.err().and_then(|e| e.downcast::<String>().ok()).expect("the start panics");
    assert!(message.contains("joule exited early") && message.contains("no_such_limit"), "{message}");
    assert_eq!(attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_every_model_with_the_demo_key() {
    let dir = tempfile::tempdir().unwrap();
    let (banner, log) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let (mut child, ports) = serve(0, &log, |p| {
        std::process::Command::new(env!("CARGO_BIN_EXE_joule"))
            .args(["demo", "--listen", &format!("127.0.0.1:{}", p.api), "--admin-listen", &format!("127.0.0.1:{}", p.admin)])
            .stdout(log_file(&banner))
            .stderr(log_file(&log))
            .spawn()
            .unwrap()
    })
    .await;
    let (port, admin) = (ports.api, ports.admin);
    // Printed before the listeners start.
    let banner = std::fs::read_to_string(&banner).unwrap();
    assert!(banner.contains(&format!("http://127.0.0.1:{port}/v1")) && banner.contains("sk-joule-demo"), "{banner}");
    let c = client();
    // Energy prices replay while the demo runs, so the cheapest data center may change.
    let llama8b: &[&str] = &["caiso-sp15", "ercot-houston", "pjm-chicago"];
    let llama1b: &[&str] = &["caiso-sp15", "ercot-houston"];
    for (model, dcs) in [("llama-3.1-8b-instruct", llama8b), ("llama-3.2-1b-instruct", llama1b), ("gpt-4o-mini", &[][..]), ("claude-sonnet-4", &[][..])] {
        let resp = c
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .bearer_auth("sk-joule-demo")
            .json(&chat_body(model, true))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        let dc = resp.headers().get("x-joule-data-center").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(dc.is_some(), !dcs.is_empty(), "{model}");
        assert!(dc.is_none_or(|d| dcs.contains(&d.as_str())), "{model}");
        let got = read_sse(resp, Duration::from_secs(20)).await;
        assert_eq!(got.data().last().copied(), Some("[DONE]"), "{model}");
    }
    let get = async |path: &str| -> serde_json::Value {
        let url = format!("http://127.0.0.1:{port}/v1/{path}");
        c.get(url).bearer_auth("sk-joule-demo").send().await.unwrap().json().await.unwrap()
    };
    let free = get("models/llama-3.2-1b-instruct").await;
    assert_eq!(free["category"], "free");
    assert_eq!(free["price"]["input"], 0.0);
    // The bundled July-2023 prices are replayed: every data center has a fresh price.
    let llama = get("models/llama-3.1-8b-instruct").await;
    for d in llama["deployments"].as_array().unwrap() {
        assert_eq!(d["energy"]["stale"], false, "{d}");
        assert!(d["energy"]["interval_start"].as_str().unwrap().starts_with("2023-07-1"), "{d}");
    }
    let history = get("models/llama-3.1-8b-instruct/prices?window=24h").await;
    assert!(history["best"].as_array().unwrap().len() >= 90, "a day of history from the start: {history}");
    // The admin API answers to the demo token and keeps state in the demo's SQLite file.
    let admin_url = format!("http://127.0.0.1:{admin}/admin");
    let r = c.get(format!("{admin_url}/projects")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.post(format!("{admin_url}/keys")).bearer_auth("joule-demo-admin").json(&serde_json::json!({"name": "dev-key"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let key: serde_json::Value = r.json().await.unwrap();
    let resp = c
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(key["key"].as_str().unwrap())
        .json(&chat_body("llama-3.2-1b-instruct", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn demo_refuses_its_default_admin_token_off_loopback() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_joule"))
        .args(["demo", "--listen", &format!("127.0.0.1:{}", free_port()), "--admin-listen", "0.0.0.0:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token"), "{err}");
}
