//! Issue 11 ("Hardening"): what a broken upstream can do to a request, and what joule does
//! about it — the real binary against in-process mock upstreams, one class per test.
//!
//! An unreadable upstream answer is not a success (a 2xx non-stream body that is not a JSON
//! object, a stream request answered with another content type than `text/event-stream`), and
//! a non-stream answer is read whole before the client sees anything, so a body that breaks,
//! stalls or is too large moves on to the next deployment exactly like a failure before the
//! headers. Each failure is counted in `joule_upstream_failures_total{deployment,kind}` and
//! against the deployment's breaker.

mod common;

use std::time::{Duration, Instant};

use common::*;

const MODEL: &str = "llama-hard";
const ADMIN_TOKEN: &str = "hardening-admin-token";

async fn gateway_with(mocks: &[&MockServer], extra: &str) -> Gateway {
    let urls: Vec<String> = mocks.iter().map(|m| m.base_url()).collect();
    let admin = format!("\n[admin]\ntoken_sha256 = \"{}\"\n", joule::secret::KeyHash::of(ADMIN_TOKEN).to_hex());
    Gateway::start(&format!("{}\n{extra}\n{admin}", hosted_catalog(MODEL, &urls))).await
}

/// Sends a chat request and asserts that `dep1` answered it completely.
async fn answered_by_dep1(gw: &Gateway, stream: bool, case: &str) {
    let resp = gw.chat(&client(), chat_body(MODEL, stream)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{case} stream={stream}");
    assert_eq!(resp.headers()["x-joule-deployment"], "dep1", "{case} stream={stream}");
    if stream {
        let got = read_sse(resp, Duration::from_secs(20)).await;
        assert_eq!(got.data().last().copied(), Some("[DONE]"), "{case}: {:?}", got.data());
    } else {
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion", "{case}: {v}");
        assert!(v["usage"]["cost"].is_number(), "{case}: priced: {v}");
    }
}

fn failures(deployment: &str, kind: &str, n: u64) -> String {
    format!("joule_upstream_failures_total{{deployment=\"{deployment}\",kind=\"{kind}\"}} {n}\n")
}

async fn deployment_state(gw: &Gateway, id: &str) -> serde_json::Value {
    let resp = client().get(format!("{}/admin/deployments", gw.admin())).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["data"].as_array().unwrap().iter().find(|d| d["id"] == id).cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_2xx_answers_fail_over() {
    // (failure, also as an answer to a stream request)
    let cases = [
        (Failure::GarbageSse { after_tokens: 0 }, false),
        (Failure::HtmlAnswer, true),
        (Failure::EmptyAnswer, true),
    ];
    for (failure, stream_too) in cases {
        let bad = mock(MockConfig { failure, ..Default::default() }).await;
        let good = mock(MockConfig::default()).await;
        let gw = gateway_with(&[&bad, &good], "").await;
        let case = failure.to_string();
        answered_by_dep1(&gw, false, &case).await;
        let mut n = 1;
        if stream_too {
            answered_by_dep1(&gw, true, &case).await;
            n += 1;
        }
        assert_eq!((bad.requests(), good.requests()), (n, n), "{case}");
        metrics_containing(&gw, &failures("dep0", "unreadable_answer", n)).await;
        let state = deployment_state(&gw, "dep0").await;
        assert_eq!(state["failures"], n, "{case}: {state}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_unreadable_is_502_upstream_failed() {
    let a = mock(MockConfig { failure: Failure::GarbageSse { after_tokens: 0 }, ..Default::default() }).await;
    let b = mock(MockConfig { failure: Failure::HtmlAnswer, ..Default::default() }).await;
    let gw = gateway_with(&[&a, &b], "").await;
    for stream in [false, true] {
        let v = expect_error(gw.chat(&client(), chat_body(MODEL, stream)).send().await.unwrap(), 502, Some("upstream_failed")).await;
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("dep1: unreadable answer"), "stream={stream}: {message}");
    }
    metrics_containing(&gw, &failures("dep1", "unreadable_answer", 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_or_stalls_fails_over() {
    let cases = [
        (Failure::TruncatedAnswer { sent_bytes: 10 }, "broken_answer"),
        (Failure::DropMidStream { after_tokens: 0 }, "broken_answer"),
        (Failure::SilentBody, "answer_timeout"),
    ];
    for (failure, kind) in cases {
        let bad = mock(MockConfig { failure, ..Default::default() }).await;
        let good = mock(MockConfig::default()).await;
        let gw = gateway_with(&[&bad, &good], "[limits]\nrequest_timeout_ms = 1500\n").await;
        let started = Instant::now();
        answered_by_dep1(&gw, false, &failure.to_string()).await;
        assert!(started.elapsed() < Duration::from_secs(10), "{failure}: {:?}", started.elapsed());
        assert_eq!(good.requests(), 1, "{failure}");
        metrics_containing(&gw, &failures("dep0", kind, 1)).await;
        assert_eq!(deployment_state(&gw, "dep0").await["failures"], 1, "{failure}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_on_the_only_deployment_is_504_a_broken_one_502() {
    let silent = mock(MockConfig { failure: Failure::SilentBody, ..Default::default() }).await;
    let gw = gateway_with(&[&silent], "[limits]\nrequest_timeout_ms = 500\n").await;
    let started = Instant::now();
    let v = expect_error(gw.chat(&client(), chat_body(MODEL, false)).send().await.unwrap(), 504, Some("upstream_timeout")).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(v["error"]["message"].as_str().unwrap().contains("dep0: answer not complete in time"), "{v}");
    metrics_containing(&gw, &failures("dep0", "answer_timeout", 1)).await;
    drop(gw);

    let broken = mock(MockConfig { failure: Failure::TruncatedAnswer { sent_bytes: 10 }, ..Default::default() }).await;
    let gw = gateway_with(&[&broken], "").await;
    expect_error(gw.chat(&client(), chat_body(MODEL, false)).send().await.unwrap(), 502, Some("upstream_failed")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_max_answer_bytes_fails_over_then_502() {
    // ~14 KB of completion against a 4 KiB limit; the spare's 16 tokens fit.
    let big = MockConfig { tokens: 2000, tokens_per_s: 0.0, ..Default::default() };
    let bad = mock(big.clone()).await;
    let good = mock(MockConfig::default()).await;
    let gw = gateway_with(&[&bad, &good], "[limits]\nmax_answer_bytes = 4096\n").await;
    answered_by_dep1(&gw, false, "oversize").await;
    metrics_containing(&gw, &failures("dep0", "answer_too_large", 1)).await;
    // Streams are not read whole: the limit does not apply to them.
    let resp = gw.chat(&client(), chat_body(MODEL, true)).send().await.unwrap();
    assert_eq!(resp.headers()["x-joule-deployment"], "dep0");
    assert!(read_sse(resp, Duration::from_secs(20)).await.ended_cleanly);
    drop(gw);

    let only = mock(big).await;
    let gw = gateway_with(&[&only], "[limits]\nmax_answer_bytes = 4096\n").await;
    let v = expect_error(gw.chat(&client(), chat_body(MODEL, false)).send().await.unwrap(), 502, Some("upstream_failed")).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("answer larger than the limit of 4096 bytes"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_answers_open_the_breaker() {
    let bad = mock(MockConfig { failure: Failure::HtmlAnswer, ..Default::default() }).await;
    let good = mock(MockConfig::default()).await;
    // Three consecutive failures open the breaker; then dep0 is skipped without being asked
    // (no probes, which could close it again).
    let health = "[health]\nfailure_threshold = 3\nopen_base_ms = 60000\nopen_max_ms = 60000\nprobe_interval_ms = 0\n";
    let gw = gateway_with(&[&bad, &good], health).await;
    for _ in 0..3 {
        answered_by_dep1(&gw, false, "html").await;
    }
    let state = deployment_state(&gw, "dep0").await;
    assert_eq!(state["breaker"], "open", "{state}");
    assert!(state["error_rate"].as_f64().unwrap() > 0.0, "{state}");
    answered_by_dep1(&gw, false, "html, breaker open").await;
    assert_eq!((bad.requests(), good.requests()), (3, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_4xx_documents_still_pass_through() {
    // A 4xx is the upstream's answer, not an unreadable one: passed on as sent, no failover.
    let m = mock(MockConfig { require_bearer: Some(PROVIDER_SECRET.into()), ..Default::default() }).await;
    let spare = mock(MockConfig::default()).await;
    let gw = gateway_with(&[&m, &spare], "").await;
    for stream in [false, true] {
        let v = expect_error(gw.chat(&client(), chat_body(MODEL, stream)).send().await.unwrap(), 401, Some("invalid_api_key")).await;
        assert_eq!(v["error"]["message"], "Incorrect API key provided.", "the upstream's own document");
    }
    assert_eq!(spare.requests(), 0);
    let page = metrics_containing(&gw, "joule_requests_total{").await;
    assert!(!page.contains("joule_upstream_failures_total{"), "{page}");
}

/// Numbers from an upstream are untrusted input (item 6): a usage report of `u64::MAX` tokens
/// (or negative, fractional, non-numeric counts, or more than `MAX_USAGE_TOKENS`) is not
/// believed — the client gets the answer without a computed `usage.cost`, the usage record
/// has no tokens, no cost and the outcome `upstream_usage_invalid`, the deployment is counted
/// as failing (`kind="invalid_usage"`), and the usage summary keeps answering 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_upstream_usage_is_not_charged_or_stored() {
    let max = u64::MAX;
    let reports = [
        serde_json::json!({"prompt_tokens": max, "completion_tokens": max, "total_tokens": max}),
        serde_json::json!({"prompt_tokens": 10_000_001, "completion_tokens": 1}),
        serde_json::json!({"prompt_tokens": -5, "completion_tokens": 3}),
        serde_json::json!({"prompt_tokens": 5, "completion_tokens": 2.5}),
        serde_json::json!({"prompt_tokens": "5", "completion_tokens": 3}),
        // An upstream's own `cost` is not passed off as joule's.
        serde_json::json!({"prompt_tokens": max, "completion_tokens": 1, "cost": 1.8e13}),
    ];
    let bad = mock(MockConfig { reported_usage: Some(reports[0].clone()), ..Default::default() }).await;
    let gw = gateway_with(&[&bad], "[store]\nflush_interval_ms = 20\n").await;
    let c = client();
    let mut n = 0;
    for report in &reports {
        bad.set_config(MockConfig { reported_usage: Some(report.clone()), ..Default::default() });
        let resp = gw.chat(&c, chat_body(MODEL, false)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{report}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion", "{v}");
        assert!(v["usage"].get("cost").is_none(), "no cost from {report}: {v}");
        n += 1;
    }
    // The same in a stream's usage chunk.
    bad.set_config(MockConfig { reported_usage: Some(reports[0].clone()), ..Default::default() });
    let mut body = chat_body(MODEL, true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let got = read_sse(gw.chat(&c, body).send().await.unwrap(), Duration::from_secs(20)).await;
    assert_eq!(got.data().last().copied(), Some("[DONE]"), "{:?}", got.data());
    let usage: Vec<_> = got.json().into_iter().filter(|e| e["usage"].is_object()).collect();
    assert_eq!(usage.len(), 1, "{:?}", got.data());
    assert!(usage[0]["usage"].get("cost").is_none(), "{}", usage[0]);
    n += 1;
    metrics_containing(&gw, &failures("dep0", "invalid_usage", n)).await;
    assert_eq!(deployment_state(&gw, "dep0").await["failures"], n, "counted against the deployment");

    let admin = |path: &str| c.get(format!("{}/admin{path}", gw.admin())).bearer_auth(ADMIN_TOKEN).send();
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let resp = admin("/usage").await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        let records = v["records"].as_array().cloned().unwrap_or_default();
        if records.len() as u64 == n {
            break records;
        }
        assert!(Instant::now() < deadline, "expected {n} records: {v}\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for r in &records {
        assert_eq!(r["outcome"], "upstream_usage_invalid", "{r}");
        assert!(r["tokens_in"].is_null() && r["tokens_out"].is_null(), "{r}");
        assert_eq!(r["cost_total"], 0.0, "{r}");
    }
    for query in ["", &format!("?model={MODEL}"), "?status=200"] {
        let resp = admin(&format!("/usage/summary{query}")).await.unwrap();
        assert_eq!(resp.status(), 200, "{query}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!((v["requests"].as_u64(), v["tokens_in"].as_u64(), v["cost_usd"].as_f64()), (Some(n), Some(0), Some(0.0)), "{query}: {v}");
    }
}

/// Bounded memory per request (item 5): an SSE event that never ends — 1 KiB `data:` lines
/// as fast as the upstream can write them and never a blank line — is capped like one long
/// line (8 MiB). After the first content token the client's stream ends with an
/// `upstream_stream_invalid` error event; before it, the next deployment takes over. Either
/// way the gateway's memory stays bounded (before the cap, each such stream grew without end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_sse_event_is_capped() {
    let endless = mock(MockConfig { failure: Failure::EndlessEvent { after_tokens: 2 }, tokens_per_s: 0.0, ..Default::default() }).await;
    let gw = gateway_with(&[&endless], "").await;
    // Warm up (first request allocates pools), then measure.
    let resp = gw.chat(&client(), chat_body(MODEL, false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let before = gw.rss_kib();
    let streams = 4;
    let runs = (0..streams).map(|_| async {
        let resp = gw.chat(&client(), chat_body(MODEL, true)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        read_sse(resp, Duration::from_secs(60)).await
    });
    for got in futures_util::future::join_all(runs).await {
        let last = got.json().last().cloned().unwrap_or_default();
        assert_eq!(last["error"]["code"], "upstream_stream_invalid", "{:?}", got.data());
        assert_eq!(got.content_times().len(), 2, "the tokens before the endless event were forwarded");
    }
    let grown = gw.rss_kib().saturating_sub(before);
    println!("{streams} endless-event streams capped: RSS +{grown} KiB");
    // 4 streams × (8 MiB event + 8 MiB joined data + read chunks), with allocator slack.
    assert!(grown < 160 * 1024, "RSS grew by {grown} KiB for {streams} capped streams");
    drop(gw);

    // Before the first content token: not a stream the client has seen, so the spare answers.
    let early = mock(MockConfig { failure: Failure::EndlessEvent { after_tokens: 0 }, tokens_per_s: 0.0, ..Default::default() }).await;
    let good = mock(MockConfig::default()).await;
    let gw = gateway_with(&[&early, &good], "").await;
    answered_by_dep1(&gw, true, "endless event before the first token").await;
    metrics_containing(&gw, &failures("dep0", "early_stream_failure", 1)).await;
}

/// Bounded memory per request (item 5): JSON is never built into a tree on the request path,
/// so a hostile shape costs no more than its bytes. Bodies and answers of 8 MiB made of the
/// smallest values (`0,0,0,…` — 2 bytes each, which a JSON tree stores in 32) are checked and
/// forwarded with the gateway's peak memory growing by a small multiple of their size, not the
/// ~40× a tree took (one 16 MiB `stream_options` of zeros used to take +615 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_shapes_cost_no_more_than_their_bytes() {
    const SIZE: usize = 8 * 1024 * 1024;
    let zeros = |n: usize| format!("[{}0]", "0,".repeat(n / 2));
    // The answer's usage object carries 8 MiB of zeros beside valid counts: parsed for usage,
    // and rewritten for the cost.
    let usage = serde_json::from_str::<serde_json::Value>(&format!(r#"{{"prompt_tokens":1,"completion_tokens":2,"cost":{0},"junk":{0}}}"#, zeros(SIZE / 2))).unwrap();
    let m = mock(MockConfig { reported_usage: Some(usage), tokens_per_s: 0.0, ttft_ms: 0, ..Default::default() }).await;
    let gw = gateway_with(&[&m], &format!("[limits]\nmax_body_bytes = {}\nmax_answer_bytes = {}\n", SIZE + 4096, 2 * SIZE)).await;
    let send = |body: String| {
        let c = client();
        let url = format!("{}/chat/completions", gw.base());
        async move { c.post(url).bearer_auth(KEY).header("content-type", "application/json").body(body).send().await.unwrap() }
    };
    // Warm up every path once with small shapes, then take the peak.
    let small = r#"{"model":"llama-hard","messages":[{"role":"user","content":"hi"}]}"#.to_string();
    assert_eq!(send(small).await.status(), 200);
    let before = gw.peak_rss_kib();
    let cases = [
        ("stream_options of zeros", format!(r#"{{"model":"{MODEL}","stream":true,"messages":[{{"role":"user","content":"hi"}}],"stream_options":{{"x":{}}}}}"#, zeros(SIZE)), 200),
        ("messages of zeros", format!(r#"{{"model":"{MODEL}","messages":{}}}"#, zeros(SIZE)), 400),
        ("an unknown member of zeros", format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user"}}],"x":{}}}"#, zeros(SIZE)), 200),
        ("many small members", format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user"}}],{}"z":0}}"#, (0..SIZE / 12).map(|i| format!(r#""k{i}":0,"#)).collect::<String>()), 200),
    ];
    for (case, body, status) in cases {
        let resp = send(body).await;
        assert_eq!(resp.status(), status, "{case}");
        let bytes = resp.bytes().await.unwrap();
        if status == 200 && !case.starts_with("stream") {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["usage"]["cost"].as_f64().map(|t| t > 0.0), Some(true), "{case}: joule's cost replaced the upstream's");
            assert!(v["usage"]["junk"].is_array(), "{case}: the rest of usage passes through");
        }
        let grown = gw.peak_rss_kib().saturating_sub(before);
        println!("{case}: peak RSS +{grown} KiB");
        // Body, its upstream copy, the answer and its cost-inserted copy: 4 × 8 MiB, plus
        // allocator slack.
        assert!(grown < 48 * 1024, "{case}: peak memory grew by {grown} KiB for an {SIZE}-byte shape");
    }
}
