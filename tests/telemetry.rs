//! Live telemetry end to end: measurements override priors, breakers exclude and readmit,
//! the TTFT timeout moves a stalled stream to the next deployment.

mod common;

use std::time::{Duration, Instant};

use common::*;

const MODEL: &str = "llama-tel";

async fn deployment_of(gw: &Gateway, c: &reqwest::Client, model: &str, stream: bool) -> String {
    let resp = gw.chat(c, chat_body(model, stream)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let dep = resp.headers()["x-joule-deployment"].to_str().unwrap().to_string();
    if stream {
        let got = read_sse(resp, Duration::from_secs(20)).await;
        assert_eq!(got.data().last().copied(), Some("[DONE]"));
    } else {
        resp.bytes().await.unwrap();
    }
    dep
}

const ADMIN_TOKEN: &str = "telemetry-admin-token";

/// The `[admin]` section enabling the admin API with [`ADMIN_TOKEN`].
fn admin_toml() -> String {
    format!("\n[admin]\ntoken_sha256 = \"{}\"\n", joule::secret::KeyHash::of(ADMIN_TOKEN).to_hex())
}

async fn admin_deployments(gw: &Gateway) -> serde_json::Value {
    let resp = client().get(format!("{}/admin/deployments", gw.admin())).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn find<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["data"].as_array().unwrap().iter().find(|d| d["id"] == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_tokenrate_follow_measurements_not_priors() {
    // Priors (hosted_catalog): TTFT dep0 400 > dep1 300 > dep2 200 ms; token rate dep0 50 <
    // dep1 60 < dep2 70. Reality: dep1 has by far the lowest TTFT, dep0 the highest token rate.
    let d0 = mock(MockConfig { ttft_ms: 250, tokens_per_s: 400.0, tokens: 12, ..Default::default() }).await;
    let d1 = mock(MockConfig { ttft_ms: 15, tokens_per_s: 40.0, tokens: 12, ..Default::default() }).await;
    let d2 = mock(MockConfig { ttft_ms: 150, tokens_per_s: 60.0, tokens: 12, ..Default::default() }).await;
    let urls = [d0.base_url(), d1.base_url(), d2.base_url()];
    let gw = Gateway::start(&format!("{}\n[health]\nprobe_interval_ms = 0\n{}", hosted_catalog(MODEL, &urls), admin_toml())).await;
    let c = client();
    // Before any traffic the priors decide.
    let before = admin_deployments(&gw).await;
    assert_eq!(find(&before, "dep2")["ttft_ms"], 200.0);
    // Warm-up: concurrent traffic spreads over the deployments (in-flight load), so all get measured.
    for tag in ["latency", "tokenrate", "latency", "tokenrate", "latency", "tokenrate"] {
        let model = format!("{MODEL}@{tag}");
        let round: Vec<_> = (0..8).map(|_| deployment_of(&gw, &c, &model, true)).collect();
        futures_util::future::join_all(round).await;
    }
    let after = admin_deployments(&gw).await;
    for id in ["dep0", "dep1", "dep2"] {
        assert!(find(&after, id)["samples"]["ttft"].as_u64().unwrap() > 0, "{id} never measured: {after}");
    }
    assert_eq!(deployment_of(&gw, &c, &format!("{MODEL}@latency"), true).await, "dep1", "{after}");
    assert_eq!(deployment_of(&gw, &c, &format!("{MODEL}@tokenrate"), true).await, "dep0", "{after}");
    let d1_ttft = find(&after, "dep1")["ttft_ms"].as_f64().unwrap();
    assert!(d1_ttft < 150.0, "dep1 TTFT estimate {d1_ttft} should approach 15 ms");
    let metrics = c.get(format!("{}/metrics", gw.admin())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("joule_deployment{deployment=\"dep1\",measure=\"ttft_seconds\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_deployment_is_excluded_then_readmitted() {
    let d0 = mock(MockConfig::default()).await;
    let d1 = mock(MockConfig::default()).await;
    let urls = [d0.base_url(), d1.base_url()];
    let extra = "[health]\nfailure_threshold = 3\nopen_base_ms = 300\nprobe_interval_ms = 0\n";
    let gw = Gateway::start(&format!("{}\n{extra}{}", hosted_catalog(MODEL, &urls), admin_toml())).await;
    let c = client();
    assert_eq!(deployment_of(&gw, &c, MODEL, false).await, "dep0");
    d0.set_config(MockConfig { failure: Failure::Status500, ..Default::default() });
    for _ in 0..8 {
        // Clients keep getting answers from dep1 while dep0 fails.
        assert_eq!(deployment_of(&gw, &c, MODEL, false).await, "dep1");
    }
    // dep0 saw the first request plus the failures up to the threshold, then none (the breaker
    // lets one trial through per elapsed backoff, and each failed trial doubles it).
    let hits = d0.requests();
    assert!((4..=5).contains(&hits), "dep0 got {hits} requests");
    let state = admin_deployments(&gw).await;
    assert_ne!(find(&state, "dep0")["breaker"], "closed", "{state}");
    assert!(find(&state, "dep0")["error_rate"].as_f64().unwrap() > 0.3);
    // Recovery: once the backoff has passed, a trial request goes to dep0 and succeeds.
    d0.set_config(MockConfig::default());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if deployment_of(&gw, &c, MODEL, false).await == "dep0" {
            break;
        }
        assert!(Instant::now() < deadline, "dep0 never readmitted");
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing; the condition is dep0 answering
    }
    assert_eq!(find(&admin_deployments(&gw).await, "dep0")["breaker"], "closed");
    assert_eq!(deployment_of(&gw, &c, MODEL, false).await, "dep0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_probes_open_and_close_the_breaker() {
    let d0 = mock(MockConfig { failure: Failure::Refuse, ..Default::default() }).await;
    let d1 = mock(MockConfig::default()).await;
    let urls = [d0.base_url(), d1.base_url()];
    let extra = "[health]\nfailure_threshold = 2\nopen_base_ms = 100\nprobe_interval_ms = 50\nprobe_timeout_ms = 500\n";
    let gw = Gateway::start(&format!("{}\n{extra}{}", hosted_catalog(MODEL, &urls), admin_toml())).await;
    // No client traffic at all: the probes alone open dep0's breaker...
    let deadline = Instant::now() + Duration::from_secs(15);
    while find(&admin_deployments(&gw).await, "dep0")["breaker"] == "closed" {
        assert!(Instant::now() < deadline, "probes never opened the breaker");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(d0.requests() > 0);
    assert_eq!(deployment_of(&gw, &client(), MODEL, false).await, "dep1");
    // ...and close it once dep0 answers again.
    d0.set_config(MockConfig::default());
    let deadline = Instant::now() + Duration::from_secs(15);
    while find(&admin_deployments(&gw).await, "dep0")["breaker"] != "closed" {
        assert!(Instant::now() < deadline, "probes never readmitted dep0");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(deployment_of(&gw, &client(), MODEL, false).await, "dep0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_trips_ttft_timeout_and_client_gets_answer() {
    let stalled = mock(MockConfig { ttft_ms: 5_000, ..Default::default() }).await;
    let fine = mock(MockConfig { ttft_ms: 10, tokens: 4, ..Default::default() }).await;
    let urls = [stalled.base_url(), fine.base_url()];
    let catalog = hosted_catalog(MODEL, &urls).replacen("category = \"hosted\"", "category = \"hosted\"\nttft_timeout_ms = 300", 1);
    let gw = Gateway::start(&format!("{catalog}\n[health]\nprobe_interval_ms = 0\n{}", admin_toml())).await;
    let c = client();
    let started = Instant::now();
    let resp = gw.chat(&c, chat_body(MODEL, true)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-joule-deployment"], "dep1");
    let got = read_sse(resp, Duration::from_secs(20)).await;
    assert!(started.elapsed() < Duration::from_secs(4), "did not wait for the stalled deployment");
    assert_eq!(got.content_times().len(), 4);
    assert_eq!(got.data().last().copied(), Some("[DONE]"));
    // The stalled deployment's role chunk never reached the client: one role chunk only.
    let roles = got.json().iter().filter(|v| v["choices"][0]["delta"]["role"] == "assistant").count();
    assert_eq!(roles, 1);
    assert_eq!(stalled.requests(), 1);
    let state = admin_deployments(&gw).await;
    assert!(find(&state, "dep0")["ttft_ms"].as_f64().unwrap() >= 300.0, "penalised: {state}");
    let metrics = c.get(format!("{}/metrics", gw.admin())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("kind=\"ttft_timeout\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_deployments_requires_the_admin_token() {
    let d0 = mock(MockConfig::default()).await;
    let gw = Gateway::start(&format!("{}{}", hosted_catalog(MODEL, &[d0.base_url()]), admin_toml())).await;
    let url = format!("{}/admin/deployments", gw.admin());
    expect_error(client().get(&url).send().await.unwrap(), 401, None).await;
    expect_error(client().get(&url).bearer_auth("wrong").send().await.unwrap(), 401, None).await;
    assert_eq!(find(&admin_deployments(&gw).await, "dep0")["breaker"], "closed");
}
