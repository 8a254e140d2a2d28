//! Zero-downtime upgrade: a second `joule serve --upgrade` takes the running process's
//! listening sockets (SIGQUIT to the old one), the old one drains, and clients under
//! continuous load — plain requests and streams, on kept-alive connections — see no failure,
//! no broken stream, and every request leaves exactly one usage record.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const MODEL: &str = "llama-upgrade";
const ADMIN: &str = "upgrade-admin-token-0123";

/// The new process, killed when the test ends however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    failed: AtomicUsize,
    broken_streams: AtomicUsize,
}

/// One client loop until `stop`: streams (checked to end with `[DONE]` after every token) or
/// plain requests, each counted.
async fn load(c: reqwest::Client, url: String, stream: bool, stop: Arc<AtomicBool>, tally: Arc<Tally>, errors: Arc<std::sync::Mutex<Vec<String>>>) {
    while !stop.load(Ordering::Relaxed) {
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let r = c.post(&url).bearer_auth(KEY).json(&chat_body(MODEL, stream)).send().await;
        match r {
            Ok(r) if r.status() == 200 && stream => {
                let got = read_sse(r, Duration::from_secs(30)).await;
                if got.data().last().copied() != Some("[DONE]") || got.content_times().len() != 8 {
                    tally.broken_streams.fetch_add(1, Ordering::Relaxed);
                    errors.lock().unwrap().push(format!("broken stream: {:?}", got.data()));
                }
            }
            Ok(r) if r.status() == 200 => {
                if r.bytes().await.is_err() {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(r) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                errors.lock().unwrap().push(format!("status {}", r.status()));
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                errors.lock().unwrap().push(format!("error {e:?}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_is_swapped_under_load_without_losing_a_request() {
    // Streams of 8 tokens at 40/s: about 200 ms each, so several are open at the swap.
    let m = mock(MockConfig { tokens: 8, tokens_per_s: 40.0, ttft_ms: 5, ..Default::default() }).await;
    let extra = format!(
        "{}\n[admin]\ntoken_sha256 = \"{}\"\n[store]\nflush_interval_ms = 50\n",
        hosted_catalog(MODEL, &[m.base_url()]),
        joule::secret::KeyHash::of(ADMIN).to_hex()
    );
    let mut gw = Gateway::start_with(&extra, "upgrade_sock = \"upgrade.sock\"\n", &[]).await;
    let url = format!("{}/chat/completions", gw.base());

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..6 {
        // Kept-alive connections, as SDKs use them.
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        tasks.push(tokio::spawn(load(c, url.clone(), i % 2 == 0, stop.clone(), tally.clone(), errors.clone())));
    }
    let warm = Instant::now() + Duration::from_secs(10);
    while tally.sent.load(Ordering::Relaxed) < 30 {
        assert!(Instant::now() < warm, "no load\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The new binary (the same one here) waits for the sockets; SIGQUIT makes the old hand them over.
    let new_log = gw.dir.path().join("new.log");
    let _new = KillOnDrop(Command::new(env!("CARGO_BIN_EXE_joule"))
        .args(["serve", "--upgrade", "--config"])
        .arg(gw.dir.path().join("joule.toml"))
        .stdout(Stdio::null())
        .stderr(log_file(&new_log))
        .spawn()
        .expect("spawn the new joule"));
    let listening = Instant::now() + Duration::from_secs(10);
    while !read_log(&new_log).contains("upgrade: waiting") {
        assert!(Instant::now() < listening, "the new process did not start: {}", read_log(&new_log));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old_pid = gw.pid();
    let before_swap = tally.sent.load(Ordering::Relaxed);
    gw.signal("QUIT");
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.wait_exit(Duration::from_secs(40));
        (gw, s)
    })
    .await
    .unwrap();
    let (gw, exit) = status;
    assert!(exit.is_some_and(|s| s.success()), "the old process drained and exited: {exit:?}\n{}", gw.logs());
    assert!(read_log(&new_log).contains("listening sockets taken over"), "{}", read_log(&new_log));

    // The new process alone serves for a while, then the load stops.
    let after_exit = tally.sent.load(Ordering::Relaxed);
    let more = Instant::now() + Duration::from_secs(10);
    while tally.sent.load(Ordering::Relaxed) < after_exit + 30 {
        assert!(Instant::now() < more, "no load after the swap\n{}", read_log(&new_log));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let sent = tally.sent.load(Ordering::Relaxed);
    let errs = errors.lock().unwrap().clone();
    assert!(after_exit > before_swap, "requests were served during the swap");
    assert_eq!((tally.failed.load(Ordering::Relaxed), tally.broken_streams.load(Ordering::Relaxed)), (0, 0), "{errs:?}\nold:\n{}\nnew:\n{}", gw.logs(), read_log(&new_log));

    // Every request sent left one usage record, from one process or the other.
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(15);
    let records = loop {
        let v: serde_json::Value =
            c.get(format!("{}/admin/usage/summary", gw.admin())).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
        let n = v["requests"].as_u64().unwrap_or(0);
        if n as usize >= sent || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(records as usize, sent, "usage records = requests sent");
    let instances: serde_json::Value =
        c.get(format!("{}/admin/usage?limit=10000", gw.admin())).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let mut seen: Vec<&str> = instances["records"].as_array().unwrap().iter().filter_map(|r| r["instance"].as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 2, "both processes served: {seen:?}");
    eprintln!("upgrade: {sent} requests ({before_swap} before SIGQUIT to pid {old_pid}, {after_exit} when it exited), 0 failed, 0 broken, {records} usage records");
}
