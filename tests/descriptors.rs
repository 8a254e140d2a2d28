//! Running out of file descriptors is the gateway's own failure: with the process limit
//! lowered so that a client connection can be accepted but no upstream connection opened, the
//! request gets 503 `descriptors_exhausted`, the deployment's health is untouched (no failure,
//! breaker closed), the refusal is counted, and a stream already open finishes.

mod common;

use std::time::{Duration, Instant};

use common::*;

const MODEL: &str = "llama-fd";

/// The soft `RLIMIT_NOFILE` that leaves exactly one descriptor free for process `pid`: the
/// kernel hands out the lowest free number below the limit.
fn limit_with_one_free(pid: u32) -> u64 {
    let mut open: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    open.sort_unstable();
    (1..).find(|&l| l - open.iter().filter(|&&fd| fd < l).count() as u64 == 1).unwrap()
}

fn set_soft_nofile(pid: u32, soft: &str) {
    let out = std::process::Command::new("prlimit").args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")]).output().expect("prlimit runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_the_gateways_failure_not_the_deployments() {
    // A stream of 40 tokens at 20/s keeps one upstream connection busy for two seconds.
    let m = mock(MockConfig { tokens: 40, tokens_per_s: 20.0, ttft_ms: 0, ..Default::default() }).await;
    let extra = format!("{}\n[store]\nbackend = \"none\"\n[health]\nprobe_interval_ms = 0\n", hosted_catalog(MODEL, &[m.base_url()]));
    let gw = Gateway::start(&extra).await;
    let pid = gw.pid();

    let a = client();
    let stream = gw.chat(&a, chat_body(MODEL, true)).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let reading = tokio::spawn(read_sse(stream, Duration::from_secs(30)));

    // One descriptor left: the next client connection takes it; its upstream connection
    // (the busy one cannot be reused) finds none.
    let original = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = original.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)).unwrap().to_string();
    set_soft_nofile(pid, &limit_with_one_free(pid).to_string());
    let b = client();
    let r = gw.chat(&b, chat_body(MODEL, false)).send().await.unwrap();
    set_soft_nofile(pid, &soft);
    let v = expect_error(r, 503, Some("descriptors_exhausted")).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("file descriptors"), "{v}");

    // Counted, logged, and the deployment not blamed.
    let text = metrics_containing(&gw, "joule_descriptors_exhausted_total").await;
    let line = |name: &str| text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0);
    assert_eq!(line("joule_descriptors_exhausted_total"), 1.0, "{text}");
    assert_eq!(line("joule_upstream_failures_total{deployment=\"dep0\",kind=\"connect\"}"), 0.0, "no failure counted against the deployment");
    assert!(gw.logs().contains("out of file descriptors"), "{}", gw.logs());

    // The stream that was open finishes, and with the limit back new requests are served.
    let got = reading.await.unwrap();
    assert_eq!(got.data().last().copied(), Some("[DONE]"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.chat(&client(), chat_body(MODEL, false)).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not served after the limit was restored: {}", r.status());
    }
    let text = client().get(format!("{}/metrics", gw.admin())).send().await.unwrap().text().await.unwrap();
    assert!(!text.lines().any(|l| l.starts_with("joule_upstream_failures_total{deployment=\"dep0\"") && !l.ends_with(" 0")), "{text}");
    let breaker = text.lines().find(|l| l.starts_with("joule_deployment{deployment=\"dep0\",measure=\"breaker_open\"}")).unwrap_or_else(|| panic!("{text}"));
    assert!(breaker.ends_with(" 0"), "the breaker stayed closed: {breaker}");
}
