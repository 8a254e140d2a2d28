//! Projects, keys, usage records, limits and budgets end to end: the real gateway binary with
//! an SQLite or PostgreSQL store, managed through the admin API, against mock upstreams.

mod common;

use std::time::{Duration, Instant};

use common::pg::PgCluster;
use common::*;
use joule::secret::KeyHash;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token-0123";
const MODEL: &str = "llama-test";

fn admin_toml() -> String {
    format!("[admin]\ntoken_sha256 = \"{}\"\n", KeyHash::of(ADMIN).to_hex())
}

/// One data center; each model served by one deployment at the given mock.
fn catalog(models: &[(&str, &MockServer)]) -> String {
    let mut s = String::from("[[data_centers]]\nid = \"dc0\"\npue = 1.2\n\n");
    for (i, (id, m)) in models.iter().enumerate() {
        s += &format!(
            "[[models]]\nid = \"{id}\"\ncategory = \"hosted\"\n[[models.deployments]]\nid = \"dep{i}\"\ndata_center = \"dc0\"\nurl = \"{}\"\nbase_price_input = 1.0\nbase_price_output = 2.0\n\n",
            m.base_url()
        );
    }
    s
}

async fn admin(gw: &Gateway, c: &reqwest::Client, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin_call(gw, c, ADMIN, method, path, body).await
}

async fn create_key(gw: &Gateway, c: &reqwest::Client, body: Value) -> (String, String) {
    let (s, v) = admin(gw, c, "POST", "/keys", Some(body)).await;
    assert_eq!(s, 201, "{v}");
    (v["id"].as_str().unwrap().to_string(), v["key"].as_str().unwrap().to_string())
}

async fn chat_with(gw: &Gateway, c: &reqwest::Client, key: &str, model: &str, stream: bool) -> reqwest::Response {
    c.post(format!("{}/chat/completions", gw.base())).bearer_auth(key).json(&chat_body(model, stream)).send().await.unwrap()
}

/// Polls the usage summary (bounded) until it reports `n` requests for `query`.
async fn wait_for_records(gw: &Gateway, c: &reqwest::Client, query: &str, n: u64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (s, v) = admin(gw, c, "GET", &format!("/usage/summary{query}"), None).await;
        if s == 200 && v["requests"].as_u64() == Some(n) {
            return v;
        }
        assert!(Instant::now() < deadline, "expected {n} records for `{query}`, last answer {s}: {v}\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(gw: &Gateway, c: &reqwest::Client, line_start: &str) -> f64 {
    let text = c.get(format!("{}/metrics", gw.admin())).send().await.unwrap().text().await.unwrap();
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_manages_projects_and_keys_with_isolation() {
    let m1 = mock(MockConfig { ttft_ms: 1, ..Default::default() }).await;
    let m2 = mock(MockConfig { ttft_ms: 1, ..Default::default() }).await;
    let gw = Gateway::start(&format!("{}\n{}", catalog(&[(MODEL, &m1), ("other-model", &m2)]), admin_toml())).await;
    let c = client();

    // The admin API needs the token; metrics stay open.
    for auth in [None, Some("wrong"), Some("")] {
        let mut rb = c.get(format!("{}/admin/projects", gw.admin()));
        if let Some(a) = auth {
            rb = rb.bearer_auth(a);
        }
        expect_error(rb.send().await.unwrap(), 401, Some("invalid_admin_token")).await;
    }
    assert_eq!(c.get(format!("{}/metrics", gw.admin())).send().await.unwrap().status(), 200);

    let (s, alpha) = admin(&gw, &c, "POST", "/projects", Some(json!({"name": "alpha", "allowed_models": [MODEL], "default_strategy": "latency"}))).await;
    assert_eq!(s, 201, "{alpha}");
    let (s, beta) = admin(&gw, &c, "POST", "/projects", Some(json!({"name": "beta", "budget_usd": 100.0, "budget_period": "day"}))).await;
    assert_eq!(s, 201, "{beta}");
    let (s, v) = admin(&gw, &c, "POST", "/projects", Some(json!({"name": "alpha"}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));

    // Malformed requests, SQL-looking strings in every field, long names: 4xx, nothing written.
    let sql = "a'; DROP TABLE projects; --";
    let bad_bodies = [
        json!({"name": sql}),
        json!({"name": "x".repeat(65)}),
        json!({"name": "ok", "allowed_models": [sql]}),
        json!({"name": "ok", "allowed_models": ["no-such-model"]}),
        json!({"name": "ok", "default_strategy": sql}),
        json!({"name": "ok", "rpm": 0}),
        json!({"name": "ok", "rpm": -5}),
        json!({"name": "ok", "rpm": "many"}),
        json!({"name": "ok", "budget_usd": -1}),
        json!({"name": "ok", "budget_period": sql}),
        json!({"name": "ok", "surprise": 1}),
        json!({"allowed_models": null}),
        json!(["name", "ok"]),
    ];
    for b in bad_bodies {
        let (s, v) = admin(&gw, &c, "POST", "/projects", Some(b.clone())).await;
        assert_eq!(s, 400, "{b} → {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    for raw in ["{", "", "null"] {
        let resp = c.post(format!("{}/admin/projects", gw.admin())).bearer_auth(ADMIN).body(raw).send().await.unwrap();
        expect_error(resp, 400, None).await;
    }
    let (s, v) = admin(&gw, &c, "PATCH", "/projects/alpha", Some(json!({"rpm": 5, "allowed_models": [sql]}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = admin(&gw, &c, "PATCH", "/projects/alpha", Some(json!({"name": "beta"}))).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = admin(&gw, &c, "PATCH", &format!("/projects/{}", "%27%3B--"), Some(json!({"rpm": 5}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = admin(&gw, &c, "GET", "/projects/ghost", None).await;
    assert_eq!(s, 404);
    let (_, list) = admin(&gw, &c, "GET", "/projects", None).await;
    assert_eq!(list["projects"].as_array().unwrap().len(), 2, "{list}");
    let (_, a_now) = admin(&gw, &c, "GET", "/projects/alpha", None).await;
    assert_eq!(a_now, alpha, "refused changes left alpha untouched");

    // Keys: shown once, then only id, name and prefix.
    let (alpha_key_id, alpha_key) = create_key(&gw, &c, json!({"name": "dev-key", "project": "alpha"})).await;
    let (_, beta_key) = create_key(&gw, &c, json!({"name": "n8n-workflow", "project": "beta"})).await;
    assert!(alpha_key.starts_with("sk-joule-") && alpha_key.len() >= 9 + 32);
    for (b, want) in [
        (json!({"name": "dev-key"}), 409),
        (json!({"name": "k2", "project": "ghost"}), 404),
        (json!({"name": sql}), 400),
        (json!({"name": "k3", "project": sql}), 400),
        (json!({"project": "alpha"}), 400),
    ] {
        let (s, v) = admin(&gw, &c, "POST", "/keys", Some(b.clone())).await;
        assert_eq!(s, want, "{b} → {v}");
    }
    let (_, keys) = admin(&gw, &c, "GET", "/keys", None).await;
    let text = keys.to_string();
    assert!(!text.contains(&alpha_key) && !text.contains(&KeyHash::of(&alpha_key).to_hex()), "never the key or its hash");
    let keys = keys["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "two store keys and the config key: {keys:?}");
    assert!(keys.iter().any(|k| k["source"] == "config" && k["id"] == "config:test"));
    let (s, _) = admin(&gw, &c, "DELETE", "/keys/config:test", None).await;
    assert_eq!(s, 409, "config keys are read-only");
    let (_, of_alpha) = admin(&gw, &c, "GET", "/keys?project=alpha", None).await;
    assert_eq!(of_alpha["keys"].as_array().unwrap().len(), 1);

    // Requests: alpha may use MODEL only; beta every model; the config key too.
    let r = chat_with(&gw, &c, &alpha_key, MODEL, false).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-joule-strategy"].to_str().unwrap().starts_with("latency"), "project default strategy");
    expect_error(chat_with(&gw, &c, &alpha_key, "other-model", false).await, 403, Some("model_not_allowed")).await;
    let r = chat_with(&gw, &c, &alpha_key, MODEL, true).await;
    assert!(read_sse(r, Duration::from_secs(10)).await.ended_cleanly);
    for model in [MODEL, "other-model"] {
        assert_eq!(chat_with(&gw, &c, &beta_key, model, false).await.status(), 200);
    }
    assert_eq!(gw.chat(&c, chat_body("other-model", false)).send().await.unwrap().status(), 200);
    assert_eq!(m1.requests() + m2.requests(), 5, "the refused request never went upstream");

    // The model catalog shows a key only what its project may use; another project's model
    // answers like an unknown one.
    let get = |key: &str, path: &str| c.get(format!("{}{path}", gw.base().trim_end_matches("/v1"))).bearer_auth(key).send();
    let ids = |v: Value| v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(get(&alpha_key, "/v1/models").await.unwrap().json().await.unwrap()), vec![MODEL.to_string()]);
    assert_eq!(ids(get(&beta_key, "/v1/models").await.unwrap().json().await.unwrap()), vec![MODEL.to_string(), "other-model".into()]);
    assert_eq!(get(&alpha_key, &format!("/v1/models/{MODEL}")).await.unwrap().status(), 200);
    for path in ["/v1/models/other-model", "/v1/models/other-model/prices"] {
        expect_error(get(&alpha_key, path).await.unwrap(), 404, Some("model_not_found")).await;
        assert_eq!(get(&beta_key, path).await.unwrap().status(), 200, "{path}");
    }

    // Usage: isolation by project, filters, pagination, CSV.
    wait_for_records(&gw, &c, "", 6, Duration::from_secs(10)).await;
    let (_, ua) = admin(&gw, &c, "GET", "/usage?project=alpha", None).await;
    let ua = ua["records"].as_array().unwrap().clone();
    assert_eq!(ua.len(), 3);
    assert!(ua.iter().all(|r| r["project_id"] == alpha["id"] && r["key_id"] == alpha_key_id.as_str()));
    let (_, ub) = admin(&gw, &c, "GET", "/usage?project=beta", None).await;
    assert_eq!(ub["records"].as_array().unwrap().len(), 2);
    assert!(ub["records"].as_array().unwrap().iter().all(|r| r["project_id"] == beta["id"]));
    let refused = ua.iter().find(|r| r["status"] == 403).expect("the 403 is recorded");
    assert_eq!(refused["outcome"], "model_not_allowed");
    let ok = ua.iter().find(|r| r["status"] == 200 && r["stream"] == false).unwrap();
    assert_eq!((ok["deployment"].as_str(), ok["data_center"].as_str(), ok["model"].as_str()), (Some("dep0"), Some("dc0"), Some(MODEL)));
    let (tin, tout) = (ok["tokens_in"].as_f64().unwrap(), ok["tokens_out"].as_f64().unwrap());
    assert!(tin > 0.0 && tout > 0.0, "{ok}");
    let expect = tin * 1.0 / 1e6 + tout * 2.0 / 1e6;
    assert!((ok["cost_total"].as_f64().unwrap() - expect).abs() < 1e-12, "cost = tokens × price: {ok}");
    let streamed = ua.iter().find(|r| r["stream"] == true).unwrap();
    assert!(streamed["ttft_ms"].as_f64().unwrap() > 0.0 && streamed["tokens_out"].as_u64().unwrap() > 0, "{streamed}");

    let (_, f) = admin(&gw, &c, "GET", &format!("/usage?status=403&key={alpha_key_id}"), None).await;
    assert_eq!(f["records"].as_array().unwrap().len(), 1);
    let (_, f) = admin(&gw, &c, "GET", "/usage?model=other-model", None).await;
    assert_eq!(f["records"].as_array().unwrap().len(), 3, "403 of alpha, beta, config key");
    let (_, f) = admin(&gw, &c, "GET", &format!("/usage?since={}", u64::MAX / 4), None).await;
    assert!(f["records"].as_array().unwrap().is_empty());
    let mut ids = Vec::new();
    let mut path = "/usage?limit=4".to_string();
    loop {
        let (s, p) = admin(&gw, &c, "GET", &path, None).await;
        assert_eq!(s, 200, "{p}");
        ids.extend(p["records"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()));
        match p["next_cursor"].as_str() {
            Some(cur) => path = format!("/usage?limit=4&cursor={cur}"),
            None => break,
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "pages cover every record once");
    let csv = c.get(format!("{}/admin/usage?format=csv&project=beta", gw.admin())).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("id,ts_ms,instance,project_id,key_id"));
    assert_eq!(lines[1].split(',').count(), lines[0].split(',').count());
    for bad in ["/usage?project=ghost", "/usage?status=abc", "/usage?limit=0", "/usage?limit=99999", "/usage?model=%27%20OR%201%3D1", "/usage?since=yesterday", "/usage?cursor=zzz", "/usage?format=xml", "/usage?colour=red", "/usage?a=1&a=2"] {
        let (s, v) = admin(&gw, &c, "GET", bad, None).await;
        assert!(s == 400 || s == 404, "{bad} → {s} {v}");
    }
    let (s, _) = admin(&gw, &c, "PUT", "/usage", None).await;
    assert_eq!(s, 405);
    let resp = c.put(format!("{}/admin/projects/alpha", gw.admin())).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers().get("allow").and_then(|v| v.to_str().ok())), (405, Some("GET, PATCH, DELETE")));

    // Revocation takes effect at once on this instance.
    let (s, v) = admin(&gw, &c, "DELETE", "/projects/alpha", None).await;
    assert_eq!(s, 409, "active keys: {v}");
    let (s, v) = admin(&gw, &c, "DELETE", &format!("/keys/{alpha_key_id}"), None).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["revoked_at"].is_number());
    expect_error(chat_with(&gw, &c, &alpha_key, MODEL, false).await, 401, Some("invalid_api_key")).await;
    let (s, _) = admin(&gw, &c, "DELETE", "/projects/alpha", None).await;
    assert_eq!(s, 200);
    // Last use is recorded off the request path, by the usage writer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, keys) = admin(&gw, &c, "GET", "/keys", None).await;
        let dev = keys["keys"].as_array().unwrap().iter().find(|k| k["id"] == alpha_key_id.as_str()).unwrap().clone();
        if dev["last_used_at"].is_number() {
            break;
        }
        assert!(Instant::now() < deadline, "last use never recorded: {dev}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_budgets_answer_429() {
    let m = mock(MockConfig { ttft_ms: 1, ..Default::default() }).await;
    let gw = Gateway::start(&format!("{}\n{}", catalog(&[(MODEL, &m)]), admin_toml())).await;
    let c = client();
    let project = |name: &str, extra: Value| {
        let mut b = json!({"name": name});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    for (name, extra) in [
        ("rpm2", json!({"rpm": 2})),
        ("tpm10", json!({"tpm": 10})),
        ("budget", json!({"budget_usd": 0.000001})),
        ("free", json!({})),
    ] {
        let (s, v) = admin(&gw, &c, "POST", "/projects", Some(project(name, extra))).await;
        assert_eq!(s, 201, "{v}");
    }

    // Requests per minute of a project, over all its keys.
    let (_, k1) = create_key(&gw, &c, json!({"name": "r1", "project": "rpm2"})).await;
    let (_, k2) = create_key(&gw, &c, json!({"name": "r2", "project": "rpm2"})).await;
    assert_eq!(chat_with(&gw, &c, &k1, MODEL, false).await.status(), 200);
    assert_eq!(chat_with(&gw, &c, &k2, MODEL, false).await.status(), 200);
    let r = chat_with(&gw, &c, &k1, MODEL, false).await;
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let v = expect_error(r, 429, Some("rate_limit_exceeded")).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("project"), "{v}");

    // Requests per minute of one key.
    let (_, kk) = create_key(&gw, &c, json!({"name": "slow-key", "project": "free", "rpm": 1})).await;
    assert_eq!(chat_with(&gw, &c, &kk, MODEL, false).await.status(), 200);
    let v = expect_error(chat_with(&gw, &c, &kk, MODEL, false).await, 429, Some("rate_limit_exceeded")).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("key"), "{v}");
    let (_, other) = create_key(&gw, &c, json!({"name": "other-key", "project": "free"})).await;
    assert_eq!(chat_with(&gw, &c, &other, MODEL, false).await.status(), 200, "other keys of the project unaffected");

    // Tokens per minute: the first request spends more than 10 tokens, the next is refused.
    let (_, kt) = create_key(&gw, &c, json!({"name": "t", "project": "tpm10"})).await;
    let r = chat_with(&gw, &c, &kt, MODEL, true).await;
    assert!(read_sse(r, Duration::from_secs(10)).await.ended_cleanly);
    // Tokens are taken when the request is accounted, just before its record is queued.
    wait_for_records(&gw, &c, "?project=tpm10", 1, Duration::from_secs(10)).await;
    expect_error(chat_with(&gw, &c, &kt, MODEL, false).await, 429, Some("rate_limit_exceeded")).await;

    // Budget: one request costs more than $0.000001; the next is refused until the month ends.
    let (_, kb) = create_key(&gw, &c, json!({"name": "b", "project": "budget"})).await;
    assert_eq!(chat_with(&gw, &c, &kb, MODEL, false).await.status(), 200);
    wait_for_records(&gw, &c, "?project=budget", 1, Duration::from_secs(10)).await;
    let r = chat_with(&gw, &c, &kb, MODEL, false).await;
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=31 * 86_400).contains(&retry), "{retry}");
    let v = expect_error(r, 429, Some("insufficient_quota")).await;
    assert_eq!(v["error"]["type"], "insufficient_quota");
    // Raising the budget lets it through again.
    let (s, _) = admin(&gw, &c, "PATCH", "/projects/budget", Some(json!({"budget_usd": 10.0}))).await;
    assert_eq!(s, 200);
    assert_eq!(chat_with(&gw, &c, &kb, MODEL, false).await.status(), 200);

    assert_eq!(metric(&gw, &c, "joule_limit_rejections_total{kind=\"requests\",scope=\"project\"}").await, 1.0);
    assert_eq!(metric(&gw, &c, "joule_limit_rejections_total{kind=\"requests\",scope=\"key\"}").await, 1.0);
    assert_eq!(metric(&gw, &c, "joule_limit_rejections_total{kind=\"tokens\",scope=\"project\"}").await, 1.0);
    assert_eq!(metric(&gw, &c, "joule_limit_rejections_total{kind=\"budget\",scope=\"project\"}").await, 1.0);
    // Refused requests are usage records too.
    let v = wait_for_records(&gw, &c, "?status=429", 4, Duration::from_secs(10)).await;
    assert_eq!(v["tokens_in"], 0);
}

/// One record per request — success, upstream error, client disconnect, mid-stream failure —
/// and every one of them in the store after SIGTERM, although the writer's interval is far
/// longer than the test: the shutdown flush wrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_recorded_and_shutdown_flushes() {
    let ok = mock(MockConfig { ttft_ms: 1, ..Default::default() }).await;
    let slow = mock(MockConfig { ttft_ms: 1, tokens_per_s: 4.0, tokens: 40, ..Default::default() }).await;
    let flaky = mock(MockConfig { ttft_ms: 1, failure: Failure::DropMidStream { after_tokens: 2 }, ..Default::default() }).await;
    let broken = mock(MockConfig { failure: Failure::Status500, ..Default::default() }).await;
    let extra = format!(
        "{}\n[store]\nflush_interval_ms = 600000\nbatch_size = 10000\n",
        catalog(&[(MODEL, &ok), ("slow", &slow), ("flaky", &flaky), ("broken", &broken)])
    );
    let mut gw = Gateway::start(&extra).await;
    let c = client();
    assert_eq!(gw.chat(&c, chat_body(MODEL, false)).send().await.unwrap().status(), 200);
    let r = gw.chat(&c, chat_body(MODEL, true)).send().await.unwrap();
    assert!(read_sse(r, Duration::from_secs(10)).await.ended_cleanly);
    expect_error(gw.chat(&c, chat_body("broken", false)).send().await.unwrap(), 502, None).await;
    let r = gw.chat(&c, chat_body("flaky", true)).send().await.unwrap();
    let got = read_sse(r, Duration::from_secs(10)).await;
    assert!(got.data().iter().any(|d| d.contains("upstream_stream_interrupted")));
    // The client goes away mid-stream.
    let mut r = gw.chat(&c, chat_body("slow", true)).send().await.unwrap();
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    expect_error(gw.chat(&c, chat_body("nope", false)).send().await.unwrap(), 404, None).await;
    // Unauthenticated requests leave no record.
    expect_error(c.post(format!("{}/chat/completions", gw.base())).json(&chat_body(MODEL, false)).send().await.unwrap(), 401, None).await;

    // The disconnect is noticed when the next event cannot be written (≤ 250 ms at 4 tok/s).
    logged(&gw, "client_disconnected").await;
    let status = gw.terminate(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status}\n{}", gw.logs());

    let records = stored_records(&gw);
    let mut outcomes: Vec<(u16, String)> = records.iter().map(|r| (r.status, r.outcome.clone())).collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            (200, "client_disconnected".to_string()),
            (200, "ok".to_string()),
            (200, "ok".to_string()),
            (200, "upstream_stream_interrupted".to_string()),
            (404, "model_not_found".to_string()),
            (502, "upstream_failed".to_string()),
        ],
        "{records:#?}"
    );
    assert!(records.iter().all(|r| r.key_id.as_deref() == Some("config:test") && r.project_id.is_none()));
    let cut = records.iter().find(|r| r.outcome == "upstream_stream_interrupted").unwrap();
    assert!(cut.tokens_in.is_none() && cut.deployment.as_deref() == Some("dep2"), "{cut:?}");
}

/// The usage records in the SQLite store of a gateway that has exited.
fn stored_records(gw: &Gateway) -> Vec<joule::usage::UsageRecord> {
    let db = gw.dir.path().join("joule.db");
    std::thread::spawn(move || {
        let store = joule::store::Store::open(&joule::store::StoreLocation::Sqlite(db)).unwrap();
        store.wait(store.usage(joule::store::UsageFilter { limit: 100, ..Default::default() })).unwrap().records
    })
    .join()
    .unwrap()
}

/// Waits (bounded) until the gateway's log contains `needle`.
async fn logged(gw: &Gateway, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains(needle) {
        assert!(Instant::now() < deadline, "not logged: {needle}\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ctrl-C (SIGINT) drains and flushes like SIGTERM: a stream in flight is finished, and the
/// records queued for a writer whose interval is far longer than the test are in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_flushes_like_sigterm() {
    let ok = mock(MockConfig { ttft_ms: 1, ..Default::default() }).await;
    let slow = mock(MockConfig { ttft_ms: 1, tokens_per_s: 20.0, tokens: 10, ..Default::default() }).await;
    let extra = format!("{}\n[store]\nflush_interval_ms = 600000\nbatch_size = 10000\n", catalog(&[(MODEL, &ok), ("slow", &slow)]));
    let mut gw = Gateway::start(&extra).await;
    let c = client();
    assert_eq!(gw.chat(&c, chat_body(MODEL, false)).send().await.unwrap().status(), 200);
    let mut r = gw.chat(&c, chat_body("slow", true)).send().await.unwrap();
    assert!(r.chunk().await.unwrap().is_some(), "the stream has started");
    gw.signal("INT");
    let got = read_sse(r, Duration::from_secs(10)).await;
    assert!(got.ended_cleanly && got.data().last() == Some(&"[DONE]"), "the stream in flight is finished: {:?}", got.data());
    let status = gw.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status}\n{}", gw.logs());
    assert!(gw.logs().contains(r#""message":"shutdown complete""#), "{}", gw.logs());
    let mut outcomes: Vec<(u16, String)> = stored_records(&gw).iter().map(|r| (r.status, r.outcome.clone())).collect();
    outcomes.sort();
    assert_eq!(outcomes, [(200, "ok".to_string()), (200, "ok".to_string())]);
}

/// A second Ctrl-C during the drain exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_exits_without_waiting_for_the_drain() {
    // 400 tokens at 4 per second: in flight far longer than the test's grace period (10 s).
    let slow = mock(MockConfig { ttft_ms: 1, tokens_per_s: 4.0, tokens: 400, ..Default::default() }).await;
    let mut gw = Gateway::start(&format!("{}\n[store]\nflush_interval_ms = 600000\n", catalog(&[("slow", &slow)]))).await;
    let c = client();
    let mut r = gw.chat(&c, chat_body("slow", true)).send().await.unwrap();
    assert!(r.chunk().await.unwrap().is_some(), "the stream has started");
    gw.signal("INT");
    logged(&gw, "shutting down: draining").await;
    let second = Instant::now();
    gw.signal("INT");
    let status = gw.wait_exit(Duration::from_secs(5)).expect("exits at once");
    assert_eq!(status.code(), Some(130), "{status}\n{}", gw.logs());
    assert!(second.elapsed() < Duration::from_secs(5));
    assert!(!gw.logs().contains(r#""message":"shutdown complete""#), "{}", gw.logs());
    drop(r);
}

fn pg_store(url: &str) -> String {
    format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\nretry_interval_ms = 100\nflush_interval_ms = 50\n")
}

/// Two gateway processes on one PostgreSQL: a key created or revoked through one works or
/// stops working on the other within 2 s (LISTEN/NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_propagate_between_instances_within_two_seconds() {
    let pg = PgCluster::start();
    let m = mock(MockConfig { ttft_ms: 1, ..Default::default() }).await;
    let extra = format!("{}\n{}\n{}", catalog(&[(MODEL, &m)]), admin_toml(), pg_store(&pg.url()));
    let a = Gateway::start(&extra).await;
    let b = Gateway::start(&extra).await;
    let c = client();
    let (s, _) = admin(&a, &c, "POST", "/projects", Some(json!({"name": "shared"}))).await;
    assert_eq!(s, 201);

    let (key_id, key) = create_key(&a, &c, json!({"name": "roaming", "project": "shared"})).await;
    let created = Instant::now();
    loop {
        let status = chat_with(&b, &c, &key, MODEL, false).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 401);
        assert!(created.elapsed() < Duration::from_secs(2), "key not usable on instance B within 2 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("key usable on B after {:?}", created.elapsed());

    let (s, _) = admin(&a, &c, "DELETE", &format!("/keys/{key_id}"), None).await;
    assert_eq!(s, 200);
    let revoked = Instant::now();
    loop {
        let status = chat_with(&b, &c, &key, MODEL, false).await.status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(revoked.elapsed() < Duration::from_secs(2), "revoked key still accepted by instance B after 2 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("key refused on B after {:?}", revoked.elapsed());
    // B's records reach the shared store once its writer flushes a batch (every 200 ms).
    let flushed = Instant::now();
    let v = loop {
        let (_, v) = admin(&b, &c, "GET", "/usage?project=shared", None).await;
        if v["records"].as_array().is_some_and(|r| !r.is_empty()) {
            break v;
        }
        assert!(flushed.elapsed() < Duration::from_secs(10), "no usage record written: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let instances: std::collections::HashSet<&str> =
        v["records"].as_array().unwrap().iter().filter_map(|r| r["instance"].as_str()).collect();
    assert_eq!(instances.len(), 1, "only B served requests: {v}");
}

/// PostgreSQL stops during load and starts again: records spill to the local file and are
/// written when it is back — the record count equals the request count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_no_usage_record() {
    let pg = PgCluster::start();
    let m = mock(MockConfig { ttft_ms: 1, tokens: 4, ..Default::default() }).await;
    let extra = format!("{}\n{}\n{}", catalog(&[(MODEL, &m)]), admin_toml(), pg_store(&pg.url()));
    let gw = Gateway::start(&extra).await;
    let c = client();
    let (s, _) = admin(&gw, &c, "POST", "/projects", Some(json!({"name": "load"}))).await;
    assert_eq!(s, 201);
    let (_, key) = create_key(&gw, &c, json!({"name": "loader", "project": "load"})).await;

    // Load from 8 concurrent clients for the whole test; PostgreSQL goes down and up meanwhile.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (c, key, url, stop, sent) = (c.clone(), key.clone(), format!("{}/chat/completions", gw.base()), stop.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 2_000 {
                let r = c.post(&url).bearer_auth(&key).json(&chat_body(MODEL, n % 2 == 0)).send().await.unwrap();
                assert_eq!(r.status(), 200, "requests keep working while the store is down");
                r.bytes().await.unwrap();
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let wait_sent = |n: u64| {
        let sent = sent.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while sent.load(std::sync::atomic::Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "load stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_sent(100).await;
    tokio::task::block_in_place(|| pg.stop_server());
    let at_stop = sent.load(std::sync::atomic::Ordering::Relaxed);
    wait_sent(at_stop + 200).await;
    // Records of the outage are in the spill file by now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&gw, &c, "joule_usage_spilled_total").await < 1.0 {
        assert!(Instant::now() < deadline, "nothing spilled:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| pg.start_server());
    let at_start = sent.load(std::sync::atomic::Ordering::Relaxed);
    wait_sent(at_start + 100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let total = sent.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("requests: {total} ({} while PostgreSQL was down)", at_start - at_stop);
    wait_for_records(&gw, &c, "?project=load", total, Duration::from_secs(60)).await;
    assert!(metric(&gw, &c, "joule_usage_spilled_total").await >= 1.0);
    assert_eq!(metric(&gw, &c, "joule_usage_dropped_total").await, 0.0);
}

/// Two instances sharing one store enforce one budget: each adds the other's recorded spend
/// (read every `budget_sync_interval_ms`) to its own. Also: a key created through one instance
/// reaches the other through the change-sequence poll (SQLite has no NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_store_share_budgets() {
    let m = mock(MockConfig { ttft_ms: 1, ..Default::default() }).await;
    let shared = tempfile::tempdir().unwrap();
    let db = shared.path().join("shared.db");
    let extra = format!(
        "{}\n{}\n[store]\npath = \"{}\"\nbudget_sync_interval_ms = 100\nflush_interval_ms = 20\n",
        catalog(&[(MODEL, &m)]),
        admin_toml(),
        db.display()
    );
    let a = Gateway::start(&extra).await;
    let b = Gateway::start(&extra).await;
    let c = client();
    // Price 1 and 2 $/Mtok: each request costs a few $1e-5; the budget allows about two.
    let (s, _) = admin(&a, &c, "POST", "/projects", Some(json!({"name": "shared", "budget_usd": 0.0001, "budget_period": "day"}))).await;
    assert_eq!(s, 201);
    let (_, key) = create_key(&a, &c, json!({"name": "k", "project": "shared"})).await;

    // B learns of the key within the poll interval (1 s) and spends until refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut spent_on_b = 0;
    loop {
        let r = chat_with(&b, &c, &key, MODEL, false).await;
        match r.status().as_u16() {
            200 => spent_on_b += 1,
            401 => assert_eq!(spent_on_b, 0, "a known key became unknown"),
            429 => break,
            s => panic!("unexpected status {s}"),
        }
        assert!(Instant::now() < deadline, "B never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spent_on_b >= 1);
    // A has spent nothing itself; once its sync has read B's records it refuses too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, p) = admin(&a, &c, "GET", "/projects/shared", None).await;
        if p["budget_spent_usd"].as_f64().unwrap() >= 0.0001 {
            break;
        }
        assert!(Instant::now() < deadline, "A never saw B's spend: {p}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    expect_error(chat_with(&a, &c, &key, MODEL, false).await, 429, Some("insufficient_quota")).await;
    assert_eq!(m.requests(), spent_on_b, "A forwarded nothing");
}

/// Responses API responses are kept per project: a key of the same project reads and
/// continues them, another project's key and a key outside any project get 404; the request
/// is a usage record of its project like any chat completion, with the `x-joule-*` headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_responses_belong_to_their_project() {
    let m = mock(MockConfig { tokens: 3, ..Default::default() }).await;
    let gw = Gateway::start(&format!("{}\n{}", catalog(&[(MODEL, &m)]), admin_toml())).await;
    let c = client();
    for p in ["alpha", "beta"] {
        let (s, v) = admin(&gw, &c, "POST", "/projects", Some(json!({"name": p}))).await;
        assert_eq!(s, 201, "{v}");
    }
    let (_, a1) = create_key(&gw, &c, json!({"name": "a1", "project": "alpha"})).await;
    let (_, a2) = create_key(&gw, &c, json!({"name": "a2", "project": "alpha"})).await;
    let (_, b1) = create_key(&gw, &c, json!({"name": "b1", "project": "beta"})).await;
    let (_, loose) = create_key(&gw, &c, json!({"name": "loose"})).await;

    let resp = c.post(format!("{}/responses", gw.base())).bearer_auth(&a1).json(&json!({"model": format!("{MODEL}@price"), "input": "hi"})).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-joule-deployment"], "dep0");
    assert!(resp.headers()["x-joule-strategy"].to_str().unwrap().starts_with("price"));
    let r: Value = resp.json().await.unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!((r["store"].as_bool(), r["model"].as_str()), (Some(true), Some(MODEL)), "{r}");

    let get = |key: String, id: String| {
        let c = c.clone();
        let url = format!("{}/responses/{id}", gw.base());
        async move { c.get(url).bearer_auth(key).send().await.unwrap() }
    };
    let same = get(a2.clone(), id.clone()).await;
    assert_eq!(same.status(), 200);
    assert_eq!(same.json::<Value>().await.unwrap()["id"], id.as_str());
    for other in [&b1, &loose] {
        let r = get(other.clone(), id.clone()).await;
        assert_eq!(r.status(), 404, "another owner");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "not_found", "{v}");
    }
    let follow = json!({"model": MODEL, "input": "and?", "previous_response_id": id});
    let r = c.post(format!("{}/responses", gw.base())).bearer_auth(&b1).json(&follow).send().await.unwrap();
    assert_eq!(r.status(), 404, "another project cannot continue it");
    let r = c.post(format!("{}/responses", gw.base())).bearer_auth(&a2).json(&follow).send().await.unwrap();
    assert_eq!(r.status(), 200, "the project can");
    let del = c.delete(format!("{}/responses/{id}", gw.base())).bearer_auth(&b1).send().await.unwrap();
    assert_eq!(del.status(), 404);
    let del = c.delete(format!("{}/responses/{id}", gw.base())).bearer_auth(&a1).send().await.unwrap();
    assert_eq!(del.json::<Value>().await.unwrap(), json!({"id": id, "object": "response", "deleted": true}));
    assert_eq!(get(a1.clone(), id.clone()).await.status(), 404);
    // Usage records: both requests, in alpha.
    let v = wait_for_records(&gw, &c, "?project=alpha", 2, Duration::from_secs(10)).await;
    assert!(v["cost_usd"].as_f64().is_some_and(|x| x > 0.0), "{v}");
}
