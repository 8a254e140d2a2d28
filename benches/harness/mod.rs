//! What the benches that start real processes share: the hand-rolled HTTP/1.1 client
//! connection, the in-process mock upstream thread, a `joule serve` process with a generated
//! config, per-process CPU and memory readings, and the report's machine header.
#![allow(dead_code)]

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use joule::api::sse::{SseItem, SseParser};
use futures_util::future::join_all;
use joule::mock::{MockConfig, MockServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request without a complete answer by then counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

// Loopback ports and recognising a start that lost them, shared with the integration tests.
#[path = "../../tests/common/ports.rs"]
pub mod ports;
#[allow(unused_imports)] // used by some benches only
pub use ports::free_port;

/// The client's API key (its hash goes in joule's `[[keys]]`).
pub const KEY: &str = "sk-bench-client-key-0123456789";
/// The model joule serves; the mock accepts any model name.
pub const MODEL: &str = "bench-model";
/// How long joule may take to start listening.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What one timed request measures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Non-streaming: request written → last body byte read.
    Complete,
    /// Streaming: request written → first content event read.
    FirstToken,
    /// Streaming: request written → last byte of the stream read.
    WholeStream,
}

/// The parts of joule's config a comparison varies.
#[derive(Clone, Copy)]
pub struct Variant {
    pub store: StoreMode,
    pub telemetry: bool,
    /// `[health] probe_interval_ms = 0`: no background probes.
    pub probes: bool,
}

/// A complete HTTP/1.1 chat-completion request; identical for both paths but for `host`.
pub fn chat_request(addr: SocketAddr, stream: bool) -> Bytes {
    let body = serde_json::json!({
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello."}],
    })
    .to_string();
    Bytes::from(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// CPU time used so far by the live threads of process `pid`, from Linux `schedstat`
/// (nanosecond resolution); `None` where that is unavailable.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = Duration::ZERO;
    for task in tasks.flatten() {
        // A thread may exit between listing and reading; it then simply does not count.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let ns = stat.split_whitespace().next()?.parse::<u64>().ok()?;
        total += Duration::from_nanos(ns);
    }
    Some(total)
}

/// Sends one request on `conn` and returns the latency `mode` asks for. The response is always
/// read to its end, so the connection can carry the next request.
pub async fn measure_one(conn: &mut Conn, request: &[u8], mode: Mode) -> Result<Duration> {
    let start = Instant::now();
    conn.send(request).await?;
    let head = conn.read_head().await?;
    if head.status != 200 {
        let body = conn.read_body(head.body).await.unwrap_or_default();
        bail!(
            "HTTP {}: {}",
            head.status,
            String::from_utf8_lossy(&body).trim()
        );
    }
    match mode {
        Mode::Complete | Mode::WholeStream => {
            conn.read_body(head.body).await?;
            Ok(start.elapsed())
        }
        Mode::FirstToken => {
            let mut body = head.body;
            let mut parser = SseParser::default();
            let mut items = Vec::new();
            let mut ttft = None;
            while let Some(data) = conn.next_body_data(&mut body).await? {
                let arrived = Instant::now();
                if ttft.is_some() {
                    continue; // drain the rest of the stream
                }
                items.clear();
                parser.feed(&data, &mut items).context("invalid SSE")?;
                if items.iter().any(is_content_event) {
                    ttft = Some(arrived - start);
                }
            }
            ttft.ok_or_else(|| anyhow!("stream ended without a content event"))
        }
    }
}

/// Whether an SSE item is a chunk with non-empty `choices[0].delta.content`.
pub fn is_content_event(item: &SseItem) -> bool {
    let SseItem::Event { data, .. } = item else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(|c| !c.is_empty())
        })
        .unwrap_or(false)
}


// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client connection

/// One keep-alive client connection.
pub struct Conn {
    pub stream: TcpStream,
    /// Bytes read but not consumed yet.
    pub buf: BytesMut,
    /// False once the server announced `connection: close`.
    pub reusable: bool,
}

/// A response's status and how its body is framed.
pub struct Head {
    pub status: u16,
    pub body: Body,
}

/// Progress through a response body.
#[derive(Clone, Copy)]
pub enum Body {
    /// `content-length` framing: bytes still to read.
    Length(usize),
    /// Chunked framing, expecting a chunk-size line.
    ChunkSize,
    /// Chunked framing, inside a chunk: bytes still to read.
    ChunkData(usize),
    /// Chunked framing, expecting the CRLF that ends a chunk's data.
    ChunkEnd,
    /// Chunked framing, after the last chunk: trailer lines up to an empty line.
    Trailers,
    Done,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        Ok(Self {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            reusable: true,
        })
    }

    pub async fn send(&mut self, request: &[u8]) -> Result<()> {
        self.stream
            .write_all(request)
            .await
            .context("writing the request")
    }

    /// Reads more bytes into the buffer; the peer closing is an error (responses are framed).
    pub async fn fill(&mut self) -> Result<()> {
        self.buf.reserve(8 * 1024);
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .context("reading the response")?;
        if n == 0 {
            bail!("connection closed by the server mid-response");
        }
        Ok(())
    }

    pub async fn read_head(&mut self) -> Result<Head> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let status = response
                .parse(&self.buf)
                .context("malformed response head")?;
            if let httparse::Status::Complete(len) = status {
                let code = response.code.unwrap_or(0);
                let mut chunked = false;
                let mut length = None;
                for h in response.headers.iter() {
                    let value = String::from_utf8_lossy(h.value);
                    if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = value.to_ascii_lowercase().contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        length = Some(
                            value
                                .trim()
                                .parse::<usize>()
                                .context("bad content-length")?,
                        );
                    } else if h.name.eq_ignore_ascii_case("connection")
                        && value.eq_ignore_ascii_case("close")
                    {
                        self.reusable = false;
                    }
                }
                let body = match (chunked, length) {
                    (true, _) => Body::ChunkSize,
                    (false, Some(n)) => Body::Length(n),
                    (false, None) if code == 204 || code == 304 => Body::Length(0),
                    (false, None) => {
                        bail!("HTTP {code} response without content-length or chunking")
                    }
                };
                self.buf.advance(len);
                return Ok(Head { status: code, body });
            }
            self.fill().await?;
        }
    }

    /// The next piece of body data as it arrives, de-chunked; `None` at the end of the body.
    pub async fn next_body_data(&mut self, body: &mut Body) -> Result<Option<Bytes>> {
        loop {
            match *body {
                Body::Done | Body::Length(0) => {
                    *body = Body::Done;
                    return Ok(None);
                }
                Body::Length(left) | Body::ChunkData(left) => {
                    if self.buf.is_empty() {
                        self.fill().await?;
                    }
                    let n = left.min(self.buf.len());
                    *body = match *body {
                        Body::Length(_) => Body::Length(left - n),
                        _ if left == n => Body::ChunkEnd,
                        _ => Body::ChunkData(left - n),
                    };
                    return Ok(Some(self.buf.split_to(n).freeze()));
                }
                Body::ChunkSize => {
                    let Some(line) = self.take_line() else {
                        self.fill().await?;
                        continue;
                    };
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size, 16)
                        .with_context(|| format!("bad chunk size line `{line}`"))?;
                    *body = if size == 0 {
                        Body::Trailers
                    } else {
                        Body::ChunkData(size)
                    };
                }
                Body::ChunkEnd => {
                    let Some(line) = self.take_line() else {
                        self.fill().await?;
                        continue;
                    };
                    if !line.is_empty() {
                        bail!("chunk data longer than its declared size");
                    }
                    *body = Body::ChunkSize;
                }
                Body::Trailers => {
                    let Some(line) = self.take_line() else {
                        self.fill().await?;
                        continue;
                    };
                    if line.is_empty() {
                        *body = Body::Done;
                    }
                }
            }
        }
    }

    /// Reads the whole body.
    pub async fn read_body(&mut self, mut body: Body) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(data) = self.next_body_data(&mut body).await? {
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// Consumes one CRLF-terminated line from the buffer, if a whole one is there.
    pub fn take_line(&mut self) -> Option<String> {
        let end = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 2);
        Some(line)
    }
}


// ---------------------------------------------------------------------------------------------
// The mock upstream and the gateway process

/// The mock upstream on a dedicated thread with its own runtime, like a separate backend.
pub struct MockThread {
    pub addr: SocketAddr,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl MockThread {
    /// A mock answering at once (no time to first token, no decode delay) with `tokens`
    /// tokens.
    pub fn immediate(tokens: u32) -> Result<Self> {
        Self::start(MockConfig { ttft_ms: 0, tokens_per_s: 0.0, tokens, ..MockConfig::default() })
    }

    pub fn start(cfg: MockConfig) -> Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mock-upstream".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = addr_tx.send(Err(anyhow!(e).context("building the mock runtime")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match MockServer::start(cfg).await {
                        Ok(server) => {
                            let _ = addr_tx.send(Ok(server.addr()));
                            // Serve until told to stop (or the handle is gone).
                            let _ = stop_rx.await;
                            server.shutdown();
                        }
                        Err(e) => {
                            let _ =
                                addr_tx.send(Err(anyhow!(e).context("starting the mock upstream")));
                        }
                    }
                });
            })
            .context("spawning the mock thread")?;
        let addr = addr_rx
            .recv()
            .context("the mock thread exited before reporting its address")??;
        Ok(Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for MockThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Which store a joule process runs with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// `[store] backend = "none"`: config keys only, no usage records.
    Off,
    /// The default: SQLite beside the config; the config key has no project.
    Default,
    /// SQLite; the key belongs to a project with limits and a budget.
    Project,
}

/// A running `joule serve` process, killed on drop.
pub struct Joule {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    /// Config, log and store; kept once joule serves.
    pub _dir: Option<tempfile::TempDir>,
}

/// How one start of joule ended.
pub enum Started {
    Serving,
    /// Another process took one of the ports after they were picked (see `ports`).
    PortTaken,
}

/// Two fresh loopback addresses, for the API and the admin listener.
pub fn fresh_addrs() -> (SocketAddr, SocketAddr) {
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    (loopback(ports::free_port()), loopback(ports::free_port()))
}

impl Joule {
    /// Starts joule, again on fresh ports when the picked ones were taken meanwhile (up to
    /// `ports::START_ATTEMPTS` times); any other start-up failure is an error at once.
    pub fn start(upstream: SocketAddr, threads: usize, variant: Variant) -> Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let config_path = dir.path().join("joule.toml");
        let write_config = |addr: SocketAddr, admin: SocketAddr| {
            std::fs::write(&config_path, Self::config(addr, admin, upstream, threads, variant))
                .context("writing joule's config")
        };
        let (mut addr, mut admin) = fresh_addrs();
        write_config(addr, admin)?;
        if variant.store == StoreMode::Project {
            // Limits and budget far above what the bench can reach: checked, never refusing.
            let args = "projects create bench --rpm 4000000000 --tpm 4000000000 \
                        --budget 1000000000 --config";
            let out = Command::new(env!("CARGO_BIN_EXE_joule"))
                .args(args.split_whitespace())
                .arg(&config_path)
                .env_remove("RUST_LOG")
                .output()
                .context("creating the bench project")?;
            if !out.status.success() {
                bail!(
                    "joule projects create failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let log = dir.path().join("joule.log");
        let mut lost = Vec::new();
        for attempt in 0..ports::START_ATTEMPTS {
            if attempt > 0 {
                (addr, admin) = fresh_addrs();
                write_config(addr, admin)?;
            }
            let log_file = std::fs::File::create(&log).context("creating joule's log file")?;
            let binary = env!("CARGO_BIN_EXE_joule");
            let child = Command::new(binary)
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                // The config's log level applies, not the caller's RUST_LOG.
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .with_context(|| format!("starting {binary}"))?;
            // Killed on drop from here on.
            let mut joule = Self {
                child,
                addr,
                admin,
                log: log.clone(),
                _dir: None,
            };
            if let Started::Serving = joule.wait_ready()? {
                joule._dir = Some(dir);
                return Ok(joule);
            }
            lost.push((addr, admin));
        }
        bail!(
            "joule lost its ports on every attempt ({lost:?}); log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    }

    /// joule's config file for these listeners, upstream and variant.
    pub fn config(
        addr: SocketAddr,
        admin: SocketAddr,
        upstream: SocketAddr,
        threads: usize,
        variant: Variant,
    ) -> String {
        format!(
            r#"[server]
listen = ["{addr}"]
admin_listen = "{admin}"
threads = {threads}

[log]
level = "warn"

[[data_centers]]
id = "dc0"

[[models]]
id = "{MODEL}"
category = "hosted"

[[models.deployments]]
id = "dep0"
data_center = "dc0"
url = "http://{upstream}/v1"
base_price_input = 0.1
base_price_output = 0.2

[telemetry]
enabled = {telemetry}

[health]
{probes}

[[keys]]
name = "bench"
sha256 = "{hash}"
{project}
[store]
{backend}
"#,
            hash = joule::secret::KeyHash::of(KEY).to_hex(),
            telemetry = variant.telemetry,
            probes = if variant.probes {
                "# probe_interval_ms: default"
            } else {
                "probe_interval_ms = 0"
            },
            project = if variant.store == StoreMode::Project {
                "project = \"bench\""
            } else {
                ""
            },
            backend = match variant.store {
                StoreMode::Off => "backend = \"none\"",
                StoreMode::Default | StoreMode::Project =>
                    "backend = \"sqlite\"\npath = \"joule.db\"",
            },
        )
    }

    /// Waits (bounded) until joule holds both listeners and the API listener accepts
    /// connections, or says it lost a port to another process.
    pub fn wait_ready(&mut self) -> Result<Started> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if ports::port_taken(&self.logs()) {
                return Ok(Started::PortTaken);
            }
            self.check_alive()?;
            let pid = self.child.id();
            if ports::listens_on(pid, self.addr.port())
                && ports::listens_on(pid, self.admin.port())
                && std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200))
                    .is_ok()
            {
                return Ok(Started::Serving);
            }
            if Instant::now() > deadline {
                bail!(
                    "joule did not listen on {} within {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.addr,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails (with the log) if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait().context("checking on joule")? {
            None => Ok(()),
            Some(status) => bail!("joule exited ({status}); log:\n{}", self.logs()),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(log unreadable: {e})"))
    }
}

impl Drop for Joule {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}


// ---------------------------------------------------------------------------------------------
// Report

/// Where the code runs, for the report header.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub load: String,
    pub revision: Option<String>,
}

impl Machine {
    /// The report's first line: the machine, its load and joule's revision.
    pub fn header(&self, out: &mut String) {
        use std::fmt::Write as _;
        let revision = self
            .revision
            .as_ref()
            .map_or_else(String::new, |r| format!(", joule at `{r}`"));
        let _ = writeln!(
            out,
            "Machine: {} × {} (load average at start: {}){revision}.  ",
            self.cores, self.cpu, self.load,
        );
    }

    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let load = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".to_owned());
        let revision = Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        Self {
            cpu,
            cores,
            load,
            revision,
        }
    }
}

/// Prints the report and writes it to `target/<file>`.
///
/// # Errors
/// The directory or the file cannot be written.
pub fn publish(report: &str, file: &str) -> Result<()> {
    println!("\n{report}");
    let out = report_path(file);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, report).with_context(|| format!("writing {}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}

/// `target/<file>`, honouring `CARGO_TARGET_DIR`.
pub fn report_path(file: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.join("target"), |d| manifest.join(d));
    target.join(file)
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// One measured workload.
#[derive(Clone, Copy)]
pub struct Scenario {
    pub label: &'static str,
    pub mode: Mode,
    pub concurrency: usize,
    /// Timed requests per path.
    pub requests: usize,
    /// Untimed requests per path before timing starts.
    pub warmup: usize,
    /// Requests per path in one batch; batches alternate between the paths.
    pub batch: usize,
}

impl Scenario {
    /// A scenario whose untimed warm-up is a tenth of its requests, at least four per
    /// connection.
    pub fn new(label: &'static str, mode: Mode, concurrency: usize, requests: usize, batch: usize) -> Self {
        Scenario { label, mode, concurrency, requests, warmup: (requests / 10).max(concurrency * 4), batch }
    }
}

/// One way to reach the upstream: its address and the exact request bytes to send.
pub struct Endpoint {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// The process whose CPU time (with its children's: nginx's workers) is charged to this
    /// path, if any.
    pub pid: Option<u32>,
    pub complete: Bytes,
    pub stream: Bytes,
}

impl Endpoint {
    pub fn new(name: &'static str, addr: SocketAddr, pid: Option<u32>) -> Self {
        Self {
            name,
            addr,
            pid,
            complete: chat_request(addr, false),
            stream: chat_request(addr, true),
        }
    }

    pub fn request(&self, mode: Mode) -> &[u8] {
        match mode {
            Mode::Complete => &self.complete,
            Mode::FirstToken | Mode::WholeStream => &self.stream,
        }
    }

    /// CPU time used so far by the path's process and its children.
    pub fn cpu(&self) -> Option<Duration> {
        let pids = process_tree(self.pid?);
        pids.iter().map(|&p| process_cpu(p)).sum()
    }
}

/// `pid` and its descendants (nginx's master and workers), from
/// `/proc/PID/task/PID/children`.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            all.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        i += 1;
    }
    all
}

/// Resident memory of the processes, summed (`VmRSS`), in bytes.
pub fn rss(pids: &[u32]) -> Option<u64> {
    let mut total = 0;
    for p in pids {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        total += kib * 1024;
    }
    Some(total)
}


/// Measurements of one scenario on one path.
#[derive(Default)]
pub struct Samples {
    pub latencies: Vec<Duration>,
    pub errors: usize,
    /// The first few distinct error messages.
    pub error_examples: Vec<String>,
    /// Failed requests during the untimed warm-up.
    pub warmup_errors: usize,
    /// Connections opened (one per worker, more if any had to be replaced).
    pub connects: usize,
    /// Wall-clock time spent in this path's batches.
    pub busy: Duration,
    /// CPU time the endpoint's process spent during those batches, if it has one.
    pub cpu: Option<Duration>,
}

impl Samples {
    pub fn error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        let msg = format!("{e:#}");
        if self.error_examples.len() < 3 && !self.error_examples.contains(&msg) {
            self.error_examples.push(msg);
        }
    }

    pub fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        for msg in other.error_examples {
            if self.error_examples.len() < 3 && !self.error_examples.contains(&msg) {
                self.error_examples.push(msg);
            }
        }
        self.connects += other.connects;
    }

    /// The latencies, sorted.
    pub fn sorted(&self) -> Vec<Duration> {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        v
    }

    /// Completed requests per second of the path's batches.
    pub fn throughput(&self) -> Option<f64> {
        let secs = self.busy.as_secs_f64();
        (secs > 0.0 && !self.latencies.is_empty()).then(|| self.latencies.len() as f64 / secs)
    }

    /// CPU time of the path's processes per request, in µs.
    pub fn cpu_per_request(&self) -> Option<f64> {
        let requests = self.latencies.len() + self.errors;
        let cpu = self.cpu?;
        (requests > 0).then(|| cpu.as_secs_f64() * 1e6 / requests as f64)
    }
}


/// One request per path and mode, checked for content, so a misconfiguration fails loudly
/// instead of producing a table of errors.
pub async fn sanity_check(path: &Endpoint) -> Result<()> {
    let mut conn = Conn::open(path.addr).await?;
    conn.send(path.request(Mode::Complete)).await?;
    let head = conn.read_head().await?;
    let body = conn.read_body(head.body).await?;
    let text = String::from_utf8_lossy(&body);
    if head.status != 200 {
        bail!("non-streaming request got HTTP {}: {text}", head.status);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("response is not JSON: {text}"))?;
    if json["choices"][0]["message"]["content"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        bail!("response has no content: {text}");
    }
    let mut conn = Conn::open(path.addr).await?;
    measure_one(&mut conn, path.request(Mode::FirstToken), Mode::FirstToken).await?;
    Ok(())
}

/// Runs one scenario on every path: a warm-up per path, then batches in which the paths take
/// turns, in forward order on even rounds and backward on odd ones (ABBA for two, ABCCBA for
/// three), so machine noise hits every path alike. One [`Samples`] per path, in `paths` order.
pub async fn run_scenario(scenario: &Scenario, paths: &[Endpoint]) -> Vec<Samples> {
    let mut slots: Vec<Vec<Option<Conn>>> = Vec::new();
    let mut samples: Vec<Samples> = Vec::new();
    for path in paths {
        let mut conns: Vec<Option<Conn>> = (0..scenario.concurrency).map(|_| None).collect();
        let mut s = Samples::default();
        // Warm-up: opens the connections (and the proxies' upstream pools), untimed.
        let warm = run_batch(path, &mut conns, scenario.mode, scenario.warmup).await;
        s.connects = warm.connects;
        s.warmup_errors = warm.errors;
        for msg in warm.error_examples {
            eprintln!("bench: warm-up error on the {} path: {msg}", path.name);
            s.error_examples.push(format!("(warm-up) {msg}"));
        }
        slots.push(conns);
        samples.push(s);
    }
    let mut left = scenario.requests;
    let mut round = 0usize;
    while left > 0 {
        let n = left.min(scenario.batch);
        let mut order: Vec<usize> = (0..paths.len()).collect();
        if !round.is_multiple_of(2) {
            order.reverse();
        }
        for i in order {
            let cpu_before = paths[i].cpu();
            let started = Instant::now();
            let batch = run_batch(&paths[i], &mut slots[i], scenario.mode, n).await;
            samples[i].busy += started.elapsed();
            if let (Some(before), Some(after)) = (cpu_before, paths[i].cpu()) {
                *samples[i].cpu.get_or_insert(Duration::ZERO) += after.saturating_sub(before);
            }
            samples[i].merge(batch);
        }
        left -= n;
        round += 1;
    }
    samples
}

/// Sends `n` requests over `slots.len()` concurrent keep-alive connections.
pub async fn run_batch(path: &Endpoint, slots: &mut [Option<Conn>], mode: Mode, n: usize) -> Samples {
    let remaining = Cell::new(n);
    let workers = slots
        .iter_mut()
        .map(|slot| worker(path, slot, mode, &remaining));
    let mut total = Samples::default();
    for samples in join_all(workers).await {
        total.merge(samples);
    }
    total
}


/// Takes requests off `remaining` until none are left, (re)connecting `slot` as needed.
pub async fn worker(
    path: &Endpoint,
    slot: &mut Option<Conn>,
    mode: Mode,
    remaining: &Cell<usize>,
) -> Samples {
    let mut samples = Samples::default();
    while remaining.get() > 0 {
        remaining.set(remaining.get() - 1);
        let conn = match slot {
            Some(conn) => conn,
            None => match Conn::open(path.addr).await {
                Ok(conn) => {
                    samples.connects += 1;
                    slot.insert(conn)
                }
                Err(e) => {
                    samples.error(&e);
                    continue;
                }
            },
        };
        let outcome =
            tokio::time::timeout(REQUEST_TIMEOUT, measure_one(conn, path.request(mode), mode))
                .await;
        match outcome {
            Ok(Ok(latency)) => {
                samples.latencies.push(latency);
                if !conn.reusable {
                    *slot = None;
                }
            }
            Ok(Err(e)) => {
                samples.error(&e);
                *slot = None;
            }
            Err(_) => {
                samples.error(&anyhow!("no answer within {REQUEST_TIMEOUT:?}"));
                *slot = None;
            }
        }
    }
    samples
}
