//! The batch API end to end: the real gateway binary with an SQLite store, mock upstreams and
//! a hand-made energy trace replayed fast, so a one-hour window passes in seconds.
//!
//! The trace: two data centers, `cheap` and `dear`, 15-minute prices over three days. `dear`
//! is flat at 80 $/MWh; `cheap` is 80 too except from 01:00 to 01:30 every day, when it is
//! −40. The replay starts on the third day at 00:00 with the first two days as history, so a
//! forecast from history knows the dip is coming, and a batch with a two-hour window
//! submitted at 00:00 should wait for it.

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::*;
use joule::secret::KeyHash;
use serde_json::{json, Value};

const ADMIN: &str = "batch-admin-token-0123";
const MODEL: &str = "llama-batch";
/// Trace seconds per real second.
const SPEED: u32 = 240;

fn trace() -> String {
    let mut s = String::from("location,iso,market,interval_start,interval_minutes,usd_per_mwh\n");
    for day in 2..=4 {
        for q in 0..96 {
            let (h, m) = (q / 4, (q % 4) * 15);
            let dip = h == 1 && m < 30;
            let t = format!("2023-07-0{day}T{h:02}:{m:02}:00Z");
            let _ = writeln!(s, "Cheap,TEST,RT,{t},15,{}", if dip { -40.0 } else { 80.0 });
            let _ = writeln!(s, "Dear,TEST,RT,{t},15,80");
        }
    }
    s
}

/// The catalog, an SQLite store in `dir`, the replay of [`trace`] and `batch` lines for
/// `[batch]`.
fn config(dir: &std::path::Path, cheap: &MockServer, dear: &MockServer, batch: &str) -> String {
    let store = format!("[store]\npath = \"{}\"\n\n", dir.join("joule.db").display());
    config_with(dir, &store, cheap, dear, batch)
}

fn config_with(dir: &std::path::Path, store: &str, cheap: &MockServer, dear: &MockServer, batch: &str) -> String {
    let trace_path = dir.join("trace.csv");
    std::fs::write(&trace_path, trace()).unwrap();
    let mut s = format!("[admin]\ntoken_sha256 = \"{}\"\n\n", KeyHash::of(ADMIN).to_hex());
    s += store;
    s += &format!("[energy.replay]\nfiles = [\"{}\"]\nspeed = {SPEED}\nstart = \"2d\"\n\n", trace_path.display());
    s += &format!("[batch]\ntick_ms = 100\nlease_ms = 1500\n{batch}\n\n");
    for (dc, node) in [("cheap", "TEST/Cheap"), ("dear", "TEST/Dear")] {
        s += &format!("[[data_centers]]\nid = \"{dc}\"\nprice_node = \"{node}\"\npue = 1.0\n\n");
    }
    s += &format!("[[models]]\nid = \"{MODEL}\"\ncategory = \"hosted\"\n\n");
    for (dc, m) in [("dear", dear), ("cheap", cheap)] {
        s += &format!(
            "[[models.deployments]]\nid = \"{dc}-dep\"\ndata_center = \"{dc}\"\nurl = \"{}\"\nbase_price_input = 0.1\nbase_price_output = 0.2\ngpu = {{ node_kw = 10.0, prefill_tokens_per_s = 5000.0, decode_tokens_per_s = 500.0 }}\n\n",
            m.base_url()
        );
    }
    s
}

fn line(id: &str, model: &str, text: &str) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 16}})
    .to_string()
}

fn jsonl(n: usize) -> String {
    (0..n).map(|i| line(&format!("req-{i}"), MODEL, &format!("question {i}")) + "\n").collect()
}

/// `POST /v1/files` as the OpenAI SDK sends it (multipart, `purpose` and `file`).
async fn upload(gw: &Gateway, c: &reqwest::Client, key: &str, name: &str, content: &str) -> (u16, Value) {
    let boundary = "joule-test-boundary-7d1f";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/jsonl\r\n\r\n{content}\r\n--{boundary}--\r\n"
    );
    let r = c
        .post(format!("{}/files", gw.base()))
        .bearer_auth(key)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn call(gw: &Gateway, c: &reqwest::Client, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut rb = c.request(method.parse().unwrap(), format!("{}{path}", gw.base())).bearer_auth(key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn create(gw: &Gateway, c: &reqwest::Client, key: &str, file: &str, window: &str) -> (u16, Value) {
    let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": window, "metadata": {"job": "test"}});
    call(gw, c, key, "POST", "/batches", Some(body)).await
}

/// Polls the batch (bounded) until `done` says so.
async fn wait_batch(gw: &Gateway, c: &reqwest::Client, key: &str, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (s, b) = call(gw, c, key, "GET", &format!("/batches/{id}"), None).await;
        assert_eq!(s, 200, "{b}");
        if done(&b) {
            return b;
        }
        assert!(Instant::now() < deadline, "batch not there within {within:?}: {b}\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn terminal(b: &Value) -> bool {
    matches!(b["status"].as_str(), Some("completed" | "failed" | "expired" | "cancelled"))
}

async fn content(gw: &Gateway, c: &reqwest::Client, key: &str, file: &Value) -> Vec<Value> {
    let id = file.as_str().expect("a file id");
    let r = c.get(format!("{}/files/{id}/content", gw.base())).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_the_cheap_interval_and_completes_before_its_deadline() {
    let (cheap, dear) = (mock(MockConfig::default()).await, mock(MockConfig::default()).await);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(dir.path(), &cheap, &dear, "")).await;
    let c = client();
    let (s, file) = upload(&gw, &c, KEY, "questions.jsonl", &jsonl(20)).await;
    assert_eq!(s, 200, "{file}");
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["filename"], "questions.jsonl");
    let (s, b) = create(&gw, &c, KEY, file["id"].as_str().unwrap(), "2h").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["object"], "batch");
    assert_eq!(b["completion_window"], "2h");
    assert_eq!(b["metadata"]["job"], "test");
    assert_eq!(b["request_counts"]["total"], 20);
    let id = b["id"].as_str().unwrap().to_string();
    let created = b["created_at"].as_i64().unwrap();
    assert_eq!(b["expires_at"].as_i64().unwrap() - created, 7200);

    // Planned, not yet run: the dip is an hour (15 s) away.
    let planned = wait_batch(&gw, &c, KEY, &id, Duration::from_secs(5), |b| b["joule"]["planned_start_at"].is_i64()).await;
    let start = planned["joule"]["planned_start_at"].as_i64().unwrap();
    assert!(start >= created + 3000, "planned at {start}, created {created}: {planned}");
    assert_eq!(planned["request_counts"]["completed"], 0, "{planned}");
    assert_eq!(cheap.requests() + dear.requests(), 0);

    let done = wait_batch(&gw, &c, KEY, &id, Duration::from_secs(60), terminal).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["completed_at"].as_i64().unwrap() <= done["expires_at"].as_i64().unwrap());
    assert!(done["in_progress_at"].is_i64() && done["finalizing_at"].is_i64());
    assert_eq!(done["request_counts"], json!({"total": 20, "completed": 20, "failed": 0}));
    assert_eq!(done["joule"]["data_centers"], json!(["cheap"]), "{done}");
    assert_eq!((cheap.requests(), dear.requests()), (20, 0));
    assert!(done["error_file_id"].is_null());

    // Every custom_id once, each answer with its cost; the costs add up to the batch's.
    let out = content(&gw, &c, KEY, &done["output_file_id"]).await;
    let mut ids: Vec<&str> = out.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut expected: Vec<String> = (0..20).map(|i| format!("req-{i}")).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let mut sum = 0.0;
    for l in &out {
        assert_eq!(l["response"]["status_code"], 200, "{l}");
        assert!(l["error"].is_null());
        let usage = &l["response"]["body"]["usage"];
        let cost = f(&usage["cost"]);
        // Ran in the dip: the energy part is negative.
        assert!(f(&usage["cost_details"]["energy"]) < 0.0, "{l}");
        sum += cost;
    }
    assert!((sum - f(&done["joule"]["cost_usd"])).abs() < 1e-6, "{sum} vs {done}");
    assert!(f(&done["joule"]["energy_cost_usd"]) < 0.0);
    assert!(f(&done["joule"]["estimated_cost_at_submission_usd"]) > f(&done["joule"]["cost_usd"]), "{done}");

    // The output file is listed with the input file and can be read by id.
    let (s, list) = call(&gw, &c, KEY, "GET", "/files", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    let (s, listed) = call(&gw, &c, KEY, "GET", "/batches?limit=1", None).await;
    assert_eq!(s, 200);
    assert_eq!(listed["data"][0]["id"], id.as_str());
    // Usage records carry the batch lines at their cost (written in the background).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, usage) = admin_call(&gw, &c, ADMIN, "GET", "/usage/summary", None).await;
        assert_eq!(s, 200, "{usage}");
        if usage["requests"] == 20 {
            assert!((f(&usage["cost_usd"]) - sum).abs() < 1e-6, "{usage} vs {sum}");
            break;
        }
        assert!(Instant::now() < deadline, "usage records: {usage}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_and_requests_are_refused_with_the_line_and_reason() {
    let (cheap, dear) = (mock(MockConfig::default()).await, mock(MockConfig::default()).await);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(dir.path(), &cheap, &dear, "max_file_bytes = 4000\nmax_file_lines = 10")).await;
    let c = client();
    let cases: [(String, &str, &str); 5] = [
        (format!("{}\n{}\n", line("a", MODEL, "x"), line("a", MODEL, "y")), "line 2", "duplicate custom_id `a`"),
        (format!("{}\nnot json\n", line("a", MODEL, "x")), "line 2", "not a JSON object"),
        (line("a", "no-such-model", "x"), "line 1", "does not exist"),
        (jsonl(11), "", "more than 10 lines"),
        (line("a", MODEL, &"x".repeat(5000)), "", "at most 4000"),
    ];
    for (text, at, reason) in &cases {
        let (s, e) = upload(&gw, &c, KEY, "bad.jsonl", text).await;
        assert_eq!(s, 400, "{e}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(at) && msg.contains(reason), "{msg}");
        assert_eq!(e["error"]["param"], "file");
    }
    let (s, list) = call(&gw, &c, KEY, "GET", "/files", None).await;
    assert_eq!((s, list["data"].as_array().map(Vec::len)), (200, Some(0)), "nothing stored: {list}");

    let (_, file) = upload(&gw, &c, KEY, "ok.jsonl", &jsonl(2)).await;
    let fid = file["id"].as_str().unwrap();
    for (body, param) in [
        (json!({"input_file_id": fid, "endpoint": "/v1/embeddings", "completion_window": "24h"}), "endpoint"),
        (json!({"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "10m"}), "completion_window"),
        (json!({"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "8d"}), "completion_window"),
        (json!({"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": [1]}), "metadata"),
    ] {
        let (s, e) = call(&gw, &c, KEY, "POST", "/batches", Some(body)).await;
        assert_eq!(s, 400, "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    }
    let (s, e) = create(&gw, &c, KEY, "file-nope", "24h").await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = call(&gw, &c, KEY, "GET", "/batches/batch_nope", None).await;
    assert_eq!((s, e["error"]["type"].as_str()), (404, Some("invalid_request_error")), "{e}");
    let (s, _) = call(&gw, &c, KEY, "PUT", "/batches", None).await;
    assert_eq!(s, 405);
    let (s, _) = call(&gw, &c, "sk-wrong", "GET", "/batches", None).await;
    assert_eq!(s, 401);
    let r = c.post(format!("{}/files", gw.base())).bearer_auth(KEY).json(&json!({})).send().await.unwrap();
    expect_error(r, 400, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_projects_key_sees_nothing_and_the_batch_limit_and_budget_apply() {
    let (cheap, dear) = (mock(MockConfig::default()).await, mock(MockConfig::default()).await);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(dir.path(), &cheap, &dear, "max_queued_lines = 5")).await;
    let c = client();
    let mut keys = Vec::new();
    for (name, budget) in [("alpha", None), ("beta", Some(0.000_001))] {
        let mut p = json!({"name": name});
        if let Some(b) = budget {
            p["budget_usd"] = json!(b);
        }
        let (s, v) = admin_call(&gw, &c, ADMIN, "POST", "/projects", Some(p)).await;
        assert_eq!(s, 201, "{v}");
        let (s, k) = admin_call(&gw, &c, ADMIN, "POST", "/keys", Some(json!({"name": format!("{name}-key"), "project": name}))).await;
        assert_eq!(s, 201, "{k}");
        keys.push(k["key"].as_str().unwrap().to_string());
    }
    let (a, b) = (&keys[0], &keys[1]);
    let (_, file) = upload(&gw, &c, a, "a.jsonl", &jsonl(4)).await;
    let fid = file["id"].as_str().unwrap();
    let (s, batch) = create(&gw, &c, a, fid, "24h").await;
    assert_eq!(s, 200, "{batch}");
    let bid = batch["id"].as_str().unwrap();
    for (method, path) in [("GET", format!("/batches/{bid}")), ("POST", format!("/batches/{bid}/cancel")), ("GET", format!("/files/{fid}")), ("GET", format!("/files/{fid}/content")), ("DELETE", format!("/files/{fid}"))] {
        let (s, e) = call(&gw, &c, b, method, &path, None).await;
        assert_eq!(s, 404, "{method} {path}: {e}");
    }
    let (s, e) = create(&gw, &c, b, fid, "24h").await;
    assert_eq!(s, 404, "{e}");
    for path in ["/batches", "/files"] {
        let (_, l) = call(&gw, &c, b, "GET", path, None).await;
        assert_eq!(l["data"], json!([]), "{path}: {l}");
    }
    // The batch limit: 4 queued + 4 more > 5.
    let (s, e) = create(&gw, &c, a, fid, "24h").await;
    assert_eq!(s, 429, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("Batch limit"), "{e}");
    // Beta's budget is far below the estimate.
    let (_, bf) = upload(&gw, &c, b, "b.jsonl", &jsonl(2)).await;
    let (s, e) = create(&gw, &c, b, bf["id"].as_str().unwrap(), "24h").await;
    assert_eq!(s, 429, "{e}");
    assert_eq!(e["error"]["code"], "insufficient_quota", "{e}");
    // A key outside any project owns its own files.
    let (s, l) = call(&gw, &c, KEY, "GET", "/files", None).await;
    assert_eq!((s, l["data"].clone()), (200, json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_keeps_finished_lines_and_lists_the_rest_as_cancelled() {
    // Slow answers: lines are in flight when the cancel arrives.
    let slow = MockConfig { ttft_ms: 400, ..MockConfig::default() };
    let (cheap, dear) = (mock(slow.clone()).await, mock(slow).await);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(dir.path(), &cheap, &dear, "concurrency = 2")).await;
    let c = client();
    let (_, file) = upload(&gw, &c, KEY, "q.jsonl", &jsonl(40)).await;
    // A one-hour window starting at 00:00 cannot wait for the dip at 01:00: it runs now.
    let (_, b) = create(&gw, &c, KEY, file["id"].as_str().unwrap(), "1h").await;
    let id = b["id"].as_str().unwrap().to_string();
    wait_batch(&gw, &c, KEY, &id, Duration::from_secs(20), |b| b["request_counts"]["completed"].as_i64() >= Some(2)).await;
    let (s, v) = call(&gw, &c, KEY, "POST", &format!("/batches/{id}/cancel"), None).await;
    assert_eq!(s, 200, "{v}");
    assert!(matches!(v["status"].as_str(), Some("cancelling" | "cancelled")), "{v}");
    let done = wait_batch(&gw, &c, KEY, &id, Duration::from_secs(20), terminal).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["cancelled_at"].is_i64() && done["cancelling_at"].is_i64());
    let counts = &done["request_counts"];
    let completed = counts["completed"].as_i64().unwrap();
    assert!(completed >= 2 && completed < 40, "{done}");
    assert_eq!(counts["completed"].as_i64().unwrap() + counts["failed"].as_i64().unwrap(), 40);
    // No line was sent after the cancel had settled.
    let sent = cheap.requests() + dear.requests();
    assert_eq!(sent as i64, completed, "{done}");
    let out = content(&gw, &c, KEY, &done["output_file_id"]).await;
    let errs = content(&gw, &c, KEY, &done["error_file_id"]).await;
    assert_eq!(out.len() as i64, completed);
    assert_eq!(out.len() + errs.len(), 40);
    assert!(errs.iter().all(|l| l["error"]["code"] == "batch_cancelled" && l["response"].is_null()), "{errs:?}");
    let (s, e) = call(&gw, &c, KEY, "POST", &format!("/batches/{id}/cancel"), None).await;
    assert_eq!(s, 200, "cancelling a cancelled batch is harmless: {e}");
    metrics_containing(&gw, "joule_batches_ended_total{status=\"cancelled\"} 1").await;
    metrics_containing(&gw, &format!("joule_batch_lines_total{{outcome=\"completed\"}} {completed}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_run_expires_with_its_lines_in_the_error_file() {
    let down = MockConfig { failure: Failure::Refuse, ..MockConfig::default() };
    let (cheap, dear) = (mock(down.clone()).await, mock(down).await);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(dir.path(), &cheap, &dear, "")).await;
    let c = client();
    let (_, file) = upload(&gw, &c, KEY, "q.jsonl", &jsonl(3)).await;
    let (_, b) = create(&gw, &c, KEY, file["id"].as_str().unwrap(), "1h").await;
    let id = b["id"].as_str().unwrap().to_string();
    // One trace hour is 15 s.
    let done = wait_batch(&gw, &c, KEY, &id, Duration::from_secs(40), terminal).await;
    assert_eq!(done["status"], "expired", "{done}");
    assert!(done["expired_at"].as_i64().unwrap() >= done["expires_at"].as_i64().unwrap());
    let errs = content(&gw, &c, KEY, &done["error_file_id"]).await;
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs.iter().all(|l| l["error"]["code"] == "batch_expired"), "{errs:?}");
    assert!(done["output_file_id"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_batch_loses_nothing_and_resends_at_most_the_lines_in_flight() {
    let slow = MockConfig { ttft_ms: 300, ..MockConfig::default() };
    let (cheap, dear) = (mock(slow.clone()).await, mock(slow).await);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &cheap, &dear, "concurrency = 3");
    let mut gw = Gateway::start(&cfg).await;
    let c = client();
    let (_, file) = upload(&gw, &c, KEY, "q.jsonl", &jsonl(30)).await;
    let (_, b) = create(&gw, &c, KEY, file["id"].as_str().unwrap(), "1h").await;
    let id = b["id"].as_str().unwrap().to_string();
    wait_batch(&gw, &c, KEY, &id, Duration::from_secs(20), |b| b["request_counts"]["completed"].as_i64() >= Some(6)).await;
    // SIGKILL: no drain, lines in flight are lost with the process.
    gw.signal("KILL");
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    let sent_before = cheap.requests() + dear.requests();
    let gw = Gateway::start(&cfg).await;
    let done = wait_batch(&gw, &c, KEY, &id, Duration::from_secs(60), terminal).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"], json!({"total": 30, "completed": 30, "failed": 0}));
    let out = content(&gw, &c, KEY, &done["output_file_id"]).await;
    let mut ids: Vec<&str> = out.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 30, "every line exactly once in the output");
    // Upstream calls: every line once, plus at most the lines in flight at the kill (three
    // per deployment).
    let sent = cheap.requests() + dear.requests();
    assert!(sent >= 30 && sent <= 30 + 6, "{sent} upstream calls ({sent_before} before the kill)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgresql_share_a_batch_and_send_each_line_once() {
    let pg = common::pg::PgCluster::start();
    let slow = MockConfig { ttft_ms: 100, ..MockConfig::default() };
    let (cheap, dear) = (mock(slow.clone()).await, mock(slow).await);
    let dir = tempfile::tempdir().unwrap();
    let store = format!("[store]\nbackend = \"postgres\"\nurl = \"{}\"\n\n", pg.url());
    let cfg = config_with(dir.path(), &store, &cheap, &dear, "concurrency = 2");
    let (a, b) = (Gateway::start(&cfg).await, Gateway::start(&cfg).await);
    let c = client();
    let (_, file) = upload(&a, &c, KEY, "q.jsonl", &jsonl(40)).await;
    // Created on one instance, visible on the other.
    let (s, batch) = create(&b, &c, KEY, file["id"].as_str().unwrap(), "1h").await;
    assert_eq!(s, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let done = wait_batch(&a, &c, KEY, &id, Duration::from_secs(60), terminal).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"], json!({"total": 40, "completed": 40, "failed": 0}));
    // Each line sent once, by one instance or the other; both took part.
    assert_eq!(cheap.requests() + dear.requests(), 40);
    let lines = |gw: &Gateway| gw.logs().matches("/v1/batches (line)").count();
    let (na, nb) = (lines(&a), lines(&b));
    assert_eq!(na + nb, 40, "{na} + {nb}");
    assert!(na > 0 && nb > 0, "both instances ran lines: {na} and {nb}");
    let out = content(&b, &c, KEY, &done["output_file_id"]).await;
    assert_eq!(out.len(), 40);
}
