//! Issue 14: `POST /v1/responses` streams as the upstream produces — the real binary against
//! the in-repo mock, for a hosted model and a Claude route: each `response.output_text.delta`
//! leaves as its upstream event arrives (events 100 ms apart upstream arrive ≥ 80 ms apart),
//! the grammar is whole and numbered, and the final event carries usage and cost.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use joule::api::sse::{SseItem, SseParser};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_streams_arrive_event_by_event() {
    let hosted = mock(MockConfig { tokens: 5, tokens_per_s: 10.0, ttft_ms: 0, ..Default::default() }).await;
    let claude = mock(MockConfig { api: MockApi::Anthropic, tokens: 5, tokens_per_s: 10.0, ttft_ms: 0, ..Default::default() }).await;
    let cfg = format!(
        "{}\n[[providers]]\nid = \"anth\"\nbase_url = \"{}\"\napi = \"anthropic\"\n\n[[models]]\nid = \"claude\"\ncategory = \"third-party\"\n\
         [[models.deployments]]\nid = \"claude-route\"\nprovider = \"anth\"\nlist_price_input = 3.0\nlist_price_output = 15.0\n",
        hosted_catalog("llama", &[hosted.base_url()]),
        claude.base_url()
    );
    let gw = Gateway::start(&cfg).await;
    for model in ["llama", "claude"] {
        let resp = client()
            .post(format!("{}/responses", gw.base()))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"model": model, "input": "hi", "stream": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut stream = resp.bytes_stream();
        let mut parser = SseParser::default();
        let mut events: Vec<(Instant, String, serde_json::Value)> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Some(chunk) = tokio::time::timeout_at(deadline, stream.next()).await.expect("stream ends in time") {
            let chunk = chunk.expect("body");
            let now = Instant::now();
            let mut items = Vec::new();
            parser.feed(&chunk, &mut items).expect("valid SSE");
            for it in items {
                if let SseItem::Event { event, data } = it {
                    events.push((now, event.unwrap_or_default(), serde_json::from_str(&data).expect("JSON")));
                }
            }
        }
        for (i, (_, name, data)) in events.iter().enumerate() {
            assert_eq!((data["type"].as_str(), data["sequence_number"].as_u64()), (Some(name.as_str()), Some(i as u64)), "{model}");
        }
        let deltas: Vec<_> = events.iter().filter(|(_, n, _)| n == "response.output_text.delta").collect();
        assert_eq!(deltas.len(), 5, "{model}");
        // Forwarded as they come, never bunched up (upstream: 100 ms apart).
        let times: Vec<_> = deltas.iter().map(|d| d.0).collect();
        assert_spread(&times, Duration::from_millis(100), model);
        let (_, last, done) = events.last().unwrap();
        assert_eq!(last, "response.completed", "{model}");
        assert_eq!(done["response"]["model"], model);
        assert_eq!(done["response"]["usage"]["output_tokens"], 5);
        assert!(done["response"]["usage"]["cost"].as_f64().is_some_and(|c| c > 0.0), "{model}: {done}");
    }
}
