//! How much latency does joule add over talking to the upstream directly?
//!
//! The bench starts, in one run:
//!
//! - the in-process mock upstream ([`joule::mock::MockServer`]) on its own thread and tokio
//!   runtime (standing in for a separate GPU backend), with no simulated delay (`ttft_ms = 0`,
//!   no decode delay);
//! - the real `joule serve` binary (release build, `threads = 1` unless `JOULE_BENCH_THREADS`
//!   says otherwise, `log.level = "warn"`) with one hosted deployment pointing at that mock;
//! - a client on a third thread that sends the same request bytes, with the same hand-rolled
//!   HTTP/1.1 keep-alive code, either straight to the mock ("direct") or through joule.
//!
//! The client is a minimal HTTP/1.1 implementation over `tokio::net::TcpStream` (one keep-alive
//! connection per in-flight request, `TCP_NODELAY`) rather than reqwest, so that client-side
//! overhead is small and identical on both paths; only the difference between the paths is
//! reported as joule's cost.
//!
//! Scenarios, each measured for both paths:
//!
//! 1. non-streaming chat completions at concurrency 1 and 32: time from writing the request to
//!    reading the last byte of the response body;
//! 2. streaming chat completions at concurrency 1: time to first token (TTFT), i.e. from writing
//!    the request to the arrival of the first SSE event carrying non-empty `delta.content` (the
//!    role-only chunk does not count). The rest of each stream is drained untimed.
//!
//! To make machine noise (other processes, CPU frequency, a neighbour's build) hit both paths
//! equally, the paths are interleaved: each scenario runs in small batches alternating direct
//! and joule in ABBA order, after an untimed warm-up on every connection. Reported are p50 and
//! p99 per path and their difference ("added" = joule − direct), plus throughput, errors, and
//! the CPU time the joule process used per request (summed over its threads from
//! `/proc/PID/task/*/schedstat` around each joule batch; less sensitive to machine noise than
//! latency).
//! The result is printed as a markdown table and written to `target/bench-overhead.md`.
//!
//! The target is under 0.5 ms added p50 at concurrency 1. It is reported, never asserted.
//!
//! The same machinery compares two joule configurations instead of direct vs joule
//! (`JOULE_BENCH_COMPARE`, or `scripts/bench --store` / `--telemetry`): two joule processes
//! against the same mock, interleaved the same way, "added" = second − first, CPU per request
//! shown for both:
//!
//! - `store`: "store off" (`[store] backend = "none"`, a config key) vs "store on" (SQLite, the
//!   key in a project with requests- and tokens-per-minute limits and a budget, all too high to
//!   refuse, so every request runs the whole access check, settles tokens and cost and queues a
//!   usage record that the writer batches into SQLite); table in `target/bench-overhead-store.md`;
//! - `telemetry`: "telemetry off" (`[telemetry] enabled = false`) vs "telemetry on" (the
//!   default); both with `[health] probe_interval_ms = 0` so probes add no noise and the default
//!   SQLite store; table in `target/bench-overhead-telemetry.md`.
//!
//! In the default comparison joule runs with its default store, written out explicitly in the
//! generated config (`[store] backend = "sqlite"`, a file beside the config; the bench key is a
//! config key without a project) and named in the table header.
//!
//! Run with `scripts/bench` (or `cargo bench --bench overhead`). `JOULE_BENCH_QUICK=1` (or the
//! argument `--quick`) runs a few hundred requests only: a smoke run for CI that keeps the bench
//! from rotting.

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::join_all;
use joule::api::sse::{SseItem, SseParser};
use joule::mock::{MockConfig, MockServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// Loopback ports and recognising a start that lost them, shared with the integration tests.
#[path = "../tests/common/ports.rs"]
mod ports;

/// The client's API key (its hash goes in joule's `[[keys]]`).
const KEY: &str = "sk-bench-client-key-0123456789";
/// The model joule serves; the mock accepts any model name.
const MODEL: &str = "bench-model";
/// Completion tokens the mock generates per request.
const TOKENS: u32 = 16;
/// Worker threads joule runs with, unless `JOULE_BENCH_THREADS` says otherwise.
const DEFAULT_JOULE_THREADS: usize = 1;
/// Added p50 at concurrency 1 that the gateway aims to stay under.
const TARGET_ADDED_P50: Duration = Duration::from_micros(500);
/// A request without a complete answer by then counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long joule may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> Result<()> {
    let plan = Plan::from_env()?;
    let comparison = Comparison::from_env()?;
    let machine = Machine::probe();

    let mock = MockThread::start(MockConfig {
        ttft_ms: 0,
        tokens_per_s: 0.0,
        tokens: TOKENS,
        ..MockConfig::default()
    })?;
    let sides = comparison.sides();
    let mut gateways = Vec::new();
    let mut paths = Vec::new();
    for side in &sides {
        paths.push(match side.variant {
            None => Endpoint::new(side.name, mock.addr, None),
            Some(variant) => {
                let joule = Joule::start(mock.addr, plan.joule_threads, variant)?;
                let endpoint = Endpoint::new(side.name, joule.addr, Some(joule.child.id()));
                gateways.push(joule);
                endpoint
            }
        });
    }
    let paths: [Endpoint; 2] = paths
        .try_into()
        .map_err(|_| anyhow!("a comparison has exactly two sides"))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client runtime")?;
    let results = runtime.block_on(run(&plan, &paths));
    // Whatever happened, a gateway that died under load is the first thing to report.
    for joule in &mut gateways {
        joule.check_alive()?;
    }
    let results = results?;

    let report = render(&plan, &machine, comparison, &sides, &results);
    println!("\n{report}");
    let out = report_path(comparison.report_file());
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Plan and scenarios

/// How many requests each scenario sends per path.
struct Plan {
    quick: bool,
    joule_threads: usize,
    scenarios: Vec<Scenario>,
}

/// One measured workload.
#[derive(Clone, Copy)]
struct Scenario {
    label: &'static str,
    mode: Mode,
    concurrency: usize,
    /// Timed requests per path.
    requests: usize,
    /// Untimed requests per path before timing starts.
    warmup: usize,
    /// Requests per path in one batch; batches alternate between the paths.
    batch: usize,
}

/// What one timed request measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Non-streaming: request written → last body byte read.
    Complete,
    /// Streaming: request written → first content event read.
    FirstToken,
}

impl Plan {
    fn from_env() -> Result<Self> {
        let joule_threads = match std::env::var("JOULE_BENCH_THREADS") {
            Ok(v) => v
                .parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .with_context(|| format!("JOULE_BENCH_THREADS=`{v}` is not a positive integer"))?,
            Err(_) => DEFAULT_JOULE_THREADS,
        };
        let quick = std::env::var("JOULE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
            || std::env::args().skip(1).any(|a| a == "--quick");
        // Full run: a few seconds of requests per scenario and path on a 2-core machine;
        // quick run: enough to exercise every code path.
        let (c1, c32, stream) = if quick {
            (200, 640, 100)
        } else {
            (5_000, 20_000, 2_000)
        };
        let scenario = |label, mode, concurrency, requests: usize, batch| Scenario {
            label,
            mode,
            concurrency,
            requests,
            warmup: (requests / 10).max(concurrency * 4),
            batch,
        };
        Ok(Plan {
            quick,
            joule_threads,
            scenarios: vec![
                scenario("non-stream, c=1", Mode::Complete, 1, c1, 10),
                // 8 requests per connection per batch keeps the ramp-down at a batch's end small.
                scenario("non-stream, c=32", Mode::Complete, 32, c32, 32 * 8),
                scenario("stream TTFT, c=1", Mode::FirstToken, 1, stream, 5),
            ],
        })
    }
}

/// Which two endpoints one run puts side by side.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Comparison {
    /// Straight to the mock vs through joule (default store): joule's own cost.
    Direct,
    /// Joule with the store off vs on (SQLite, project limits and budget, usage records).
    Store,
    /// Joule with telemetry off vs on, health probes off in both.
    Telemetry,
}

/// One side of a comparison: its column name and, unless it is the direct path, the joule
/// configuration behind it.
struct Side {
    name: &'static str,
    variant: Option<Variant>,
}

/// The parts of joule's config a comparison varies.
#[derive(Clone, Copy)]
struct Variant {
    store: StoreMode,
    telemetry: bool,
    /// `[health] probe_interval_ms = 0`: no background probes.
    probes: bool,
}

impl Comparison {
    /// `JOULE_BENCH_COMPARE` (`direct`, `store`, `telemetry`; default `direct`), or the bench
    /// arguments `--store` / `--telemetry`.
    fn from_env() -> Result<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--store") {
            return Ok(Self::Store);
        }
        if args.iter().any(|a| a == "--telemetry") {
            return Ok(Self::Telemetry);
        }
        match std::env::var("JOULE_BENCH_COMPARE").as_deref() {
            Err(_) | Ok("" | "direct") => Ok(Self::Direct),
            Ok("store") => Ok(Self::Store),
            Ok("telemetry") => Ok(Self::Telemetry),
            Ok(other) => {
                bail!("JOULE_BENCH_COMPARE=`{other}` is not one of: direct, store, telemetry")
            }
        }
    }

    /// Baseline first: "added" is the second side minus the first.
    fn sides(self) -> [Side; 2] {
        let default = Variant {
            store: StoreMode::Default,
            telemetry: true,
            probes: true,
        };
        let quiet = Variant {
            probes: false,
            ..default
        };
        let side = |name, variant| Side { name, variant };
        match self {
            Self::Direct => [side("direct", None), side("joule", Some(default))],
            Self::Store => [
                side(
                    "store off",
                    Some(Variant {
                        store: StoreMode::Off,
                        ..default
                    }),
                ),
                side(
                    "store on",
                    Some(Variant {
                        store: StoreMode::Project,
                        ..default
                    }),
                ),
            ],
            Self::Telemetry => [
                side(
                    "telemetry off",
                    Some(Variant {
                        telemetry: false,
                        ..quiet
                    }),
                ),
                side("telemetry on", Some(quiet)),
            ],
        }
    }

    fn report_file(self) -> &'static str {
        match self {
            Self::Direct => "bench-overhead.md",
            Self::Store => "bench-overhead-store.md",
            Self::Telemetry => "bench-overhead-telemetry.md",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Direct => "joule overhead vs direct",
            Self::Store => "joule: store on vs store off",
            Self::Telemetry => "joule: telemetry on vs telemetry off",
        }
    }

    /// What differs between the sides, for the table header.
    fn setup(self) -> &'static str {
        match self {
            Self::Direct => {
                "joule with its default store written out explicitly (`[store] backend = \
                 \"sqlite\"`, a file beside the config; the bench key is a config key without \
                 a project, so no limits or budget, but a usage record per request); health \
                 probes and telemetry at their defaults"
            }
            Self::Store => {
                "store off = `[store] backend = \"none\"`, a config key; store on = SQLite, the \
                 key in a project with requests- and tokens-per-minute limits and a budget, all \
                 checked on every request and never refusing, tokens and cost settled and a \
                 usage record queued per request; health probes and telemetry at their defaults"
            }
            Self::Telemetry => {
                "telemetry off = `[telemetry] enabled = false`, telemetry on = the default; \
                 both with `[health] probe_interval_ms = 0` (no probes) and the default SQLite \
                 store with a config key without a project"
            }
        }
    }
}

/// One way to reach the upstream: its address and the exact request bytes to send.
struct Endpoint {
    name: &'static str,
    addr: SocketAddr,
    /// The process whose CPU time is charged to this path (joule's), if any.
    pid: Option<u32>,
    complete: Bytes,
    stream: Bytes,
}

impl Endpoint {
    fn new(name: &'static str, addr: SocketAddr, pid: Option<u32>) -> Self {
        Self {
            name,
            addr,
            pid,
            complete: chat_request(addr, false),
            stream: chat_request(addr, true),
        }
    }

    fn request(&self, mode: Mode) -> &[u8] {
        match mode {
            Mode::Complete => &self.complete,
            Mode::FirstToken => &self.stream,
        }
    }
}

/// A complete HTTP/1.1 chat-completion request; identical for both paths but for `host`.
fn chat_request(addr: SocketAddr, stream: bool) -> Bytes {
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

/// Measurements of one scenario on one path.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    errors: usize,
    /// The first few distinct error messages.
    error_examples: Vec<String>,
    /// Failed requests during the untimed warm-up.
    warmup_errors: usize,
    /// Connections opened (one per worker, more if any had to be replaced).
    connects: usize,
    /// Wall-clock time spent in this path's batches.
    busy: Duration,
    /// CPU time the endpoint's process spent during those batches, if it has one.
    cpu: Option<Duration>,
}

impl Samples {
    fn error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        let msg = format!("{e:#}");
        if self.error_examples.len() < 3 && !self.error_examples.contains(&msg) {
            self.error_examples.push(msg);
        }
    }

    fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        for msg in other.error_examples {
            if self.error_examples.len() < 3 && !self.error_examples.contains(&msg) {
                self.error_examples.push(msg);
            }
        }
        self.connects += other.connects;
    }
}

/// Results of one scenario: `[baseline, compared]`.
struct ScenarioResult {
    scenario: Scenario,
    paths: [Samples; 2],
}

async fn run(plan: &Plan, paths: &[Endpoint; 2]) -> Result<Vec<ScenarioResult>> {
    for path in paths {
        sanity_check(path)
            .await
            .with_context(|| format!("sanity check of the {} path", path.name))?;
    }
    let mut results = Vec::new();
    for &scenario in &plan.scenarios {
        eprintln!(
            "bench: {} — {} requests per path (+{} warm-up)…",
            scenario.label, scenario.requests, scenario.warmup
        );
        results.push(run_scenario(scenario, paths).await);
    }
    Ok(results)
}

/// One request per path and mode, checked for content, so a misconfiguration fails loudly
/// instead of producing a table of errors.
async fn sanity_check(path: &Endpoint) -> Result<()> {
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

async fn run_scenario(scenario: Scenario, paths: &[Endpoint; 2]) -> ScenarioResult {
    let mut slots: [Vec<Option<Conn>>; 2] = Default::default();
    let mut samples: [Samples; 2] = Default::default();
    for (i, path) in paths.iter().enumerate() {
        slots[i] = (0..scenario.concurrency).map(|_| None).collect();
        // Warm-up: opens the connections (and joule's upstream pool), untimed.
        let warm = run_batch(path, &mut slots[i], scenario.mode, scenario.warmup).await;
        samples[i].connects = warm.connects;
        samples[i].warmup_errors = warm.errors;
        for msg in warm.error_examples {
            eprintln!("bench: warm-up error on the {} path: {msg}", path.name);
            samples[i].error_examples.push(format!("(warm-up) {msg}"));
        }
    }
    let mut left = scenario.requests;
    let mut round = 0usize;
    while left > 0 {
        let n = left.min(scenario.batch);
        // ABBA: alternate which path goes first so neither always follows the other.
        let order = if round.is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        };
        for i in order {
            let cpu_before = paths[i].pid.and_then(process_cpu);
            let started = Instant::now();
            let batch = run_batch(&paths[i], &mut slots[i], scenario.mode, n).await;
            samples[i].busy += started.elapsed();
            if let (Some(before), Some(after)) = (cpu_before, paths[i].pid.and_then(process_cpu)) {
                *samples[i].cpu.get_or_insert(Duration::ZERO) += after.saturating_sub(before);
            }
            samples[i].merge(batch);
        }
        left -= n;
        round += 1;
    }
    ScenarioResult {
        scenario,
        paths: samples,
    }
}

/// Sends `n` requests over `slots.len()` concurrent keep-alive connections.
async fn run_batch(path: &Endpoint, slots: &mut [Option<Conn>], mode: Mode, n: usize) -> Samples {
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

/// CPU time used so far by the live threads of process `pid`, from Linux `schedstat`
/// (nanosecond resolution); `None` where that is unavailable.
fn process_cpu(pid: u32) -> Option<Duration> {
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

/// Takes requests off `remaining` until none are left, (re)connecting `slot` as needed.
async fn worker(
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

/// Sends one request on `conn` and returns the latency `mode` asks for. The response is always
/// read to its end, so the connection can carry the next request.
async fn measure_one(conn: &mut Conn, request: &[u8], mode: Mode) -> Result<Duration> {
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
        Mode::Complete => {
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
fn is_content_event(item: &SseItem) -> bool {
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
struct Conn {
    stream: TcpStream,
    /// Bytes read but not consumed yet.
    buf: BytesMut,
    /// False once the server announced `connection: close`.
    reusable: bool,
}

/// A response's status and how its body is framed.
struct Head {
    status: u16,
    body: Body,
}

/// Progress through a response body.
#[derive(Clone, Copy)]
enum Body {
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
    async fn open(addr: SocketAddr) -> Result<Self> {
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

    async fn send(&mut self, request: &[u8]) -> Result<()> {
        self.stream
            .write_all(request)
            .await
            .context("writing the request")
    }

    /// Reads more bytes into the buffer; the peer closing is an error (responses are framed).
    async fn fill(&mut self) -> Result<()> {
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

    async fn read_head(&mut self) -> Result<Head> {
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
    async fn next_body_data(&mut self, body: &mut Body) -> Result<Option<Bytes>> {
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
    async fn read_body(&mut self, mut body: Body) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(data) = self.next_body_data(&mut body).await? {
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// Consumes one CRLF-terminated line from the buffer, if a whole one is there.
    fn take_line(&mut self) -> Option<String> {
        let end = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 2);
        Some(line)
    }
}

// ---------------------------------------------------------------------------------------------
// The mock upstream and the gateway process

/// The mock upstream on a dedicated thread with its own runtime, like a separate backend.
struct MockThread {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockThread {
    fn start(cfg: MockConfig) -> Result<Self> {
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
enum StoreMode {
    /// `[store] backend = "none"`: config keys only, no usage records.
    Off,
    /// The default: SQLite beside the config; the config key has no project.
    Default,
    /// SQLite; the key belongs to a project with limits and a budget.
    Project,
}

/// A running `joule serve` process, killed on drop.
struct Joule {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    /// Config, log and store; kept once joule serves.
    _dir: Option<tempfile::TempDir>,
}

/// How one start of joule ended.
enum Started {
    Serving,
    /// Another process took one of the ports after they were picked (see `ports`).
    PortTaken,
}

/// Two fresh loopback addresses, for the API and the admin listener.
fn fresh_addrs() -> (SocketAddr, SocketAddr) {
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    (loopback(ports::free_port()), loopback(ports::free_port()))
}

impl Joule {
    /// Starts joule, again on fresh ports when the picked ones were taken meanwhile (up to
    /// `ports::START_ATTEMPTS` times); any other start-up failure is an error at once.
    fn start(upstream: SocketAddr, threads: usize, variant: Variant) -> Result<Self> {
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
    fn config(
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
    fn wait_ready(&mut self) -> Result<Started> {
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
    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait().context("checking on joule")? {
            None => Ok(()),
            Some(status) => bail!("joule exited ({status}); log:\n{}", self.logs()),
        }
    }

    fn logs(&self) -> String {
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
struct Machine {
    cpu: String,
    cores: usize,
    load: String,
    revision: Option<String>,
}

impl Machine {
    fn probe() -> Self {
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

/// `target/<file>`, honouring `CARGO_TARGET_DIR`.
fn report_path(file: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.join("target"), |d| manifest.join(d));
    target.join(file)
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "n/a".to_owned(),
        |d| format!("{:.3}", d.as_secs_f64() * 1e3),
    )
}

fn added(joule: Option<Duration>, direct: Option<Duration>) -> Option<f64> {
    Some((joule?.as_secs_f64() - direct?.as_secs_f64()) * 1e3)
}

fn signed_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("**{v:+.3}**"))
}

fn throughput(s: &Samples) -> String {
    let secs = s.busy.as_secs_f64();
    if secs <= 0.0 || s.latencies.is_empty() {
        return "n/a".to_owned();
    }
    format!("{:.0}", s.latencies.len() as f64 / secs)
}

/// CPU time per request of the path's process, in µs.
fn cpu_per_request(s: &Samples) -> String {
    let requests = s.latencies.len() + s.errors;
    match s.cpu {
        Some(cpu) if requests > 0 => format!("{:.0}", cpu.as_secs_f64() * 1e6 / requests as f64),
        _ => "n/a".to_owned(),
    }
}

fn sorted_latencies(s: &Samples) -> Vec<Duration> {
    let mut v = s.latencies.clone();
    v.sort_unstable();
    v
}

fn render(
    plan: &Plan,
    machine: &Machine,
    comparison: Comparison,
    sides: &[Side; 2],
    results: &[ScenarioResult],
) -> String {
    let [a, b] = [sides[0].name, sides[1].name];
    let mut out = String::new();
    let run = if plan.quick { "quick run" } else { "full run" };
    let _ = writeln!(out, "## {} ({run})\n", comparison.title());
    let revision = machine
        .revision
        .as_ref()
        .map_or_else(String::new, |r| format!(", joule at `{r}`"));
    let _ = writeln!(
        out,
        "Machine: {} × {} (load average at start: {}){revision}.  ",
        machine.cores, machine.cpu, machine.load,
    );
    let _ = writeln!(
        out,
        "Mock upstream with ttft 0 and no decode delay ({TOKENS} tokens) on its own thread; joule \
         release build, threads = {}, log level warn; {}. Client: hand-rolled HTTP/1.1, one \
         keep-alive connection per in-flight request, same code and bytes on both paths; paths \
         interleaved in ABBA batches. Times in ms; added = {b} − {a}; CPU = CPU time of the joule \
         process per request.\n",
        plan.joule_threads,
        comparison.setup(),
    );
    let _ = writeln!(
        out,
        "| scenario | requests/path | {a} p50 | {b} p50 | added p50 | {a} p99 | {b} p99 | added p99 | req/s {a} / {b} | CPU µs/req {a} / {b} | errors {a} / {b} |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let mut c1_added_p50 = None;
    for r in results {
        let [first, second] = &r.paths;
        let (f, s) = (sorted_latencies(first), sorted_latencies(second));
        let (f50, s50) = (percentile(&f, 0.5), percentile(&s, 0.5));
        let (f99, s99) = (percentile(&f, 0.99), percentile(&s, 0.99));
        if r.scenario.mode == Mode::Complete && r.scenario.concurrency == 1 {
            c1_added_p50 = added(s50, f50);
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |",
            r.scenario.label,
            r.scenario.requests,
            ms(f50),
            ms(s50),
            signed_ms(added(s50, f50)),
            ms(f99),
            ms(s99),
            signed_ms(added(s99, f99)),
            throughput(first),
            throughput(second),
            cpu_per_request(first),
            cpu_per_request(second),
            first.errors,
            second.errors,
        );
    }
    let _ = writeln!(out);
    if comparison == Comparison::Direct {
        let target_ms = TARGET_ADDED_P50.as_secs_f64() * 1e3;
        let verdict = match c1_added_p50 {
            Some(v) if v < target_ms => format!("met ({v:+.3} ms)"),
            Some(v) => format!("**not met** ({v:+.3} ms)"),
            None => "not measured".to_owned(),
        };
        let _ = writeln!(
            out,
            "Target: added p50 at concurrency 1 under {target_ms} ms — {verdict}."
        );
    }
    for r in results {
        for (name, s) in [a, b].iter().zip(&r.paths) {
            if s.warmup_errors > 0 {
                let _ = writeln!(
                    out,
                    "\n{} / {name}: {} error(s) during the warm-up.",
                    r.scenario.label, s.warmup_errors
                );
            }
            let reconnects = s.connects.saturating_sub(r.scenario.concurrency);
            if reconnects > 0 {
                let _ = writeln!(
                    out,
                    "\n{} / {name}: {reconnects} connection(s) reopened.",
                    r.scenario.label
                );
            }
            for msg in &s.error_examples {
                let _ = writeln!(
                    out,
                    "\n{} / {name} error: `{}`",
                    r.scenario.label,
                    msg.replace('`', "'")
                );
            }
        }
    }
    out
}
