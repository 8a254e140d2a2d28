//! Issue 13, part 2: `POST /v1/messages`, the real binary against in-repo mocks. A hosted model
//! is reached through its OpenAI-compatible backends (the request converted, the answer and
//! the stream converted back event by event); a Claude route gets the client's body as sent
//! (model replaced) and passes its answer through; errors are in Anthropic's shape.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use joule::api::sse::{SseItem, SseParser};

const SECRET: &str = "sk-ant-upstream-secret";

/// `llama` on one OpenAI mock, `claude` on one Anthropic mock.
async fn gateway(hosted: &MockServer, claude: &MockServer, extra: &str) -> Gateway {
    let cfg = format!(
        "{}\n[[providers]]\nid = \"anth\"\nbase_url = \"{}\"\napi = \"anthropic\"\napi_key_env = \"TEST_ANTHROPIC_KEY\"\n\n\
         [[models]]\nid = \"claude\"\ncategory = \"third-party\"\n[[models.deployments]]\nid = \"claude-route\"\nprovider = \"anth\"\n\
         upstream_model = \"claude-sonnet-4\"\nlist_price_input = 3.0\nlist_price_output = 15.0\n{extra}",
        hosted_catalog("llama", &[hosted.base_url()]),
        claude.base_url()
    );
    Gateway::start_with(&cfg, "", &[("TEST_ANTHROPIC_KEY", SECRET)]).await
}

async fn mocks(tokens: u32, tokens_per_s: f64) -> (MockServer, MockServer) {
    let hosted = mock(MockConfig { tokens, tokens_per_s, ttft_ms: 0, ..Default::default() }).await;
    let claude = mock(MockConfig {
        api: MockApi::Anthropic,
        require_bearer: Some(SECRET.into()),
        tokens,
        tokens_per_s,
        ttft_ms: 0,
        ..Default::default()
    })
    .await;
    (hosted, claude)
}

fn messages(gw: &Gateway, body: &str) -> reqwest::RequestBuilder {
    messages_to(gw, "messages", body)
}

fn messages_to(gw: &Gateway, path: &str, body: &str) -> reqwest::RequestBuilder {
    client()
        .post(format!("{}/{path}", gw.base()))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// Every SSE event with its name and arrival time; whether the body ended cleanly.
async fn read_events(resp: reqwest::Response) -> (Vec<(Instant, Option<String>, serde_json::Value)>, bool) {
    let mut stream = resp.bytes_stream();
    let mut parser = SseParser::default();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await.expect("stream ends in time") {
            None => return (out, true),
            Some(Err(_)) => return (out, false),
            Some(Ok(chunk)) => {
                let now = Instant::now();
                let mut items = Vec::new();
                parser.feed(&chunk, &mut items).expect("valid SSE");
                for it in items {
                    if let SseItem::Event { event, data } = it {
                        out.push((now, event, serde_json::from_str(&data).expect("JSON event data")));
                    }
                }
            }
        }
    }
}

fn names(events: &[(Instant, Option<String>, serde_json::Value)]) -> Vec<String> {
    events.iter().map(|(_, e, d)| {
        let name = e.clone().unwrap_or_default();
        assert_eq!(d["type"].as_str(), Some(name.as_str()), "event name and data type agree");
        name
    }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_route_gets_the_body_as_sent_and_answers_natively() {
    let (hosted, claude) = mocks(5, 0.0).await;
    let gw = gateway(&hosted, &claude, "").await;
    // Members the chat form has no place for: they must reach Anthropic untouched.
    let body = r#"{"model":"claude","max_tokens":64,"thinking":{"type":"enabled","budget_tokens":1024},
        "system":[{"type":"text","text":"Be brief.","cache_control":{"type":"ephemeral"}}],
        "messages":[{"role":"user","content":[{"type":"text","text":"h\u00e9llo","cache_control":{"type":"ephemeral"}}]}],
        "future_member":{"x":[1,2.50]}}"#;
    let resp = messages(&gw, body).header("anthropic-beta", "prompt-caching-2024-07-31").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-joule-deployment"], "claude-route");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["content"][0]["text"], "tok0 tok1 tok2 tok3 tok4");
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert!(v["usage"]["cost"].as_f64().is_some_and(|c| c > 0.0), "priced: {v}");

    let seen = claude.last_request().unwrap();
    let expected = body.replacen(r#""model":"claude""#, r#""model":"claude-sonnet-4""#, 1);
    assert_eq!(String::from_utf8_lossy(&seen.body), expected, "byte-exact apart from the model");
    assert_eq!(seen.header("x-api-key"), Some(SECRET), "the provider's key, not the client's");
    assert_eq!(seen.header("anthropic-beta"), Some("prompt-caching-2024-07-31"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_model_answers_in_anthropic_shape() {
    let (hosted, claude) = mocks(4, 0.0).await;
    let gw = gateway(&hosted, &claude, "").await;
    let body = r#"{"model":"llama@price","max_tokens":32,"system":"Be brief.","stop_sequences":["END"],
        "metadata":{"user_id":"u-1"},"messages":[{"role":"user","content":"hi"},
        {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"f","input":{"a":1}}]},
        {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"42"},{"type":"text","text":"so?"}]}]}"#;
    let resp = messages(&gw, body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-joule-price-input"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!((v["type"].as_str(), v["role"].as_str(), v["model"].as_str()), (Some("message"), Some("assistant"), Some("llama")), "{v}");
    assert_eq!(v["content"], serde_json::json!([{"type": "text", "text": "tok0 tok1 tok2 tok3"}]));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 4);
    assert!(v["usage"]["input_tokens"].as_u64().is_some_and(|n| n > 0));
    assert!(v["usage"]["cost"].as_f64().is_some_and(|c| c > 0.0), "{v}");

    let sent: serde_json::Value = serde_json::from_slice(&hosted.last_request().unwrap().body).unwrap();
    assert_eq!(
        sent["messages"],
        serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
            {"role": "user", "content": [{"type": "text", "text": "so?"}]},
        ]),
        "{sent}"
    );
    assert_eq!((sent["max_tokens"].as_u64(), sent["stop"][0].as_str(), sent["user"].as_str()), (Some(32), Some("END"), Some("u-1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_arrive_event_by_event_in_anthropic_grammar() {
    // 6 tokens at 10/s: upstream events 100 ms apart.
    let (hosted, claude) = mocks(6, 10.0).await;
    let gw = gateway(&hosted, &claude, "").await;
    for model in ["llama", "claude"] {
        let body = format!(r#"{{"model":"{model}","max_tokens":64,"stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#);
        let resp = messages(&gw, &body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let (events, clean) = read_events(resp).await;
        assert!(clean, "{model}");
        let names = names(&events);
        let deltas: Vec<_> = events.iter().filter(|(_, n, _)| n.as_deref() == Some("content_block_delta")).collect();
        assert_eq!(names.first().map(String::as_str), Some("message_start"), "{model}: {names:?}");
        assert_eq!(names[names.len() - 2..], ["message_delta".to_string(), "message_stop".to_string()], "{model}: {names:?}");
        assert_eq!(deltas.len(), 6, "{model}: {names:?}");
        let text: String = deltas.iter().map(|(_, _, d)| d["delta"]["text"].as_str().unwrap()).collect();
        assert_eq!(text, "tok0 tok1 tok2 tok3 tok4 tok5", "{model}");
        // Forwarded as they come, never bunched up (upstream: 100 ms apart).
        let times: Vec<Instant> = deltas.iter().map(|d| d.0).collect();
        assert_spread(&times, Duration::from_millis(100), model);
        let (_, _, delta) = &events[events.len() - 2];
        assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{model}");
        assert_eq!(delta["usage"]["output_tokens"], 6, "{model}");
        assert!(delta["usage"]["cost"].as_f64().is_some_and(|c| c > 0.0), "{model}: {delta}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_ends_with_an_anthropic_error_event() {
    let hosted = mock(MockConfig { tokens: 6, ttft_ms: 0, failure: Failure::DropMidStream { after_tokens: 2 }, ..Default::default() }).await;
    let claude = mock(MockConfig {
        api: MockApi::Anthropic,
        require_bearer: Some(SECRET.into()),
        tokens: 6,
        ttft_ms: 0,
        failure: Failure::GarbageSse { after_tokens: 2 },
        ..Default::default()
    })
    .await;
    let gw = gateway(&hosted, &claude, "").await;
    for model in ["llama", "claude"] {
        let body = format!(r#"{{"model":"{model}","max_tokens":64,"stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#);
        let (events, _) = read_events(messages(&gw, &body).send().await.unwrap()).await;
        let names = names(&events);
        assert_eq!(names.last().map(String::as_str), Some("error"), "{model}: {names:?}");
        let (_, _, err) = events.last().unwrap();
        assert_eq!(err["error"]["type"], "api_error", "{model}: {err}");
        assert!(!names.contains(&"message_stop".to_string()), "{model}: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_in_anthropic_shape() {
    let (hosted, claude) = mocks(2, 0.0).await;
    let gw = gateway(&hosted, &claude, "").await;
    let ok = r#"{"model":"llama","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (client().post(format!("{}/messages", gw.base())).header("x-api-key", "sk-nope").body(ok), 401, "authentication_error"),
        (client().post(format!("{}/messages", gw.base())).body(ok), 401, "authentication_error"),
        (messages(&gw, r#"{"model":"nope","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#), 404, "not_found_error"),
        (messages(&gw, r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#), 400, "invalid_request_error"),
        (messages(&gw, r#"{"model":"llama","max_tokens":8,"messages":[]}"#), 400, "invalid_request_error"),
        (messages(&gw, r#"{"model":"llama","max_tokens":8,"messages":[{"role":"system","content":"x"}]}"#), 400, "invalid_request_error"),
        (messages(&gw, "{not json"), 400, "invalid_request_error"),
        (messages(&gw, r#"{"model":"llama@nope","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#), 400, "invalid_request_error"),
        (
            messages(&gw, r#"{"model":"llama","max_tokens":8,"mcp_servers":[],"messages":[{"role":"user","content":"hi"}]}"#),
            400,
            "invalid_request_error",
        ),
        (client().get(format!("{}/messages", gw.base())).header("x-api-key", KEY), 405, "invalid_request_error"),
        (messages(&gw, ok).header("content-length", "0").body(""), 400, "invalid_request_error"),
    ];
    for (i, (req, status, kind)) in cases.into_iter().enumerate() {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "case {i}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some(kind)), "case {i}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty() && !m.contains("sk-nope")), "case {i}: {v}");
    }
    let resp = client().post(format!("{}/messages/count_tokens", gw.base())).header("x-api-key", KEY).body(ok).send().await.unwrap();
    assert_eq!(resp.status(), 501, "no deployment of the hosted model can count");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error", "{v}");
    // A Claude route counts: the body goes to the provider as sent, model replaced.
    let count = r#"{"model":"claude","messages":[{"role":"user","content":"count me please"}],"system":"s"}"#;
    let resp = messages_to(&gw, "messages/count_tokens", count).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["input_tokens"].as_u64().is_some_and(|n| n > 0), "{v}");
    let seen = claude.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages/count_tokens");
    assert_eq!(String::from_utf8_lossy(&seen.body), count.replacen("\"claude\"", "\"claude-sonnet-4\"", 1));
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    let resp = client().post(format!("{}/messages/count_tokens", gw.base())).body(ok).send().await.unwrap();
    assert_eq!(resp.status(), 401, "authentication comes first");
}
