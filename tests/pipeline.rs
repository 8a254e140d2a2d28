//! The public API's request pipeline, driven in-process: `joule::proxy::handle` on a gateway
//! built by `joule::server::gateway` from a parsed config, with an in-memory client
//! ([`common::memory::Client`]) instead of a socket, against in-process mock upstreams on
//! ephemeral loopback ports; every exchange ends with `joule::proxy::finish::finish`, as the
//! server adapter's logging phase does.
//!
//! Covered: authentication (missing, malformed, unknown and valid keys), a priced non-stream
//! completion and what it leaves in the record and the metrics, streams relayed in writes of
//! whole events, ranking with failover, rate limits, the order "authorize before rank" (a request for
//! a model the project may not use makes no strategy call and leaves no decision-log entry —
//! the regression test for issue 10's ordering bug), body size and body timeout limits, client
//! faults (a broken body, a client gone mid-stream), and unknown paths and methods.
//!
//! Why in-process: none of this needs a process. Without one there is no port to pick (and
//! lose), no start-up to wait for and no log to scrape; the test sees the exact `ResponseHead`,
//! every body write with its `end` flag, `close_after`, and the [`Record`] the access log and
//! usage record are built from, and reads the gateway's metrics and stores directly. The
//! process-level tests (tests/gateway.rs) keep covering pingora, listeners and shutdown.
//!
//! Each test builds its gateway outside any tokio runtime (the store runs its own), then drives
//! requests on a runtime of its own, which also runs its mocks.

mod common;
#[path = "guests/mod.rs"]
mod guests;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::memory::{self, BodyEnd, Client};
use common::{chat_body, hosted_catalog, keys_toml, Failure, MockConfig, MockServer, KEY};
use http::Method;
use joule::proxy::finish::finish;
use joule::proxy::{DownstreamError, Gateway, Record, RequestHead, Surface};
use joule::store::{NewKey, Project, ProjectChanges, UsageFilter};
use serde_json::json;

const MODEL: &str = "llama-test";

/// A gateway built from a config, its mocks, and the runtime requests run on.
struct Rig {
    rt: tokio::runtime::Runtime,
    gw: Arc<Gateway>,
    mocks: Vec<MockServer>,
    dir: tempfile::TempDir,
}

impl Rig {
    /// One mock per config, [`hosted_catalog`] over them (`dep0` cheapest), the config key
    /// [`KEY`], and `extra` config (`[store] backend = "none"` unless `extra` has a `[store]`).
    fn new(mocks: &[MockConfig], extra: &str) -> Rig {
        Self::with_catalog(mocks, |urls| hosted_catalog(MODEL, urls), extra, |_| {})
    }

    /// As [`Rig::new`] with the catalog built by `catalog` from the mocks' URLs, and `prepare`
    /// run on the config directory before the gateway is built.
    fn with_catalog(mocks: &[MockConfig], catalog: impl FnOnce(&[String]) -> String, extra: &str, prepare: impl FnOnce(&Path)) -> Rig {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mocks: Vec<MockServer> =
            rt.block_on(async { futures_util::future::join_all(mocks.iter().map(|c| common::mock(c.clone()))).await });
        let urls: Vec<String> = mocks.iter().map(MockServer::base_url).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        let store = if extra.contains("[store]") { "" } else { "[store]\nbackend = \"none\"\n" };
        // The listener is never bound: `server::gateway` builds the state only.
        let text = format!("[server]\nlisten = [\"127.0.0.1:0\"]\n\n{}\n{}\n{extra}\n{store}", keys_toml(), catalog(&urls));
        let settings = joule::config::parse(&text, dir.path(), &|_| None).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
        // Outside the runtime: the store (if any) blocks on its own.
        let (gw, _feeds) = joule::server::gateway(&settings).expect("gateway");
        Rig { rt, gw, mocks, dir }
    }

    /// Serves one request with `client` and finishes it; returns the record and the client.
    /// The handler must not fail (every outcome but a failing client is a response).
    fn exchange(&self, head: &RequestHead, client: Client) -> (Record, Client) {
        let (rec, client, result) = self.try_exchange(head, client);
        if let Err(e) = result {
            panic!("handle failed: {e}; record {rec:?}");
        }
        (rec, client)
    }

    /// As [`Rig::exchange`], with what the handler returned.
    fn try_exchange(&self, head: &RequestHead, mut client: Client) -> (Record, Client, Result<(), DownstreamError>) {
        let (rec, result) = self.rt.block_on(async {
            // A bound on a hung pipeline, so that a broken timeout fails instead of hanging.
            tokio::time::timeout(Duration::from_secs(60), exchange(&self.gw, head, &mut client))
                .await
                .expect("the exchange did not end within 60 s")
        });
        (rec, client, result)
    }

    /// `POST /v1/chat/completions` with `body` and `key`.
    fn chat(&self, key: &str, body: &serde_json::Value) -> (Record, Client) {
        let client = Client::json(body);
        let head = memory::head(Method::POST, "/v1/chat/completions", Some(key), Some(client_len(body)));
        self.exchange(&head, client)
    }

    /// The gateway's Prometheus page.
    fn metrics(&self) -> String {
        String::from_utf8(self.gw.metrics.render()).expect("UTF-8 metrics")
    }

    fn store(&self) -> &joule::store::Store {
        self.gw.store.as_ref().expect("a store is configured")
    }
}

fn client_len(body: &serde_json::Value) -> usize {
    serde_json::to_vec(body).expect("body").len()
}

/// One exchange as the server adapter runs it: counted in flight, handled, then finished (a
/// downstream failure recorded as the adapter records it).
async fn exchange(gw: &Arc<Gateway>, head: &RequestHead, io: &mut Client) -> (Record, Result<(), DownstreamError>) {
    let _in_flight = gw.enter();
    let mut rec = Record::new();
    let result = joule::proxy::handle(gw, head, io, &mut rec).await;
    if result.is_err() {
        rec.error.get_or_insert("client_disconnected");
        if rec.status == 0 {
            rec.status = 499;
        }
    }
    let path: String = head.path.chars().take(200).collect();
    finish(gw, Surface::Api, &rec, head.method.as_str(), &path);
    (rec, result)
}

/// The value of the sample of metric `name` whose labels include `labels`, if any.
fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let inner = rest.strip_suffix('}')?;
        let have: Vec<(&str, &str)> =
            inner.split(',').filter(|s| !s.is_empty()).filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k, v.trim_matches('"'))).collect();
        labels.iter().all(|want| have.contains(want)).then(|| value.parse().ok()).flatten()
    })
}

#[test]
fn missing_malformed_and_unknown_keys_are_refused_a_valid_one_is_served() {
    let rig = Rig::new(&[MockConfig::default()], "");
    let body = chat_body(MODEL, false);
    let refused: [(&str, Option<&[u8]>); 5] = [
        ("missing", None),
        ("empty bearer", Some(b"Bearer ")),
        ("not bearer", Some(b"Basic dXNlcjpwYXNz")),
        ("not UTF-8", Some(&[0xff, 0xfe])),
        ("unknown", Some(b"Bearer sk-not-a-key-0123456789")),
    ];
    for (case, auth) in refused {
        let mut head = memory::head(Method::POST, "/v1/chat/completions", None, Some(client_len(&body)));
        head.authorization = auth.map(<[u8]>::to_vec);
        let (rec, client) = rig.exchange(&head, Client::json(&body));
        let v = client.response().expect_error(401, "invalid_api_key");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{case}");
        assert_eq!(client.response().header("x-request-id"), Some(rec.request_id.as_str()), "{case}");
        assert_eq!((rec.status, rec.error), (401, Some("invalid_api_key")), "{case}");
        assert!(rec.key_name.is_none() && rec.principal.is_none(), "{case}");
        // Refused before the body was read: what the client sent is left unread, so the
        // connection must close.
        assert_eq!(client.chunks_read, 0, "{case}");
        assert!(client.closed_after, "{case}");
    }
    assert_eq!(rig.mocks[0].requests(), 0, "no refused request reached an upstream");

    let (rec, client) = rig.chat(KEY, &body);
    let resp = client.response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(rec.key_name.as_deref(), Some("test"));
    assert_eq!(rec.status, 200);
    assert!(!client.closed_after, "the whole body was read; the connection can be reused");
    assert_eq!(rig.mocks[0].requests(), 1);
    let page = rig.metrics();
    assert_eq!(metric(&page, "joule_requests_total", &[("model", "none"), ("deployment", "none"), ("status", "401")]), Some(5.0), "{page}");
}

#[test]
fn non_stream_completion_is_priced_recorded_and_counted() {
    let rig = Rig::new(&[MockConfig::default(), MockConfig::default()], "");
    let (rec, client) = rig.chat(KEY, &chat_body(MODEL, false));
    let resp = client.response();
    assert_eq!(resp.status, 200, "{}", resp.text());

    // Routed to the cheapest deployment, as the price book says it is.
    let world = rig.gw.world.load_full();
    let model = world.catalog.model(MODEL).expect("model");
    let (best, quote) = rig.gw.pricing.book().best(&world.catalog, model).expect("a best deployment");
    assert_eq!(model.deployments[best].id, "dep0", "hosted_catalog makes dep0 cheapest");
    assert_eq!(resp.header("x-joule-deployment"), Some("dep0"));
    assert_eq!(resp.header("x-joule-data-center"), Some("dc0"));
    assert_eq!(resp.header("x-joule-price-input"), Some(format!("{:.6}", quote.price.input).as_str()));
    assert!(resp.header("x-joule-strategy").is_some_and(|s| s.starts_with("price")), "{:?}", resp.headers);
    assert_eq!(resp.header("x-request-id"), Some(rec.request_id.as_str()));
    assert_eq!((rig.mocks[0].requests(), rig.mocks[1].requests()), (1, 0));
    let upstream: serde_json::Value = serde_json::from_slice(&rig.mocks[0].last_request().expect("dep0 was asked").body).unwrap();
    assert_eq!(upstream["model"], "upstream-0", "model rewritten for the deployment");
    // The answer names the catalog model; the upstream's name is in a header.
    assert_eq!(resp.json()["model"], MODEL);
    assert_eq!(resp.header("x-joule-upstream-model"), Some("upstream-0"));

    // One write of a fixed-length body, with the cost inserted into its usage.
    assert_eq!(client.heads_sent, 1);
    assert_eq!(client.sent.len(), 1);
    assert!(client.sent[0].end);
    assert_eq!(resp.content_length, Some(resp.body.len()));
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion");
    let usage = &v["usage"];
    let (prompt, completion) = (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    assert!(prompt > 0 && completion > 0, "{usage}");
    let cost = &usage["cost"];
    let expected = prompt as f64 * quote.price.input / 1e6 + completion as f64 * quote.price.output / 1e6;
    assert!((cost.as_f64().unwrap() - expected).abs() < 1e-8, "cost {cost}, expected {expected}");
    assert_eq!(usage["cost_details"]["currency"], "USD");

    // The record says the same.
    assert_eq!(rec.status, 200);
    assert_eq!(rec.error, None);
    assert_eq!(rec.model.as_deref(), Some(MODEL));
    assert_eq!(rec.deployment.as_deref(), Some("dep0"));
    assert_eq!(rec.data_center.as_deref(), Some("dc0"));
    assert_eq!((rec.prompt_tokens, rec.completion_tokens), (Some(prompt), Some(completion)));
    let rc = rec.cost.expect("cost recorded");
    assert_eq!(rc.total, cost.as_f64().unwrap());
    assert!(!rec.stream);

    // Counted by finish.
    let page = rig.metrics();
    assert_eq!(metric(&page, "joule_requests_total", &[("model", MODEL), ("deployment", "dep0"), ("status", "200")]), Some(1.0), "{page}");
    assert_eq!(metric(&page, "joule_request_duration_seconds_count", &[("model", MODEL)]), Some(1.0), "{page}");
    assert_eq!(rig.gw.in_flight(), 0);
}

#[test]
fn streams_are_relayed_in_whole_events_with_done_last() {
    const TOKENS: u32 = 4;
    let rig = Rig::new(&[MockConfig { tokens: TOKENS, ..MockConfig::default() }], "");
    for include_usage in [false, true] {
        let mut body = chat_body(MODEL, true);
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let (rec, client) = rig.chat(KEY, &body);
        let resp = client.response();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("content-type"), Some("text/event-stream"));
        assert_eq!(resp.content_length, None, "a stream has no declared length");
        assert_eq!(resp.header("x-joule-deployment"), Some("dep0"));

        // Every write holds whole events (those that arrived together share one), and only
        // the last ends the body; the events split nowhere.
        let (last, writes) = client.sent.split_last().expect("writes");
        assert!(last.end, "{last:?}");
        assert!(writes.iter().all(|s| !s.end && !s.bytes.is_empty()));
        let mut written = 0;
        for s in &client.sent {
            let text = String::from_utf8_lossy(&s.bytes);
            assert!(s.bytes.is_empty() || (text.starts_with("data: ") && text.ends_with("\n\n")), "{text:?}");
            written += memory::parse_sse(&s.bytes).len();
        }
        let data = resp.events();
        assert_eq!(data.len(), written);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
        let chunks: Vec<serde_json::Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("JSON chunk")).collect();
        assert!(chunks.iter().all(|c| c["model"] == MODEL), "every chunk names the catalog model: {data:?}");
        assert_eq!(resp.header("x-joule-upstream-model"), Some("upstream-0"));
        let content = chunks.iter().filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|s| !s.is_empty())).count();
        assert_eq!(content, TOKENS as usize, "{data:?}");
        let usage_chunks: Vec<&serde_json::Value> = chunks.iter().filter(|c| c["usage"].is_object()).collect();
        if include_usage {
            assert_eq!(usage_chunks.len(), 1, "{data:?}");
            let u = usage_chunks[0];
            assert_eq!(u["choices"], json!([]), "{u}");
            assert_eq!(u["usage"]["completion_tokens"], TOKENS);
            assert!(u["usage"]["cost"].as_f64().is_some_and(|c| c > 0.0), "{u}");
            assert_eq!(chunks.last(), Some(u), "the usage chunk comes last, just before [DONE]");
        } else {
            assert!(usage_chunks.is_empty(), "usage chunk shown without include_usage: {data:?}");
        }
        // The gateway asked for usage upstream either way, so the record has it.
        assert!(rec.stream);
        assert_eq!(rec.completion_tokens, Some(u64::from(TOKENS)), "include_usage {include_usage}");
        assert!(rec.prompt_tokens.is_some_and(|p| p > 0));
        assert!(rec.cost.is_some_and(|c| c.total > 0.0));
        assert!(rec.ttft.is_some() && rec.first_token_at.is_some());
        assert_eq!((rec.status, rec.error), (200, None));
    }
    let page = rig.metrics();
    assert_eq!(metric(&page, "joule_requests_total", &[("model", MODEL), ("deployment", "dep0"), ("status", "200")]), Some(2.0), "{page}");
    assert_eq!(metric(&page, "joule_ttft_seconds_count", &[("model", MODEL)]), Some(2.0), "{page}");
}

#[test]
fn a_failing_first_choice_fails_over_to_the_second() {
    for (failure, kind) in [(Failure::Status500, "status_5xx"), (Failure::Refuse, "connect")] {
        let rig = Rig::new(&[MockConfig { failure, ..MockConfig::default() }, MockConfig::default()], "");
        for stream in [false, true] {
            let body = chat_body(MODEL, stream);
            let mut head = memory::head(Method::POST, "/v1/chat/completions", Some(KEY), Some(client_len(&body)));
            head.explain = true;
            let (rec, client) = rig.exchange(&head, Client::json(&body));
            let resp = client.response();
            assert_eq!(resp.status, 200, "{failure:?}: {}", resp.text());
            // dep0 was ranked first (and failed), dep1 answered.
            let explain: serde_json::Value = serde_json::from_str(resp.header("x-joule-explain").expect("explain header")).unwrap();
            let ranked: Vec<&str> = explain["ranked"].as_array().unwrap().iter().map(|r| r["deployment"].as_str().unwrap()).collect();
            assert_eq!(ranked, ["dep0", "dep1"], "{failure:?}: {explain}");
            assert_eq!(resp.header("x-joule-deployment"), Some("dep1"), "{failure:?}");
            assert_eq!(rec.deployment.as_deref(), Some("dep1"), "{failure:?}");
            assert_eq!(rec.data_center.as_deref(), Some("dc1"), "{failure:?}");
            if stream {
                assert_eq!(resp.events().last().map(String::as_str), Some("[DONE]"), "{failure:?}");
            } else {
                assert_eq!(resp.json()["object"], "chat.completion", "{failure:?}");
            }
        }
        assert_eq!(rig.mocks[0].requests(), 2, "{failure:?}: dep0 was tried first both times");
        assert_eq!(rig.mocks[1].requests(), 2, "{failure:?}");
        let page = rig.metrics();
        assert_eq!(metric(&page, "joule_upstream_failures_total", &[("deployment", "dep0"), ("kind", kind)]), Some(2.0), "{failure:?}\n{page}");
        assert_eq!(metric(&page, "joule_upstream_failures_total", &[("deployment", "dep1")]), None, "{failure:?}\n{page}");
        assert_eq!(metric(&page, "joule_requests_total", &[("deployment", "dep1"), ("status", "200")]), Some(2.0), "{failure:?}\n{page}");
    }
}

/// Creates project `name` with `changes` and a key in it through the gateway's store, and
/// refreshes the registry; returns the project and the key's secret. Outside the runtime.
fn project_key(rig: &Rig, name: &str, changes: ProjectChanges) -> (Project, String) {
    let store = rig.store();
    let project = store.wait(store.create_project(name, changes)).expect("project");
    let new = NewKey { name: format!("{name}-key"), project: Some(name.to_string()), ..NewKey::default() };
    let (_, secret) = store.wait(store.create_key(new)).expect("key");
    store.wait(rig.gw.registry.refresh()).expect("registry refresh");
    (project, secret.expose().clone())
}

const SQLITE_STORE: &str = "[store]\nbackend = \"sqlite\"\npath = \"joule.db\"\n";

#[test]
fn a_project_over_its_rate_limit_gets_429_with_retry_after() {
    let rig = Rig::new(&[MockConfig::default()], SQLITE_STORE);
    let (project, key) = project_key(&rig, "team", ProjectChanges { rpm: Some(Some(1)), ..ProjectChanges::default() });

    let (rec, client) = rig.chat(&key, &chat_body(MODEL, false));
    assert_eq!(client.response().status, 200, "{}", client.response().text());
    assert_eq!(rec.principal.as_ref().and_then(|p| p.project.as_ref()).map(|p| p.name.to_string()).as_deref(), Some("team"));

    let (rec, client) = rig.chat(&key, &chat_body(MODEL, false));
    let resp = client.response();
    resp.expect_error(429, "rate_limit_exceeded");
    let retry: u64 = resp.header("retry-after").expect("retry-after").parse().expect("whole seconds");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!((rec.status, rec.deployment.as_deref()), (429, None));
    assert_eq!(rig.mocks[0].requests(), 1, "the refused request never went upstream");
    let page = rig.metrics();
    assert_eq!(metric(&page, "joule_limit_rejections_total", &[("scope", "project"), ("kind", "requests")]), Some(1.0), "{page}");
    assert_eq!(metric(&page, "joule_requests_total", &[("model", MODEL), ("status", "429")]), Some(1.0), "{page}");

    // A key outside the project is not limited by it.
    let (_, client) = rig.chat(KEY, &chat_body(MODEL, false));
    assert_eq!(client.response().status, 200);

    // finish queued a usage record for each of the project's requests, refused or not.
    assert!(rig.rt.block_on(rig.gw.usage.flush(Duration::from_secs(30))), "usage records written");
    let store = rig.store();
    let filter = UsageFilter { project_id: Some(project.id.clone()), limit: 100, ..UsageFilter::default() };
    let mut records = store.wait(store.usage(filter)).expect("usage").records;
    records.sort_by_key(|r| r.status);
    let summary: Vec<(u16, &str, Option<&str>)> = records.iter().map(|r| (r.status, r.outcome.as_str(), r.deployment.as_deref())).collect();
    assert_eq!(summary, [(200, "ok", Some("dep0")), (429, "rate_limited", None)]);
    assert!(records[0].cost_total > 0.0 && records[1].cost_total == 0.0, "{records:?}");
    assert!(records.iter().all(|r| r.model.as_deref() == Some(MODEL)), "{records:?}");
}

/// The decision log's complete lines, once it has at least `n`. The log is written by a
/// background thread with no way to wait for it, so this polls (bounded at 30 s).
fn decision_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        let lines: Vec<serde_json::Value> = complete.lines().map(|l| serde_json::from_str(l).expect("a JSON decision")).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "the decision log never had {n} lines: {text:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Regression test for issue 10: authorization ran after ranking, so a request for a model
/// the project may not use still made strategy calls and left a decision-log entry.
#[test]
fn a_refused_model_is_refused_before_ranking() {
    const OTHER: &str = "other-model";
    let catalog = |urls: &[String]| {
        format!(
            "{}[[models]]\nid = \"{OTHER}\"\ncategory = \"hosted\"\n\n[[models.deployments]]\nid = \"other-dep\"\ndata_center = \"dc0\"\nurl = \"{}\"\nupstream_model = \"upstream-other\"\nbase_price_input = 0.1\nbase_price_output = 0.2\nttft_ms = 100\ntokens_per_s = 50\n",
            hosted_catalog(MODEL, &urls[..1]),
            urls[1]
        )
    };
    // The `price` strategy as a Wasm plugin, so that strategy calls are counted.
    let plugins = |dir: &Path| {
        std::fs::create_dir(dir.join("plugins")).unwrap();
        std::fs::write(dir.join("plugins/price.wasm"), guests::bytes("price")).unwrap();
    };
    let extra = format!("{SQLITE_STORE}\n[plugins]\ndir = \"plugins\"\nwatch = false\ndecision_log = \"decisions.jsonl\"\n");
    let rig = Rig::with_catalog(&[MockConfig::default(), MockConfig::default()], catalog, &extra, plugins);
    let log = rig.dir.path().join("decisions.jsonl");
    let price = rig.gw.strategies.current().get("price").cloned().expect("the price plugin is loaded");
    let calls = |rig: &Rig| metric(&rig.metrics(), "joule_strategy_call_duration_seconds_count", &[("strategy", "price")]).unwrap_or(0.0);
    let (_, key) = project_key(&rig, "team", ProjectChanges { allowed_models: Some(Some(vec![MODEL.to_string()])), ..ProjectChanges::default() });

    let (rec, client) = rig.chat(&key, &chat_body(OTHER, false));
    let v = client.response().expect_error(403, "model_not_allowed");
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(rec.model.as_deref(), Some(OTHER), "resolved before it was refused");
    assert_eq!((rec.status, rec.deployment.as_deref()), (403, None));
    assert_eq!(rig.mocks[1].requests(), 0);
    assert_eq!(price.calls(), 0, "no strategy call for a refused request");
    assert_eq!(calls(&rig), 0.0, "no strategy call counted for a refused request");

    // An allowed request is ranked, by the plugin, and logged: the log's only line is its.
    let (_, client) = rig.chat(&key, &chat_body(MODEL, false));
    assert_eq!(client.response().status, 200, "{}", client.response().text());
    let strategy = client.response().header("x-joule-strategy").map(str::to_string);
    assert!(strategy.as_deref().is_some_and(|s| s.starts_with("price@") && s != "price@native"), "ranked by the plugin: {strategy:?}");
    assert_eq!(price.calls(), 1);
    assert_eq!(calls(&rig), 1.0);
    // Decisions are written in order, so once this request's line is there any line of the
    // refused one would be too.
    let lines = decision_lines(&log, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["input"]["model"], MODEL, "{lines:?}");
    assert!(!std::fs::read_to_string(&log).unwrap().contains(OTHER));
}

#[test]
fn a_body_over_the_limit_is_413_and_closes_the_connection() {
    const LIMIT: usize = 1024;
    let rig = Rig::new(&[MockConfig::default()], &format!("[limits]\nmax_body_bytes = {LIMIT}\n"));
    let mut big = chat_body(MODEL, false);
    big["messages"][0]["content"] = json!("x".repeat(2 * LIMIT));
    let bytes = serde_json::to_vec(&big).unwrap();

    // Declared too large: refused before reading any of it.
    let head = memory::head(Method::POST, "/v1/chat/completions", Some(KEY), Some(bytes.len()));
    let (rec, client) = rig.exchange(&head, Client::new(bytes.clone()));
    client.response().expect_error(413, "request_too_large");
    assert!(client.closed_after);
    assert_eq!(client.chunks_read, 0);
    assert_eq!((rec.status, rec.error), (413, Some("body_too_large")));

    // No declared length: refused once the chunks read pass the limit, the rest unread.
    let head = memory::head(Method::POST, "/v1/chat/completions", Some(KEY), None);
    let (_, client) = rig.exchange(&head, Client::new(bytes).chunked(256));
    client.response().expect_error(413, "request_too_large");
    assert!(client.closed_after);
    assert_eq!(client.chunks_read, LIMIT / 256 + 1, "read up to the chunk that crossed the limit");

    // At the limit it is served.
    let small = chat_body(MODEL, false);
    assert!(client_len(&small) <= LIMIT);
    let (_, client) = rig.chat(KEY, &small);
    assert_eq!(client.response().status, 200);
    assert!(!client.closed_after);
    assert_eq!(rig.mocks[0].requests(), 1);
}

#[test]
fn a_client_that_stops_sending_gets_408_and_a_broken_body_400() {
    let rig = Rig::new(&[MockConfig::default()], "[limits]\nclient_body_timeout_ms = 200\n");
    let body = serde_json::to_vec(&chat_body(MODEL, false)).unwrap();
    let head = memory::head(Method::POST, "/v1/chat/completions", Some(KEY), Some(body.len()));

    // Half the body, then nothing, ever: only the gateway's timeout ends the wait.
    let half = body[..body.len() / 2].to_vec();
    let (rec, client) = rig.exchange(&head, Client::new(half.clone()).then(BodyEnd::Stall));
    client.response().expect_error(408, "request_timeout");
    assert_eq!(client.chunks_read, 1);
    assert!(client.closed_after, "the rest of the body may still come: the connection must close");
    assert_eq!((rec.status, rec.error), (408, Some("body_timeout")));

    // The connection breaks mid-body.
    let (rec, client) = rig.exchange(&head, Client::new(half).then(BodyEnd::Break));
    let resp = client.response();
    assert_eq!(resp.status, 400, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["message"], "The request body could not be read.", "{v}");
    assert!(client.closed_after, "after a broken or malformed body the framing is lost: the connection must close");
    assert_eq!(rec.status, 400);

    assert_eq!(rig.mocks[0].requests(), 0);
    // A slow client within the timeout is served.
    let (_, client) = rig.exchange(&head, Client::new(body.clone()).chunked(body.len() / 4 + 1).slow(Duration::from_millis(1)));
    assert_eq!(client.response().status, 200);
}

#[test]
fn a_client_gone_mid_stream_ends_the_exchange() {
    let rig = Rig::new(&[MockConfig { tokens: 8, ..MockConfig::default() }], "");
    let body = chat_body(MODEL, true);
    let head = memory::head(Method::POST, "/v1/chat/completions", Some(KEY), Some(client_len(&body)));
    // Three writes arrive (the role chunk and the first content chunks); then the client is
    // gone.
    let (rec, client, result) = rig.try_exchange(&head, Client::json(&body).gone_after(3));
    assert!(result.is_err(), "the handler reports the failed write");
    assert_eq!(client.sent.len(), 3, "nothing written after the failed write");
    assert!(client.sent.iter().all(|s| !s.end), "the body never ended");
    let events = client.response().events();
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    assert_eq!(rec.deployment.as_deref(), Some("dep0"));
    assert_eq!(rec.error, Some("client_disconnected"));
    // The gateway is ready for the next request.
    assert_eq!(rig.gw.in_flight(), 0);
    let (_, client) = rig.chat(KEY, &body);
    assert_eq!(client.response().events().last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let rig = Rig::new(&[MockConfig::default()], "");
    for (method, path) in [(Method::GET, "/v1/nope"), (Method::POST, "/v1/chat"), (Method::GET, "/")] {
        let (rec, client) = rig.exchange(&memory::head(method.clone(), path, Some(KEY), None), Client::new(""));
        let v = client.response().expect_error(404, "unknown_url");
        assert!(v["error"]["message"].as_str().unwrap().contains(path), "{v}");
        assert!(!client.closed_after, "{method} {path}: no body left unread");
        assert_eq!(rec.status, 404);
    }
    for (method, path, allow) in [
        (Method::GET, "/v1/chat/completions", "POST"),
        (Method::PUT, "/v1/chat/completions", "POST"),
        (Method::POST, "/v1/models", "GET"),
        (Method::DELETE, "/v1/models/llama-test", "GET"),
        (Method::POST, "/healthz", "GET"),
        (Method::GET, "/v1/messages", "POST"),
    ] {
        let (rec, client) = rig.exchange(&memory::head(method.clone(), path, Some(KEY), Some(2)), Client::new("{}"));
        let resp = client.response();
        assert_eq!(resp.header("allow"), Some(allow), "{method} {path}: RFC 9110 asks for Allow on a 405");
        if path == "/v1/messages" {
            assert_eq!(resp.json()["error"]["type"], "invalid_request_error", "Anthropic's shape");
            assert_eq!(resp.status, 405);
        } else {
            resp.expect_error(405, "method_not_allowed");
        }
        assert!(client.closed_after, "{method} {path}: the body was left unread");
        assert_eq!(client.chunks_read, 0, "{method} {path}");
        assert_eq!(rec.status, 405);
    }
    // Without a key either: the route is checked first.
    let (_, client) = rig.exchange(&memory::head(Method::GET, "/v1/nope", None, None), Client::new(""));
    client.response().expect_error(404, "unknown_url");
    let (_, client) = rig.exchange(&memory::head(Method::GET, "/healthz", None, None), Client::new(""));
    assert_eq!((client.response().status, client.response().json()), (200, json!({"status": "ok"})));
    assert_eq!(rig.mocks[0].requests(), 0);
}

#[test]
fn an_empty_model_name_is_a_missing_model_not_a_bad_strategy() {
    let rig = Rig::new(&[MockConfig::default()], "");
    for name in ["", "@price", "@"] {
        let (rec, client) = rig.chat(KEY, &json!({"model": name, "messages": [{"role": "user", "content": "hi"}]}));
        let v = client.response().expect_error(400, "model_not_found");
        assert_eq!(v["error"]["param"], "model", "{name:?}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("model name"), "{name:?}: {v}");
        assert_eq!(rec.status, 400);
    }
    let (_, client) = rig.chat(KEY, &json!({"model": format!("{MODEL}@cheap"), "messages": [{"role": "user", "content": "hi"}]}));
    client.response().expect_error(400, "invalid_strategy");
    assert_eq!(rig.mocks[0].requests(), 0);
}
