//! Test harness: starts the real `joule` binary on ephemeral loopback ports with a generated
//! config, against in-process mock upstreams, and reads SSE streams with arrival times.
#![allow(dead_code)]

pub mod memory;
pub mod pg;
pub mod redis_server;
pub mod ports;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use joule::api::sse::{SseItem, SseParser};
#[allow(unused_imports)]
pub use joule::mock::{Failure, MockApi, MockConfig, MockServer, SseFraming, TestCa};
pub use ports::free_port;

pub const KEY: &str = "sk-test-client-key-0123456789";
pub const PROVIDER_SECRET: &str = "sk-provider-secret-abcdef";

/// A running gateway process.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    /// The TLS listener's port, when `[server]` lines named `{tls_port}`.
    pub tls_port: Option<u16>,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

/// The `[[keys]]` block for [`KEY`].
pub fn keys_toml() -> String {
    format!("[[keys]]\nname = \"test\"\nsha256 = \"{}\"\n", joule::secret::KeyHash::of(KEY).to_hex())
}

/// One hosted model with one deployment per URL (`dep0`, `dep1`, … in data centers `dc0`…),
/// priced so that `dep0` is cheapest, `dep1` next, and so on.
pub fn hosted_catalog(model: &str, urls: &[String]) -> String {
    let mut s = String::new();
    for i in 0..urls.len() {
        s += &format!("[[data_centers]]\nid = \"dc{i}\"\npue = 1.2\n\n");
    }
    s += &format!("[[models]]\nid = \"{model}\"\ncategory = \"hosted\"\n\n");
    for (i, u) in urls.iter().enumerate() {
        s += &format!(
            "[[models.deployments]]\nid = \"dep{i}\"\ndata_center = \"dc{i}\"\nurl = \"{u}\"\nupstream_model = \"upstream-{i}\"\nbase_price_input = {}\nbase_price_output = {}\nttft_ms = {}\ntokens_per_s = {}\n\n",
            0.1 + i as f64 * 0.1,
            0.2 + i as f64 * 0.1,
            100 + 100 * ((urls.len() - i) as u64),
            50 + 10 * i,
        );
    }
    s
}

impl Gateway {
    /// Starts `joule serve` with `[server]` set to fresh ports plus `extra` (catalog, limits…).
    pub async fn start(extra: &str) -> Gateway {
        Self::start_with(extra, "", &[]).await
    }

    /// As [`start`], with extra `[server]` lines and environment variables. In `server_extra`,
    /// `{tls_port}` stands for one more fresh port (see [`Gateway::tls_port`]).
    pub async fn start_with(extra: &str, server_extra: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("joule.toml");
        let log = dir.path().join("joule.log");
        let tls = server_extra.contains("{tls_port}");
        let (child, ports) = serve(usize::from(tls), &log, |p| {
            let server_extra = match p.extra.first() {
                Some(tls_port) => server_extra.replace("{tls_port}", &tls_port.to_string()),
                None => server_extra.to_string(),
            };
            let config = format!(
                "[server]\nlisten = [\"127.0.0.1:{}\"]\nadmin_listen = \"127.0.0.1:{}\"\nthreads = 1\ngrace_period_s = 10\n{server_extra}\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n{}\n{extra}",
                p.api,
                p.admin,
                keys_toml()
            );
            std::fs::write(&path, config).expect("write config");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_joule"));
            cmd.arg("serve").arg("--config").arg(&path).stdout(Stdio::null()).stderr(log_file(&log));
            cmd.envs(env.iter().copied());
            cmd.spawn().expect("spawn joule")
        })
        .await;
        Gateway { child: Some(child), port: ports.api, admin_port: ports.admin, tls_port: ports.extra.first().copied(), dir, log }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn logs(&self) -> String {
        read_log(&self.log)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The gateway process's resident memory, in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// The gateway process's peak resident memory so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("gateway process status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        self.wait_exit(within)
    }

    /// Sends the signal `name` (`TERM`, `INT`…).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status();
    }

    /// Waits (bounded) for the exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A chat request builder with the test key.
    pub fn chat(&self, client: &reqwest::Client, body: serde_json::Value) -> reqwest::RequestBuilder {
        client.post(format!("{}/chat/completions", self.base())).bearer_auth(KEY).json(&body)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Loopback ports of one start attempt: the API and admin listeners, which both answer
/// `/healthz`, and `extra` more (a TLS listener) that only have to be listening.
#[derive(Debug)]
pub struct Ports {
    pub api: u16,
    pub admin: u16,
    pub extra: Vec<u16>,
}

impl Ports {
    fn fresh(extra: usize) -> Ports {
        Ports { api: free_port(), admin: free_port(), extra: (0..extra).map(|_| free_port()).collect() }
    }

    fn all(&self) -> impl Iterator<Item = u16> + '_ {
        [self.api, self.admin].into_iter().chain(self.extra.iter().copied())
    }
}

/// A (re)created file for a child's output.
pub fn log_file(path: &Path) -> std::fs::File {
    std::fs::File::create(path).expect("log file")
}

/// Starts a joule server process with `spawn` on fresh [`Ports`] and returns it once it
/// serves: it holds every port's listening socket itself and `/healthz` answers 200 on the
/// API and admin ports. `spawn` starts the process with its log (stderr) going to `log`,
/// recreated. When the process lost a port to another process ([`ports::port_taken`]), it is
/// killed and started again on fresh ports, up to [`ports::START_ATTEMPTS`] times in all.
///
/// Retrying rather than avoiding the race: joule cannot be told to bind port 0 and report the
/// port, because pingora binds the listeners and does not say which port it got (see
/// [`ports`]). Only a lost port is retried, so every other start-up failure still fails the
/// test at once, with the log.
///
/// # Panics
/// When the process exits for any other reason, is not serving within 30 s, or loses its
/// ports on every attempt.
pub async fn serve(extra_ports: usize, log: &Path, mut spawn: impl FnMut(&Ports) -> Child) -> (Child, Ports) {
    let mut lost = Vec::new();
    for _ in 0..ports::START_ATTEMPTS {
        let ports = Ports::fresh(extra_ports);
        let mut child = spawn(&ports);
        let stop = |mut child: Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        match wait_serving(&mut child, &ports, log).await {
            Attempt::Serving => return (child, ports),
            Attempt::PortTaken => {
                stop(child);
                eprintln!("joule lost one of its ports {ports:?} to another process; starting it again on fresh ports");
                lost.push(ports);
            }
            Attempt::Failed(why) => {
                stop(child);
                panic!("{why}");
            }
        }
    }
    panic!("joule lost its ports on every attempt {lost:?}; last log:\n{}", read_log(log));
}

/// How one start attempt ended.
enum Attempt {
    Serving,
    /// Another process holds one of the ports.
    PortTaken,
    /// Any other failure, with its description and the log.
    Failed(String),
}

async fn wait_serving(child: &mut Child, ports: &Ports, log: &Path) -> Attempt {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The exit status before the log, so that an exited process's log is complete.
        let exited = child.try_wait().expect("child status");
        let output = read_log(log);
        if ports::port_taken(&output) {
            return Attempt::PortTaken;
        }
        if let Some(status) = exited {
            return Attempt::Failed(format!("joule exited early ({status}):\n{output}"));
        }
        // An HTTP answer as well: a connect to a port nobody listens on yet can succeed as a
        // TCP self-connection, and a listening socket is not yet an accept loop.
        if ports.all().all(|p| ports::listens_on(child.id(), p)) && healthy(ports.api).await && healthy(ports.admin).await {
            return Attempt::Serving;
        }
        if Instant::now() > deadline {
            return Attempt::Failed(format!("joule not serving on {ports:?} in 30 s:\n{output}"));
        }
        // Readiness probe interval: the condition checked is the listeners accepting.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A loopback port that refuses connections for as long as the returned socket lives: the
/// socket is bound, so no other process can listen there, but is not listening.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let port = socket.local_addr().expect("local address").port();
    (socket, port)
}

/// True when `GET /healthz` on the loopback port answers 200.
pub async fn healthy(port: u16) -> bool {
    let c = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().expect("client");
    matches!(c.get(format!("http://127.0.0.1:{port}/healthz")).send().await, Ok(r) if r.status() == 200)
}

/// A loopback HTTP client that ignores proxies.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

/// A simple chat body.
pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello"}]})
}

/// SSE events as the client saw them, each with its arrival time.
#[derive(Debug)]
pub struct Received {
    pub events: Vec<(Instant, String)>,
    pub ended_cleanly: bool,
}

/// Asserts that events the upstream sent `spacing` apart were forwarded as they came, not
/// gathered: first to last spans at least 80 % of the upstream's span, and at most one gap in
/// four is shorter than a quarter of `spacing`. A late event (the first included, on a busy
/// machine) shortens only the gap after it, so it passes; events held back and sent together
/// leave short gaps and a short span, so they fail.
pub fn assert_spread(times: &[Instant], spacing: Duration, what: &str) {
    let n = u32::try_from(times.len()).expect("event count");
    assert!(n >= 2, "{what}: {n} events, too few to see their spacing");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1].duration_since(w[0])).collect();
    let span = times[times.len() - 1].duration_since(times[0]);
    assert!(span >= spacing * (n - 1) * 4 / 5, "{what}: events bunched, {n} within {span:?} (gaps {gaps:?})");
    let short = gaps.iter().filter(|g| **g < spacing / 4).count();
    assert!(short <= gaps.len() / 4, "{what}: events bunched, {short} of {} gaps under {:?} (gaps {gaps:?})", gaps.len(), spacing / 4);
}


impl Received {
    pub fn data(&self) -> Vec<&str> {
        self.events.iter().map(|(_, d)| d.as_str()).collect()
    }

    /// Arrival times of events carrying non-empty content.
    pub fn content_times(&self) -> Vec<Instant> {
        self.events
            .iter()
            .filter(|(_, d)| {
                serde_json::from_str::<serde_json::Value>(d)
                    .ok()
                    .and_then(|v| v["choices"][0]["delta"]["content"].as_str().map(|s| !s.is_empty()))
                    .unwrap_or(false)
            })
            .map(|(t, _)| *t)
            .collect()
    }

    pub fn json(&self) -> Vec<serde_json::Value> {
        self.events.iter().filter_map(|(_, d)| serde_json::from_str(d).ok()).collect()
    }
}

/// Reads a streaming response to its end (bounded by `limit`), timestamping each event.
pub async fn read_sse(resp: reqwest::Response, limit: Duration) -> Received {
    let mut stream = resp.bytes_stream();
    let mut parser = SseParser::default();
    let mut items = Vec::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut ended_cleanly = false;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => panic!("stream did not end within {limit:?}; got {events:?}"),
            Ok(None) => {
                ended_cleanly = true;
                break;
            }
            Ok(Some(Err(_))) => break,
            Ok(Some(Ok(chunk))) => {
                let now = Instant::now();
                items.clear();
                parser.feed(&chunk, &mut items).expect("valid SSE from gateway");
                for it in &items {
                    if let SseItem::Event { data, .. } = it {
                        events.push((now, data.clone()));
                    }
                }
            }
        }
    }
    Received { events, ended_cleanly }
}

/// Starts a mock with `cfg`.
pub async fn mock(cfg: MockConfig) -> MockServer {
    MockServer::start(cfg).await.expect("mock")
}

/// Asserts an OpenAI-shaped error and returns its body.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: Option<&str>) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let v: serde_json::Value = resp.json().await.expect("json error body");
    let e = &v["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "shape: {v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "shape: {v}");
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{v}");
    }
    v
}

/// The admin `/metrics` page once it contains `needle` (request metrics are recorded in the
/// logging phase, just after the client has its response), bounded at 10 s.
/// An admin API request with `credential` as the bearer: its status and JSON body (the text
/// as a JSON string when it is not JSON).
pub async fn admin_call(gw: &Gateway, c: &reqwest::Client, credential: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let mut rb = c.request(method.parse().expect("method"), format!("{}/admin{path}", gw.admin())).bearer_auth(credential);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.expect("admin request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("admin answer");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

pub async fn metrics_containing(gw: &Gateway, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = client().get(format!("{}/metrics", gw.admin())).send().await.expect("metrics").text().await.expect("text");
        if page.contains(needle) {
            return page;
        }
        assert!(Instant::now() < deadline, "metrics never contained {needle}:\n{page}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `joule check-config` on `toml` (written to a temporary file) and returns its output.
pub fn check_config(toml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, toml).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_joule")).arg("check-config").arg("--config").arg(&path).output().expect("run joule")
}
