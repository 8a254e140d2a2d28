//! Issue 13, part 1: a third-party model behind Anthropic's Messages API, called with the
//! OpenAI wire — the real binary against the in-repo mock in Anthropic mode. The request is
//! translated (`x-api-key`, `anthropic-version`, `max_tokens` default), the answer and the
//! stream come back as OpenAI chat completions and chunks (every event converted as it
//! arrives), usage is priced, and 529 `overloaded_error` fails over like any 5xx.

mod common;

use std::time::Duration;

use common::*;

const SECRET: &str = "sk-ant-test-secret";

fn anthropic_mock(extra: MockConfig) -> MockConfig {
    MockConfig { api: MockApi::Anthropic, require_bearer: Some(SECRET.into()), ..extra }
}

/// A `claude-test` model with one route per mock, all through Anthropic providers.
async fn gateway(mocks: &[&MockServer], provider_extra: &str) -> Gateway {
    let mut cfg = String::new();
    for (i, m) in mocks.iter().enumerate() {
        cfg.push_str(&format!(
            "[[providers]]\nid = \"anth{i}\"\nbase_url = \"{}\"\napi = \"anthropic\"\napi_key_env = \"TEST_ANTHROPIC_KEY\"\n{provider_extra}\n\n",
            m.base_url()
        ));
    }
    cfg.push_str("[[models]]\nid = \"claude-test\"\ncategory = \"third-party\"\n");
    for i in 0..mocks.len() {
        cfg.push_str(&format!(
            "[[models.deployments]]\nid = \"route{i}\"\nprovider = \"anth{i}\"\nupstream_model = \"claude-sonnet-4\"\nlist_price_input = 3.0\nlist_price_output = 15.0\nmax_tokens = 1024\nttft_ms = {}\n",
            100 + i * 100
        ));
    }
    Gateway::start_with(&cfg, "", &[("TEST_ANTHROPIC_KEY", SECRET)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_clients_reach_a_claude_route() {
    let m = mock(anthropic_mock(MockConfig { tokens: 5, tokens_per_s: 0.0, ..Default::default() })).await;
    let gw = gateway(&[&m], "anthropic_version = \"2023-06-01\"").await;
    let resp = gw.chat(&client(), chat_body("claude-test", false)).header("anthropic-beta", "tools-2024").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 tok3 tok4", "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert!(v["usage"]["cost"].as_f64().is_some_and(|c| c > 0.0), "priced: {v}");
    let seen = m.last_request().unwrap();
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("anthropic-beta"), Some("tools-2024"));
    assert!(seen.header("authorization").is_none(), "the key goes in x-api-key only");
    let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4");
    assert_eq!(sent["max_tokens"], 1024, "the route's default max_tokens: {sent}");
    assert_eq!(sent["messages"][0]["role"], "user");

    // A parameter Anthropic has no equivalent for: 400 naming it, the route not blamed.
    let mut body = chat_body("claude-test", false);
    body["n"] = 2.into();
    let v = expect_error(gw.chat(&client(), body).send().await.unwrap(), 400, Some("unsupported_parameter")).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("'n'"), "{v}");
    let metrics = metrics_containing(&gw, "joule_requests_total").await;
    assert!(!metrics.contains("deployment=\"route0\",kind"), "an untranslatable request is not the route's failure: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_stream_arrives_event_by_event_with_usage() {
    // 10 tokens at 10/s: events 100 ms apart upstream.
    let m = mock(anthropic_mock(MockConfig { tokens: 10, tokens_per_s: 10.0, ttft_ms: 0, ..Default::default() })).await;
    let gw = gateway(&[&m], "").await;
    let mut body = chat_body("claude-test", true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let resp = gw.chat(&client(), body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = read_sse(resp, Duration::from_secs(30)).await;
    assert!(got.ended_cleanly);
    let data = got.data();
    assert_eq!(data.last().copied(), Some("[DONE]"), "{data:?}");
    let chunks = got.json();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"), "{data:?}");
    let usage = chunks.iter().find(|c| c["usage"].is_object()).expect("usage chunk");
    assert_eq!(usage["usage"]["completion_tokens"], 10);
    assert!(usage["usage"]["cost"].as_f64().is_some_and(|c| c > 0.0), "{usage}");
    // Converted as they arrive: content events keep the upstream's spacing.
    let times = got.content_times();
    assert_eq!(times.len(), 10);
    assert_spread(&times, Duration::from_millis(100), "claude stream");
    // The mock's default sent no usage chunk to a client that did not ask.
    let got = read_sse(gw.chat(&client(), chat_body("claude-test", true)).send().await.unwrap(), Duration::from_secs(30)).await;
    assert!(got.json().iter().all(|c| c.get("usage").is_none() || c["usage"].is_null()), "{:?}", got.data());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_tool_use_becomes_tool_calls() {
    let m = mock(anthropic_mock(MockConfig { tool_use: true, tokens_per_s: 0.0, ..Default::default() })).await;
    let gw = gateway(&[&m], "").await;
    let tools = serde_json::json!([{"type":"function","function":{"name":"lookup","description":"d","parameters":{"type":"object","properties":{"arg":{"type":"string"}}}}}]);
    let mut body = chat_body("claude-test", false);
    body["tools"] = tools.clone();
    body["tool_choice"] = "required".into();
    let v: serde_json::Value = gw.chat(&client(), body).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    let args: serde_json::Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, serde_json::json!({"arg":"value"}));
    let sent: serde_json::Value = serde_json::from_slice(&m.last_request().unwrap().body).unwrap();
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object", "{sent}");
    assert_eq!(sent["tool_choice"]["type"], "any", "{sent}");

    // Streamed: the pieces of the tool input arrive as argument deltas.
    let mut body = chat_body("claude-test", true);
    body["tools"] = tools;
    let got = read_sse(gw.chat(&client(), body).send().await.unwrap(), Duration::from_secs(30)).await;
    let chunks = got.json();
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&args).unwrap(), serde_json::json!({"arg":"value"}), "{:?}", got.data());
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_claude_fails_over_and_errors_keep_their_status() {
    let busy = mock(anthropic_mock(MockConfig { failure: Failure::Overloaded, ..Default::default() })).await;
    let good = mock(anthropic_mock(MockConfig { tokens_per_s: 0.0, ..Default::default() })).await;
    let gw = gateway(&[&busy, &good], "").await;
    for stream in [false, true] {
        let resp = gw.chat(&client(), chat_body("claude-test", stream)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-joule-deployment"], "route1", "stream={stream}");
    }
    metrics_containing(&gw, "joule_upstream_failures_total{deployment=\"route0\",kind=\"status_5xx\"}").await;
    drop(gw);

    // An Anthropic 4xx (a wrong key upstream) reaches the client in the OpenAI shape.
    let m = mock(MockConfig { api: MockApi::Anthropic, require_bearer: Some("another-key".into()), ..Default::default() }).await;
    let gw = gateway(&[&m], "").await;
    let resp = gw.chat(&client(), chat_body("claude-test", false)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "authentication_error", "{v}");
    assert!(v["error"]["message"].is_string());
}

/// Health probes of an Anthropic provider list its models with Anthropic's headers
/// (`x-api-key`, `anthropic-version`, no bearer), which the mock in Anthropic mode requires:
/// with a bearer header they were 401s counted against a healthy route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_speak_anthropic() {
    const ADMIN: &str = "anthropic-admin-token";
    let m = mock(anthropic_mock(MockConfig::default())).await;
    let admin = format!("[admin]\ntoken_sha256 = \"{}\"\n", joule::secret::KeyHash::of(ADMIN).to_hex());
    let cfg = format!(
        "[health]\nprobe_third_party = true\nprobe_interval_ms = 100\nfailure_threshold = 2\n{admin}\n[[providers]]\nid = \"anth\"\nbase_url = \"{}\"\napi = \"anthropic\"\napi_key_env = \"TEST_ANTHROPIC_KEY\"\n\n[[models]]\nid = \"claude-test\"\ncategory = \"third-party\"\n[[models.deployments]]\nid = \"route0\"\nprovider = \"anth\"\nlist_price_input = 3.0\nlist_price_output = 15.0\n",
        m.base_url()
    );
    let gw = Gateway::start_with(&cfg, "", &[("TEST_ANTHROPIC_KEY", SECRET)]).await;
    // Wait (bounded) for the first probe.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let seen = loop {
        match m.last_request() {
            Some(r) if r.path == "/v1/models" => break r,
            _ => {
                assert!(tokio::time::Instant::now() < deadline, "no probes arrived: {}", gw.logs());
                // Polling the mock's record at the probes' own pace.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/v1/models"));
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert!(seen.header("authorization").is_none());
    let v: serde_json::Value = client().get(format!("{}/admin/deployments", gw.admin())).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let d = v["data"].as_array().unwrap().iter().find(|d| d["id"] == "route0").cloned().unwrap();
    assert_eq!(d["breaker"], "closed", "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_reads_and_writes_are_priced_apart_when_configured() {
    // Anthropic-like usage: 200k uncached, 600k read from the cache, 200k written into it.
    let usage = serde_json::json!({"input_tokens": 200_000, "cache_read_input_tokens": 600_000,
                                   "cache_creation_input_tokens": 200_000, "output_tokens": 100_000});
    let m = mock(anthropic_mock(MockConfig { tokens: 2, reported_usage: Some(usage), ..Default::default() })).await;
    let gw = gateway(&[&m], "").await;
    let plain = client().post(format!("{}/chat/completions", gw.base())).bearer_auth(KEY).json(&chat_body("claude-test", false));
    let v: serde_json::Value = plain.send().await.unwrap().json().await.unwrap();
    // Without cache prices every prompt token costs the input price: 1M × 3.15 + 100k × 15.75.
    assert_eq!(v["usage"]["cost"], 4.725, "{v}");
    assert!(v["usage"]["cost_details"].get("cache_read").is_none(), "{v}");
    assert_eq!((v["usage"]["prompt_tokens"].as_u64(), v["usage"]["cache_creation_input_tokens"].as_u64()), (Some(1_000_000), Some(200_000)));
    drop(gw);

    let gw = Gateway::start_with(
        &format!(
            "[[providers]]\nid = \"anth\"\nbase_url = \"{}\"\napi = \"anthropic\"\napi_key_env = \"TEST_ANTHROPIC_KEY\"\n\n\
             [[models]]\nid = \"claude-test\"\ncategory = \"third-party\"\n[[models.deployments]]\nid = \"route\"\nprovider = \"anth\"\n\
             list_price_input = 3.0\nlist_price_output = 15.0\nlist_price_cache_read = 0.30\nlist_price_cache_write = 3.75\n",
            m.base_url()
        ),
        "",
        &[("TEST_ANTHROPIC_KEY", SECRET)],
    )
    .await;
    let expected = serde_json::json!({"input": 1.6065, "output": 1.575, "energy": 0.0, "routing_fee": 0.1515,
                                      "cache_read": 0.189, "cache_write": 0.7875, "currency": "USD"});
    let openai = client().post(format!("{}/chat/completions", gw.base())).bearer_auth(KEY).json(&chat_body("claude-test", false));
    let v: serde_json::Value = openai.send().await.unwrap().json().await.unwrap();
    assert_eq!((&v["usage"]["cost"], &v["usage"]["cost_details"]), (&serde_json::json!(3.1815), &expected), "OpenAI client: {v}");
    let anthropic = client()
        .post(format!("{}/messages", gw.base()))
        .header("x-api-key", KEY)
        .json(&serde_json::json!({"model": "claude-test", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}));
    let v: serde_json::Value = anthropic.send().await.unwrap().json().await.unwrap();
    assert_eq!((&v["usage"]["cost"], &v["usage"]["cost_details"]), (&serde_json::json!(3.1815), &expected), "Anthropic client, answered natively: {v}");
    assert_eq!(v["usage"]["cache_read_input_tokens"], 600_000);
}
