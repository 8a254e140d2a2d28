//! End-to-end tests of energy pricing: the real binary with priced data centers, prices
//! pushed through the admin API, polled from a local HTTP endpoint or replayed from a file;
//! routing follows them, responses carry `usage.cost` and the price headers, `/v1/models`
//! and the price history show them, and history survives a restart.

#[allow(unused_imports)] // the shared harness re-exports more than these tests use
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODEL: &str = "llama-e";

/// West (CAISO/SP-15, PUE 1.25) and Chicago (PJM/Chicago Hub, PUE 1.0), 3.6 kW and 10 000 /
/// 1 000 tokens/s: at P $/MWh the energy part is P/8000 and P/800 $/Mtok in the west, P/10000
/// and P/1000 in Chicago. Base 0.1 / 0.2 everywhere.
fn catalog(west: &str, chicago: &str, provider: &str, energy: &str) -> String {
    let gpu = "gpu = { node_kw = 3.6, prefill_tokens_per_s = 10000, decode_tokens_per_s = 1000 }";
    format!(
        r#"
[energy]
stale_fallback_usd_per_mwh = 150
{energy}

[[data_centers]]
id = "west"
price_node = "CAISO/SP-15"
pue = 1.25

[[data_centers]]
id = "chicago"
price_node = "PJM/Chicago Hub"
pue = 1.0

[[providers]]
id = "prov"
base_url = "{provider}"

[[models]]
id = "{MODEL}"
category = "hosted"

[[models.deployments]]
id = "e-west"
data_center = "west"
url = "{west}"
base_price_input = 0.1
base_price_output = 0.2
{gpu}

[[models.deployments]]
id = "e-chicago"
data_center = "chicago"
url = "{chicago}"
base_price_input = 0.1
base_price_output = 0.2
{gpu}

[[models]]
id = "free-e"
category = "free"

[[models.deployments]]
id = "f-west"
data_center = "west"
url = "{west}"
base_price_input = 0.01
base_price_output = 0.02
{gpu}

[[models]]
id = "tp-e"
category = "third-party"

[[models.deployments]]
id = "tp-route"
provider = "prov"
list_price_input = 1.0
list_price_output = 2.0
"#
    )
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn rfc3339(t: i64) -> String {
    joule::clock::format_rfc3339(t)
}

/// Rows for both sites; hourly intervals, so prices pushed minutes apart all stay fresh for
/// the test's duration.
fn rows(start: i64, west: f64, chicago: f64) -> Value {
    json!([
        {"location": "SP-15", "iso": "CAISO", "market": "RT", "interval_start": rfc3339(start), "interval_minutes": 60, "usd_per_mwh": west},
        {"node": "PJM/Chicago Hub", "interval_start": rfc3339(start), "interval_minutes": 60, "usd_per_mwh": chicago},
    ])
}

async fn push(gw: &Gateway, c: &reqwest::Client, body: &Value) -> Value {
    let resp = c.post(format!("{}/admin/energy/prices", gw.admin())).json(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn get_json(c: &reqwest::Client, url: String) -> Value {
    c.get(url).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Checks `usage.cost` against the price headers.
fn check_cost(usage: &Value, price_in: f64, price_out: f64) -> (f64, f64) {
    let (p, c) = (usage["prompt_tokens"].as_u64().unwrap() as f64, usage["completion_tokens"].as_u64().unwrap() as f64);
    let cost = &usage["cost_details"];
    assert_eq!(cost["currency"], "USD", "{usage}");
    assert!((f(&cost["input"]) - p * price_in / 1e6).abs() < 2e-9, "{usage}");
    assert!((f(&cost["output"]) - c * price_out / 1e6).abs() < 2e-9, "{usage}");
    assert!((f(&usage["cost"]) - f(&cost["input"]) - f(&cost["output"])).abs() < 2e-9, "{usage}");
    (p, c)
}

fn header(r: &reqwest::Response, name: &str) -> f64 {
    r.headers()[name].to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_prices_and_cost_follow_pushed_energy_prices() {
    let (a, b, p) = (mock(MockConfig::default()).await, mock(MockConfig::default()).await, mock(MockConfig::default()).await);
    let gw = Gateway::start(&catalog(&a.base_url(), &b.base_url(), &p.base_url(), "[energy.push]")).await;
    let c = client();
    let start = now() - now() % 300;

    // Before any price both sites sit at the stale fallback (150 $/MWh), flagged.
    let m = get_json(&c, format!("{}/models/{MODEL}", gw.base())).await;
    assert_eq!(m["deployments"][0]["energy"]["stale"], true, "{m}");
    assert!(close(f(&m["deployments"][0]["price"]["output"]), 0.2 + 150.0 / 800.0), "{m}");

    // West 40 $/MWh → 0.105 / 0.25; Chicago 80 → 0.108 / 0.28: West is cheaper.
    let report = push(&gw, &c, &rows(start - 300, 40.0, 80.0)).await;
    assert_eq!(report["accepted"], 2, "{report}");
    let m = get_json(&c, format!("{}/models/{MODEL}", gw.base())).await;
    assert_eq!(m["best_deployment"], "e-west", "{m}");
    assert!(close(f(&m["price"]["input"]), 0.105) && close(f(&m["price"]["output"]), 0.25), "{m}");
    assert!(close(f(&m["deployments"][0]["price"]["energy"]["output"]), 0.05), "{m}");
    assert_eq!(m["deployments"][1]["energy"]["usd_per_mwh"], 80.0);
    assert_eq!(m["deployments"][1]["energy"]["stale"], false);

    let r = gw.chat(&c, chat_body(MODEL, false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-joule-data-center"], "west", "untagged hosted request → cheapest data center");
    assert_eq!(r.headers()["x-joule-price-input"], "0.105000");
    assert_eq!(r.headers()["x-joule-price-output"], "0.250000");
    let v: Value = r.json().await.unwrap();
    let (pt, ct) = check_cost(&v["usage"], 0.105, 0.25);
    assert!(close(f(&v["usage"]["cost_details"]["energy"]), pt * 0.005 / 1e6 + ct * 0.05 / 1e6), "{v}");
    assert_eq!(v["usage"]["cost_details"]["routing_fee"], 0.0);
    assert_eq!(v["object"], "chat.completion", "the rest of the body is intact");

    // A spike in the west and negative prices in Chicago: routing flips, the energy part of
    // the cost turns negative. Chicago −100 → 0.09 / 0.1 (= base − 0.1).
    push(&gw, &c, &rows(start, 400.0, -100.0)).await;
    let r = gw.chat(&c, chat_body(MODEL, true)).send().await.unwrap();
    assert_eq!(r.headers()["x-joule-data-center"], "chicago");
    let (pin, pout) = (header(&r, "x-joule-price-input"), header(&r, "x-joule-price-output"));
    assert!(close(pin, 0.09) && close(pout, 0.1));
    let got = read_sse(r, Duration::from_secs(20)).await;
    assert_eq!(got.data().last().copied(), Some("[DONE]"));
    assert!(got.json().iter().all(|e| e.get("usage").is_none_or(|u| u.is_null())), "no usage chunk unless asked");

    let mut body = chat_body(MODEL, true);
    body["stream_options"] = json!({"include_usage": true});
    let r = gw.chat(&c, body).send().await.unwrap();
    let got = read_sse(r, Duration::from_secs(20)).await;
    let events = got.json();
    let usage_chunk = events.iter().find(|e| e["usage"].is_object()).expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    let (pt, ct) = check_cost(&usage_chunk["usage"], 0.09, 0.1);
    assert!(close(f(&usage_chunk["usage"]["cost_details"]["energy"]), -(pt * 0.01 + ct * 0.1) / 1e6), "{usage_chunk}");
    assert_eq!(got.data().last().copied(), Some("[DONE]"));

    // Free: 0 to the client, but still routed; third-party: list + 5 % with the fee itemised.
    let v: Value = gw.chat(&c, chat_body("free-e", false)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["usage"]["cost"], 0.0, "{v}");
    let r = gw.chat(&c, chat_body("tp-e", false)).send().await.unwrap();
    assert_eq!(r.headers()["x-joule-price-input"], "1.050000");
    let v: Value = r.json().await.unwrap();
    let (pt, ct) = check_cost(&v["usage"], 1.05, 2.1);
    assert!(close(f(&v["usage"]["cost_details"]["routing_fee"]), (pt * 0.05 + ct * 0.1) / 1e6), "{v}");
    assert_eq!(v["usage"]["cost_details"]["energy"], 0.0);

    // Metrics: energy price, token price, staleness per data center / deployment.
    let metrics = c.get(format!("{}/metrics", gw.admin())).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("missing {name} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("joule_energy_price_usd_per_mwh{data_center=\"chicago\"}"), -100.0);
    assert_eq!(value("joule_energy_price_stale{data_center=\"west\"}"), 0.0);
    assert!((value("joule_token_price_usd_per_mtok{deployment=\"e-chicago\",direction=\"output\"}") - 0.1).abs() < 1e-9);
    assert_eq!(value("joule_energy_feed_rows_total{feed=\"push\"}"), 4.0);
    assert!(value("joule_energy_price_age_seconds{data_center=\"west\"}") < 3600.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_are_rejected_counted_and_keep_the_table() {
    let a = mock(MockConfig::default()).await;
    let token_env = "JOULE_TEST_PUSH_TOKEN";
    let energy = format!("[energy.push]\ntoken_env = \"{token_env}\"");
    let gw = Gateway::start_with(&catalog(&a.base_url(), &a.base_url(), &a.base_url(), &energy), "", &[(token_env, "push-secret")]).await;
    let c = client();
    let url = format!("{}/admin/energy/prices", gw.admin());
    let start = now() - now() % 300;
    let ok = c.post(&url).json(&rows(start - 300, 40.0, 30.0));
    assert_eq!(ok.send().await.unwrap().status(), 401, "token required");
    let r = c.post(&url).bearer_auth("push-secret").json(&rows(start - 300, 40.0, 30.0)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let t = |s: i64| rfc3339(s);
    let bad = json!({"rows": [
        {"location": "SP-15", "iso": "CAISO", "interval_start": t(start), "interval_minutes": 5, "usd_per_mwh": "NaN"},
        {"location": "SP-15", "iso": "CAISO", "interval_start": t(start), "interval_minutes": 5, "usd_per_mwh": 99999},
        {"location": "Nowhere", "iso": "CAISO", "interval_start": t(start), "interval_minutes": 5, "usd_per_mwh": 10},
        {"location": "SP-15", "iso": "CAISO", "interval_start": t(start - 300), "interval_minutes": 5, "usd_per_mwh": 41},
        {"location": "SP-15", "iso": "CAISO", "interval_start": t(start - 600), "interval_minutes": 5, "usd_per_mwh": 10},
        {"location": "SP-15", "iso": "CAISO", "interval_start": t(start + 86_400), "interval_minutes": 5, "usd_per_mwh": 10},
        {"location": "SP-15", "iso": "CAISO", "interval_minutes": 5, "usd_per_mwh": 10},
    ]});
    let r = c.post(&url).bearer_auth("push-secret").json(&bad).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["accepted"], 0);
    let kinds: Vec<&str> = report["rejected"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["non_finite", "out_of_range", "unknown_location", "duplicate", "out_of_order", "future", "malformed"]);
    assert_eq!(report["rejected"][2]["row"], 3);
    assert!(report["rejected"][2]["message"].as_str().unwrap().contains("CAISO/Nowhere"));
    // An unreadable document is a 400 and counts as malformed; CSV is accepted too.
    let r = c.post(&url).bearer_auth("push-secret").body("garbage").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let csv = format!("location,iso,market,interval_start,interval_minutes,usd_per_mwh\nSP-15,CAISO,RT,{},5,45.5\n", t(start));
    let report: Value = c.post(&url).bearer_auth("push-secret").body(csv).send().await.unwrap().json().await.unwrap();
    assert_eq!(report["accepted"], 1, "{report}");

    let m = get_json(&c, format!("{}/models/{MODEL}", gw.base())).await;
    assert_eq!(m["deployments"][0]["energy"]["usd_per_mwh"], 45.5);
    assert_eq!(m["deployments"][1]["energy"]["usd_per_mwh"], 30.0, "bad rows left Chicago alone");
    let metrics = c.get(format!("{}/metrics", gw.admin())).send().await.unwrap().text().await.unwrap();
    for kind in ["non_finite", "out_of_range", "unknown_location", "duplicate", "out_of_order", "future"] {
        let needle = format!("joule_energy_feed_errors_total{{feed=\"push\",kind=\"{kind}\"}} 1");
        assert!(metrics.contains(&needle), "missing {needle}");
    }
    assert!(metrics.contains("joule_energy_feed_errors_total{feed=\"push\",kind=\"malformed\"} 2"));
    assert!(metrics.contains("joule_energy_feed_errors_total{feed=\"poll\",kind=\"fetch\"} 0"), "closed label set, pre-registered");
    assert!(gw.logs().contains("energy feed rows rejected"), "a clear log line");
    assert!(!gw.logs().contains("push-secret"));
}

/// Pushes an hour-long backlog (twelve 5-minute intervals, west rising from 0 to 110 $/MWh,
/// Chicago at 50) and returns the 4h history it produced.
async fn push_backlog(gw: &Gateway, c: &reqwest::Client) -> Value {
    let start = now() - now() % 300;
    let mut backlog = Vec::new();
    for k in 0..12 {
        let s = start - 3300 + 300 * k;
        backlog.extend(rows(s, 10.0 * k as f64, 50.0).as_array().unwrap().clone());
    }
    assert_eq!(push(gw, c, &Value::Array(backlog)).await["accepted"], 24);
    get_json(c, format!("{}/models/{MODEL}/prices?window=4h", gw.base())).await
}

/// Stops `gw` (SIGTERM flushes queued history), starts the same config again and checks the
/// 4h window still holds the earlier points.
async fn restart_keeps_history(mut gw: Gateway, cat: &str, before: &Value) -> Gateway {
    let points = before["data_centers"][0]["points"].as_array().unwrap();
    assert!(gw.terminate(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", gw.logs());
    let gw2 = Gateway::start(cat).await;
    let after = get_json(&client(), format!("{}/models/{MODEL}/prices?window=4h", gw2.base())).await;
    assert_eq!(after["data_centers"][0]["points"].as_array().unwrap()[..12], points[..12], "{after}");
    assert_eq!(after["best"].as_array().unwrap()[..12], before["best"].as_array().unwrap()[..12], "{after}");
    gw2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_history_windows_and_restart() {
    let a = mock(MockConfig::default()).await;
    let data = tempfile::tempdir().unwrap();
    let energy = format!("data_dir = \"{}\"\n[energy.push]", data.path().display());
    // No database: history goes to the file in data_dir.
    let cat = catalog(&a.base_url(), &a.base_url(), &a.base_url(), &energy) + "\n[store]\nbackend = \"none\"\n";
    let gw = Gateway::start(&cat).await;
    let c = client();
    // A backlog of an hour lands in history where it belongs.
    let h = push_backlog(&gw, &c).await;
    assert_eq!(h["window"], "4h");
    assert_eq!(h["step_seconds"], 300);
    let west = &h["data_centers"][0];
    assert_eq!(west["data_center"], "west");
    let points = west["points"].as_array().unwrap();
    assert!(points.len() >= 12, "{h}");
    assert_eq!(points[0]["usd_per_mwh"], 0.0);
    assert!(close(f(&points[0]["output"]), 0.2));
    assert_eq!(points.last().unwrap()["usd_per_mwh"], 110.0);
    let best = h["best"].as_array().unwrap();
    assert_eq!(best[0]["deployment"], "e-west");
    assert_eq!(best.last().unwrap()["deployment"], "e-chicago");
    assert_eq!(h["providers"], json!([]));
    let tp = get_json(&c, format!("{}/models/tp-e/prices?window=4h", gw.base())).await;
    assert_eq!(tp["providers"][0]["provider"], "prov", "{tp}");
    assert!(close(f(&tp["best"][0]["input"]), 1.05), "{tp}");
    for w in ["24h", "7d"] {
        let h = get_json(&c, format!("{}/models/{MODEL}/prices?window={w}", gw.base())).await;
        assert!(!h["data_centers"][0]["points"].as_array().unwrap().is_empty(), "{w}: {h}");
    }
    let r = c.get(format!("{}/models/{MODEL}/prices?window=1y", gw.base())).bearer_auth(KEY).send().await.unwrap();
    expect_error(r, 400, None).await;
    let r = c.get(format!("{}/models/nope/prices", gw.base())).bearer_auth(KEY).send().await.unwrap();
    expect_error(r, 404, Some("model_not_found")).await;
    let r = c.get(format!("{}/models/{MODEL}/prices", gw.base())).send().await.unwrap();
    expect_error(r, 401, Some("invalid_api_key")).await;

    // Restart on the same data directory: the history is still there.
    restart_keeps_history(gw, &cat, &h).await;
    assert!(data.path().join("price-history.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_history_persists_in_the_store() {
    let a = mock(MockConfig::default()).await;
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("joule.db");
    // A data_dir as well: the store wins.
    let energy = format!("data_dir = \"{}\"\n[energy.push]", db.path().join("history").display());
    let cat = catalog(&a.base_url(), &a.base_url(), &a.base_url(), &energy)
        + &format!("\n[store]\nbackend = \"sqlite\"\npath = \"{}\"\n", path.display());
    let gw = Gateway::start(&cat).await;
    let c = client();
    let h = push_backlog(&gw, &c).await;
    assert!(h["data_centers"][0]["points"].as_array().unwrap().len() >= 12, "{h}");
    assert!(gw.logs().contains("energy.data_dir is ignored"), "{}", gw.logs());

    // A new process on the same database serves the earlier points.
    let mut gw2 = restart_keeps_history(gw, &cat, &h).await;
    assert!(!db.path().join("history/price-history.jsonl").exists(), "history went to the store, not the file");

    // The frames are in the database: one per interval start of the backlog, both sites.
    assert!(gw2.terminate(Duration::from_secs(15)).is_some_and(|s| s.success()));
    // (Opening blocks until migrated: from a thread outside the test's runtime.)
    let frames = std::thread::spawn(move || {
        let store = joule::store::Store::open(&joule::store::StoreLocation::Sqlite(path)).unwrap();
        store.wait(store.price_frames(0, i64::MAX)).unwrap()
    })
    .join()
    .unwrap();
    let west: Vec<Option<f64>> = frames
        .iter()
        .map(|f| f.points.iter().find(|p| &*p.deployment == "e-west").and_then(|p| p.usd_per_mwh))
        .collect();
    let backlog: Vec<Option<f64>> = (0..12).map(|k| Some(10.0 * f64::from(k))).collect();
    assert!(west.windows(12).any(|w| w == backlog), "{west:?}");
}

/// A tiny HTTP server for the poller: answers every request with what `mode` says.
async fn price_server(mode: Arc<AtomicUsize>, good: String) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let (mode, good) = (mode.clone(), good.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let (status, body) = match mode.load(Ordering::SeqCst) {
                    0 => ("200 OK", good),
                    1 => ("500 Internal Server Error", "oops".to_string()),
                    _ => ("200 OK", "{not json".to_string()),
                };
                let resp = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/prices.json")
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Bounded readiness poll; the condition checked is the gateway's state.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_keeps_the_last_good_prices() {
    let a = mock(MockConfig::default()).await;
    let mode = Arc::new(AtomicUsize::new(0));
    let start = now() - now() % 300;
    let url = price_server(mode.clone(), rows(start - 300, 42.0, 30.0).to_string()).await;
    let energy = format!("[[energy.poll]]\nurl = \"{url}\"\ninterval_s = 1\ntimeout_ms = 2000");
    let gw = Gateway::start(&catalog(&a.base_url(), &a.base_url(), &a.base_url(), &energy)).await;
    let c = client();
    let models = format!("{}/models/{MODEL}", gw.base());
    wait_for("polled price", Duration::from_secs(20), async || {
        get_json(&c, models.clone()).await["deployments"][0]["energy"]["usd_per_mwh"] == 42.0
    })
    .await;
    let metric = async |needle: &str| -> bool {
        let m = c.get(format!("{}/metrics", gw.admin())).send().await.unwrap().text().await.unwrap();
        m.lines().any(|l| l.starts_with(needle) && !l.ends_with(" 0"))
    };
    mode.store(1, Ordering::SeqCst);
    wait_for("fetch error", Duration::from_secs(20), async || metric("joule_energy_feed_errors_total{feed=\"poll\",kind=\"fetch\"}").await).await;
    mode.store(2, Ordering::SeqCst);
    wait_for("malformed", Duration::from_secs(20), async || metric("joule_energy_feed_errors_total{feed=\"poll\",kind=\"malformed\"}").await).await;
    let m = get_json(&c, models.clone()).await;
    assert_eq!(m["deployments"][0]["energy"]["usd_per_mwh"], 42.0, "last good prices kept: {m}");
    assert_eq!(m["deployments"][1]["energy"]["usd_per_mwh"], 30.0);
    // Re-reading the same latest rows is not an error.
    assert!(!metric("joule_energy_feed_errors_total{feed=\"poll\",kind=\"duplicate\"}").await);
    assert!(gw.logs().contains("energy poll failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_replay_moves_prices_in_trace_time() {
    let a = mock(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("location,iso,market,interval_start,interval_minutes,usd_per_mwh\n");
    let t0 = 1_688_256_000; // 2023-07-02T00:00:00Z
    for k in 0..24 {
        csv += &format!("SP-15,CAISO,RT,{},5,{}\n", rfc3339(t0 + 300 * k), 10 + k);
        csv += &format!("Chicago Hub,PJM,RT,{},5,{}\n", rfc3339(t0 + 300 * k), 100 - k);
    }
    let path = dir.path().join("trace.csv");
    std::fs::write(&path, csv).unwrap();
    // 300×: a 5-minute interval per second.
    let energy = format!("[energy.replay]\nfiles = [\"{}\"]\nspeed = 300", path.display());
    let gw = Gateway::start(&catalog(&a.base_url(), &a.base_url(), &a.base_url(), &energy)).await;
    let c = client();
    let models = format!("{}/models/{MODEL}", gw.base());
    let first = get_json(&c, models.clone()).await["deployments"][0]["energy"]["usd_per_mwh"].as_f64().unwrap();
    wait_for("replayed prices to move", Duration::from_secs(20), async || {
        let v = get_json(&c, models.clone()).await["deployments"][0]["energy"]["usd_per_mwh"].as_f64().unwrap();
        v >= first + 2.0
    })
    .await;
    let m = get_json(&c, models.clone()).await;
    assert!(m["deployments"][0]["energy"]["interval_start"].as_str().unwrap().starts_with("2023-07-02T0"), "{m}");
    assert_eq!(m["deployments"][0]["energy"]["stale"], false);
    // The history runs on trace time too.
    let h = get_json(&c, format!("{}/models/{MODEL}/prices?window=4h", gw.base())).await;
    assert!(h["now"].as_str().unwrap().starts_with("2023-07-02"), "{h}");
    assert!(h["data_centers"][0]["points"].as_array().unwrap().len() >= 2, "{h}");
}

#[test]
fn energy_config_errors_name_their_paths() {
    let out = check_config(
        r#"
[server]
listen = ["127.0.0.1:1"]
[energy]
min_usd_per_mwh = 100
max_usd_per_mwh = 50
history_days = 3
[energy.replay]
files = ["missing.csv"]
speed = -1
start = "someday"
[[energy.poll]]
url = "ftp://x"
format = "xml"
[[data_centers]]
id = "dc"
price_node = "no-slash"
[[models]]
id = "m"
category = "hosted"
[[models.deployments]]
id = "d"
data_center = "dc"
url = "http://127.0.0.1:9/v1"
base_price_input = 0.1
base_price_output = 0.1
floor_price_output = -1
gpu = { node_kw = 0, decode_tokens_per_s = 10 }
"#,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "energy.max_usd_per_mwh",
        "energy.history_days",
        "energy.replay.files[0]",
        "energy.replay.speed",
        "energy.replay.start",
        "energy.poll[0].url",
        "energy.poll[0].format",
        "data_centers[0].price_node",
        "models[0].deployments[0].floor_price_output",
        "models[0].deployments[0].gpu.node_kw",
        "models[0].deployments[0].gpu.prefill_tokens_per_s",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
}

/// Two sites A and B (PUE 1, base 0, 3.6 kW, 1000 decode tokens/s: a request of 1000 output
/// tokens costs P × 1e-6 $ at P $/MWh) and hourly prices `(a, b)` from 2023-07-02: the
/// config and price files of the evaluation commands.
fn evaluation_fixture(dir: &std::path::Path, hourly: &[(f64, f64)]) -> (std::path::PathBuf, std::path::PathBuf) {
    let config = dir.join("eval.toml");
    let gpu = "gpu = { node_kw = 3.6, prefill_tokens_per_s = 10000, decode_tokens_per_s = 1000 }";
    let mut text = String::from("[server]\nlisten = [\"127.0.0.1:1\"]\n");
    for s in ["A", "B"] {
        text += &format!("[[data_centers]]\nid = \"{s}\"\nprice_node = \"X/{s}\"\npue = 1.0\n");
    }
    text += "[[models]]\nid = \"m\"\ncategory = \"hosted\"\n";
    for s in ["A", "B"] {
        text += &format!("[[models.deployments]]\nid = \"m-{s}\"\ndata_center = \"{s}\"\nurl = \"http://127.0.0.1:9/v1\"\nbase_price_input = 0\nbase_price_output = 0\n{gpu}\n");
    }
    std::fs::write(&config, text).unwrap();
    let prices = dir.join("prices.csv");
    let mut csv = String::from("location,iso,market,interval_start,interval_minutes,usd_per_mwh\n");
    for (h, (a, b)) in hourly.iter().enumerate() {
        let t = rfc3339(1_688_256_000 + 3600 * h as i64);
        csv += &format!("A,X,RT,{t},60,{a}\nB,X,RT,{t},60,{b}\n");
    }
    std::fs::write(&prices, csv).unwrap();
    (config, prices)
}

/// `joule energy <command and its flags> --config C --prices P <extra>`.
fn evaluation(command: &[&str], config: &std::path::Path, prices: &std::path::Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_joule"))
        .arg("energy")
        .args(command)
        .arg("--config")
        .arg(config)
        .arg("--prices")
        .arg(prices)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn energy_evaluate_cli_on_a_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let (config, prices) = evaluation_fixture(dir.path(), &[(10.0, 40.0), (50.0, 20.0), (30.0, 60.0), (80.0, 20.0)]);
    let run = |extra: &[&str]| {
        let out = evaluation(&["evaluate", "--load", "rate=1,shape=flat,mix=0:1000", "--step", "1h"], &config, &prices, extra);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let v: Value = serde_json::from_str(&run(&["--feed-delay", "0", "--json"])).unwrap();
    let outcome = |name: &str| v["outcomes"].as_array().unwrap().iter().find(|o| o["strategy"] == name).cloned().unwrap();
    // Hand-computed: 3600 requests/h × 1000 output tokens × P/1000 $/Mtok = 0.0036 × P per hour.
    assert!(close(f(&outcome("static B")["cost"]), 0.0036 * 140.0));
    assert!(close(f(&outcome("oracle")["cost"]), 0.0036 * 80.0));
    assert!(close(f(&outcome("joule price (delay 0)")["share_of_oracle_savings"]), 1.0));
    let table = run(&[]);
    assert!(table.contains("| joule price (delay 5m) |") && table.contains("| round robin | 0.56 |"), "{table}");
}

#[test]
fn energy_evaluate_batch_cli_on_a_fixture() {
    // Three days: A cheap around 03:00, B around 15:00.
    let hourly: Vec<(f64, f64)> = (0..72)
        .map(|h| {
            let wave = |peak: f64| 50.0 - 30.0 * (std::f64::consts::TAU * ((h % 24) as f64 - peak) / 24.0).cos();
            (wave(3.0), wave(15.0))
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (config, prices) = evaluation_fixture(dir.path(), &hourly);
    let run = |extra: &[&str]| evaluation(&["evaluate-batch", "--slot", "1h", "--feed-delay", "0"], &config, &prices, extra);
    let out = run(&["--batches", "count=5,size=100..300,window=12h,mix=0:1000,capacity=0.05", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes = v["outcomes"].as_array().unwrap();
    let plans: Vec<&str> = outcomes.iter().map(|o| o["plan"].as_str().unwrap()).collect();
    assert_eq!(
        plans,
        ["run at submission", "joule, forecast from history", "joule, perfect day-ahead", "joule, perfect foresight", "oracle (hindsight, no margin)"]
    );
    for o in outcomes {
        assert_eq!(o["deadlines_met"], 5, "{o}");
        assert!(f(&o["energy"]) >= f(&outcomes[4]["energy"]) - 1e-9 && f(&o["energy"]) <= f(&outcomes[0]["energy"]) + 1e-9, "{o}");
    }
    assert!(close(f(&outcomes[4]["share_of_oracle_savings"]), 1.0));
    let table = String::from_utf8(run(&["--batches", "count=5,window=12h"]).stdout).unwrap();
    assert!(table.contains("| run at submission |") && table.contains("5/5"), "{table}");
    let bad = run(&["--batches", "count=5,burst=2"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--batches: unknown key `burst`"), "{err}");
    let bad = run(&["--forecast", "stat=mode"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--forecast: stat `mode`"));
}
