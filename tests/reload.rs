//! Config reload in a real process: `POST /admin/reload` and `SIGHUP` re-read the config file
//! and swap catalog, clients and keys while streams are in flight; a broken or restart-only
//! change is refused and the running config stays. (Signals and the admin listener need a
//! process; the pipeline itself is tested in-process in `pipeline.rs`.)

mod common;

use std::time::Duration;

use common::*;

const ADMIN_TOKEN: &str = "reload-admin-token";

fn admin_toml() -> String {
    format!("\n[admin]\ntoken_sha256 = \"{}\"\n", joule::secret::KeyHash::of(ADMIN_TOKEN).to_hex())
}

/// The config file the harness wrote, with `old` (a part of it) replaced by `new`.
fn rewrite(gw: &Gateway, old: &str, new: &str) {
    let path = gw.dir.path().join("joule.toml");
    let text = std::fs::read_to_string(&path).expect("read config");
    assert!(text.contains(old), "the config holds the part to replace");
    std::fs::write(&path, text.replace(old, new)).expect("write config");
}

async fn reload(gw: &Gateway) -> reqwest::Response {
    client().post(format!("{}/admin/reload", gw.admin())).bearer_auth(ADMIN_TOKEN).send().await.expect("reload")
}

async fn model_ids(gw: &Gateway) -> Vec<String> {
    let v: serde_json::Value =
        client().get(format!("{}/models", gw.base())).bearer_auth(KEY).send().await.expect("models").json().await.expect("json");
    v["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_streaming_load_adds_a_model_and_drops_a_deployment() {
    // Streams of 40 tokens at 40 tokens/s: each takes about a second, so all 100 are in
    // flight when the new config goes in.
    let slow = MockConfig { ttft_ms: 10, tokens_per_s: 40.0, tokens: 40, ..Default::default() };
    let (a, b) = (mock(slow.clone()).await, mock(slow).await);
    let before = hosted_catalog("llama", &[a.base_url(), b.base_url()]);
    let gw = Gateway::start(&format!("{before}{}", admin_toml())).await;
    let http = client();

    let mut streams = Vec::new();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(100);
    for _ in 0..100 {
        let req = gw.chat(&http, chat_body("llama", true));
        let started = started_tx.clone();
        streams.push(tokio::spawn(async move {
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let _ = started.send(()).await;
            (status, read_sse(resp, Duration::from_secs(60)).await)
        }));
    }
    for _ in 0..100 {
        started_rx.recv().await.expect("every stream starts");
    }

    // Drop dep1, add a model on a's backend.
    let after = format!(
        "{}[[models]]\nid = \"llama-new\"\ncategory = \"hosted\"\n\n[[models.deployments]]\nid = \"new0\"\ndata_center = \"dc0\"\nurl = \"{}\"\nupstream_model = \"upstream-new\"\nbase_price_input = 0.1\nbase_price_output = 0.2\n\n",
        hosted_catalog("llama", &[a.base_url()]),
        a.base_url()
    );
    rewrite(&gw, &before, &after);
    let resp = reload(&gw).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());

    // The new model is served at once.
    let r = gw.chat(&http, chat_body("llama-new", false)).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-joule-deployment"], "new0");
    // The removed deployment gets no new request.
    for _ in 0..5 {
        let r = gw.chat(&http, chat_body("llama", false)).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-joule-deployment"], "dep0");
    }

    // Every stream started before the reload finishes on the world it started with.
    for s in streams {
        let (status, got) = s.await.expect("task");
        assert_eq!(status, 200);
        assert!(got.ended_cleanly, "stream cut");
        assert_eq!(got.data().last().copied(), Some("[DONE]"), "stream incomplete: {:?}", got.data());
        assert!(got.json().iter().all(|e| e.get("error").is_none()), "error event in a stream");
    }
    metrics_containing(&gw, "joule_config_reloads_total{result=\"success\"} 1").await;
}

#[tokio::test]
async fn a_refused_reload_keeps_the_running_config() {
    let m = mock(MockConfig::default()).await;
    let catalog = hosted_catalog("llama", &[m.base_url()]);
    let gw = Gateway::start(&format!("{catalog}{}", admin_toml())).await;

    // A broken file: every problem is reported, nothing changes.
    rewrite(&gw, "id = \"llama\"", "id = \"llama\"\nbogus_field = 1");
    let v = expect_error(reload(&gw).await, 400, Some("invalid_config")).await;
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("bogus_field"), "{v}");
    rewrite(&gw, "id = \"llama\"\nbogus_field = 1", "id = \"llama\"");

    // A restart-only change is refused naming the field.
    rewrite(&gw, "threads = 1", "threads = 2");
    let v = expect_error(reload(&gw).await, 400, Some("invalid_config")).await;
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("server.threads"), "{v}");

    let r = gw.chat(&client(), chat_body("llama", false)).send().await.expect("send");
    assert_eq!(r.status(), 200, "still serving the old config");
    metrics_containing(&gw, "joule_config_reloads_total{result=\"failure\"} 2").await;
    assert!(gw.logs().contains("config reload refused"), "logged");
}

#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let m = mock(MockConfig::default()).await;
    let before = hosted_catalog("llama", &[m.base_url()]);
    let gw = Gateway::start(&format!("{before}{}", admin_toml())).await;
    assert_eq!(model_ids(&gw).await, ["llama"]);

    rewrite(&gw, &before, &hosted_catalog("llama-2", &[m.base_url()]));
    let sent = std::process::Command::new("kill").arg("-HUP").arg(gw.pid().to_string()).status().expect("kill");
    assert!(sent.success());
    // The reload runs in the background service: wait (bounded) for it to be counted.
    metrics_containing(&gw, "joule_config_reloads_total{result=\"success\"} 1").await;
    assert_eq!(model_ids(&gw).await, ["llama-2"]);
    let r = gw.chat(&client(), chat_body("llama-2", false)).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let r = gw.chat(&client(), chat_body("llama", false)).send().await.expect("send");
    assert_eq!(r.status(), 404, "the old model is gone");
}
