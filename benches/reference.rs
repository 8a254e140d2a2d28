//! joule against the physical reference for a reverse proxy on this machine: nginx (Debian's
//! `nginx-light`), both in front of the same mock upstream, measured in one run.
//!
//! Default run (`scripts/bench --reference`), four paths interleaved batch by batch (forward
//! order on even rounds, backward on odd ones), against the in-process mock answering at once
//! with 16 tokens:
//!
//! - `direct`: straight to the mock (the baseline for added latency);
//! - `nginx`: `worker_processes 2`, an upstream keep-alive pool, `proxy_buffering off` (every
//!   event forwarded as it arrives), access log off;
//! - `joule`: `threads = 2`, `[store] backend = "none"`, a config key;
//! - `joule+sqlite`: the same with the default SQLite store (a usage record per request).
//!
//! Scenarios: non-stream at concurrency 1 (added p50 over direct), non-stream at concurrency 64
//! (saturation: CPU per request of the proxy's processes, requests/s), and whole 16-token
//! streams at concurrency 16 (CPU per stream). CPU is the proxy's process tree's (nginx's master
//! and workers) from `/proc/PID/task/*/schedstat` around each of its batches.
//!
//! `--streams N` instead holds N slow streams through each proxy in turn (nginx, then joule;
//! the mock in a separate `joule mock` process sends one token every 2 s), opened at 500 per
//! second, then for `--stream-seconds` (default 10) opens new streams at 500 per second while
//! the N stay open, each a probe whose time to first token is measured and which is closed right
//! after it. Reported: the proxy's RSS per open stream (RSS with N open minus RSS before,
//! divided by N), its CPU during the probe phase, and the probes' TTFT p50/p99/max.
//!
//! The tables go to stdout and `target/bench-reference.md` (`bench-reference-streams.md`).
//! Targets are reported, never asserted. nginx is found at `JOULE_BENCH_NGINX` or
//! `/usr/sbin/nginx`; `scripts/bench --reference` installs `nginx-light` when it is missing.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::cell::RefCell;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use joule::api::sse::{SseItem, SseParser};

mod harness;
use harness::{
    is_content_event, percentile, process_tree, rss, run_scenario, sanity_check,
    Body, Conn, Endpoint, Joule, Machine, Mode, MockThread, Samples, Scenario, StoreMode,
    Variant,
};

/// Completion tokens per request in the default run.
const TOKENS: u32 = 16;
/// joule's worker threads and nginx's worker processes.
const WORKERS: usize = 2;
/// New streams per second, while ramping up to N and during the probe phase.
const ARRIVALS_PER_S: u32 = 500;
/// Token rate of the held streams (one token every 2 s).
const SLOW_TOKENS_PER_S: f64 = 0.5;
/// A stream not answered with a first token by then counts as an error.
const FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> Result<()> {
    let options = Options::from_args()?;
    let machine = Machine::probe();
    let nginx = nginx_binary()?;
    let (report, file) = match options.streams {
        None => (fast(&options, &machine, &nginx)?, "bench-reference.md"),
        Some(n) => (streams(n, &options, &machine, &nginx)?, "bench-reference-streams.md"),
    };
    harness::publish(&report, file)
}

/// Command-line options (after `--` of `cargo bench`).
struct Options {
    quick: bool,
    /// `--streams N`: the held-streams scenario instead of the default run.
    streams: Option<usize>,
    /// `--stream-seconds S`: length of the probe phase.
    probe_phase: Duration,
}

impl Options {
    fn from_args() -> Result<Self> {
        let mut options = Options {
            quick: std::env::var("JOULE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0"),
            streams: None,
            probe_phase: Duration::from_secs(10),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--streams" => options.streams = Some(positive(&mut args, "--streams")?),
                "--stream-seconds" => {
                    options.probe_phase = Duration::from_secs(u64::try_from(positive(&mut args, "--stream-seconds")?)?);
                }
                // cargo bench passes `--bench`; other harness flags are ignored likewise.
                _ => {}
            }
        }
        Ok(options)
    }
}

/// The positive integer after `flag`.
fn positive(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<usize> {
    let v = args.next().with_context(|| format!("{flag} needs a number"))?;
    v.parse::<usize>()
        .ok()
        .filter(|&n| n >= 1)
        .with_context(|| format!("{flag} `{v}` is not a positive integer"))
}

fn nginx_binary() -> Result<PathBuf> {
    let path = std::env::var_os("JOULE_BENCH_NGINX")
        .map_or_else(|| PathBuf::from("/usr/sbin/nginx"), PathBuf::from);
    if !path.exists() {
        bail!(
            "nginx not found at {} (set JOULE_BENCH_NGINX, or run `scripts/bench --reference`, \
             which installs Debian's nginx-light)",
            path.display()
        );
    }
    Ok(path)
}

fn joule_variant(store: StoreMode) -> Variant {
    Variant {
        store,
        telemetry: true,
        probes: true,
    }
}

// ---------------------------------------------------------------------------------------------
// Default run: latency, saturation and stream CPU

fn fast(options: &Options, machine: &Machine, nginx_bin: &PathBuf) -> Result<String> {
    let mock = MockThread::immediate(TOKENS)?;
    let nginx = Nginx::start(nginx_bin, mock.addr)?;
    let mut joule = Joule::start(mock.addr, WORKERS, joule_variant(StoreMode::Off))?;
    let mut joule_sqlite = Joule::start(mock.addr, WORKERS, joule_variant(StoreMode::Default))?;
    let paths = [
        Endpoint::new("direct", mock.addr, None),
        Endpoint::new("nginx", nginx.addr, Some(nginx.child.id())),
        Endpoint::new("joule", joule.addr, Some(joule.child.id())),
        Endpoint::new("joule+sqlite", joule_sqlite.addr, Some(joule_sqlite.child.id())),
    ];
    let (c1, c64, streams) = if options.quick {
        (200, 1_280, 160)
    } else {
        (5_000, 40_000, 4_000)
    };
    let scenario = Scenario::new;
    let scenarios = [
        scenario("non-stream, c=1", Mode::Complete, 1, c1, 10),
        scenario("non-stream, c=64", Mode::Complete, 64, c64, 64 * 8),
        scenario("16-token stream, c=16", Mode::WholeStream, 16, streams, 16 * 4),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client runtime")?;
    let results = runtime.block_on(async {
        for path in &paths {
            sanity_check(path)
                .await
                .with_context(|| format!("sanity check of the {} path", path.name))?;
        }
        let mut results = Vec::new();
        for s in &scenarios {
            eprintln!("bench: {} — {} requests per path…", s.label, s.requests);
            results.push(run_scenario(s, &paths).await);
        }
        anyhow::Ok(results)
    });
    joule.check_alive()?;
    joule_sqlite.check_alive()?;
    let results = results?;
    Ok(render_fast(options, machine, &paths, &scenarios, &results))
}

fn render_fast(
    options: &Options,
    machine: &Machine,
    paths: &[Endpoint],
    scenarios: &[Scenario],
    results: &[Vec<Samples>],
) -> String {
    let mut out = String::new();
    let run = if options.quick { "quick run" } else { "full run" };
    let _ = writeln!(out, "## joule vs nginx, the reference reverse proxy ({run})\n");
    machine.header(&mut out);
    let _ = writeln!(
        out,
        "In-process mock answering at once with {TOKENS} tokens. nginx: {WORKERS} worker \
         processes, upstream keep-alive pool, `proxy_buffering off`. joule: release build, \
         threads = {WORKERS}, `[store] backend = \"none\"` (joule+sqlite: the default SQLite \
         store), log level warn. Client: hand-rolled HTTP/1.1, one keep-alive connection per \
         in-flight request; paths interleaved batch by batch. Times in ms; CPU = the path's \
         process tree, µs per request.\n"
    );
    let _ = write!(out, "| scenario | requests/path |");
    for p in paths {
        let _ = write!(out, " {0} p50 | {0} p99 | {0} req/s | {0} CPU µs |", p.name);
    }
    let _ = writeln!(out, " errors |");
    let _ = writeln!(out, "|---|--:|{}---|", "--:|".repeat(paths.len() * 4));
    for (s, samples) in scenarios.iter().zip(results) {
        let _ = write!(out, "| {} | {} |", s.label, s.requests);
        for x in samples {
            let sorted = x.sorted();
            let _ = write!(
                out,
                " {} | {} | {} | {} |",
                ms(percentile(&sorted, 0.5)),
                ms(percentile(&sorted, 0.99)),
                x.throughput().map_or("n/a".into(), |v| format!("{v:.0}")),
                x.cpu_per_request().map_or("n/a".into(), |v| format!("{v:.0}")),
            );
        }
        let errors: Vec<String> = samples.iter().map(|x| x.errors.to_string()).collect();
        let _ = writeln!(out, " {} |", errors.join(" / "));
    }

    // The issue's figures: joule ÷ nginx.
    let at = |scenario: usize, path: usize| &results[scenario][path];
    let p50 = |x: &Samples| percentile(&x.sorted(), 0.5).map(|d| d.as_secs_f64() * 1e3);
    let added = |path| Some(p50(at(0, path))? - p50(at(0, 0))?);
    let rows: [(&str, Option<f64>, Option<f64>, &str, &str); 4] = [
        (
            "CPU per non-stream request at saturation (c=64), µs",
            at(1, 1).cpu_per_request(),
            at(1, 2).cpu_per_request(),
            "≤ 1.8×",
            "{:.0}",
        ),
        (
            "requests/s at c=64",
            at(1, 1).throughput(),
            at(1, 2).throughput(),
            "",
            "{:.0}",
        ),
        ("added p50 at c=1, ms", added(1), added(2), "≤ 1.5×", "{:.3}"),
        (
            "CPU per 16-token stream (c=16), µs",
            at(2, 1).cpu_per_request(),
            at(2, 2).cpu_per_request(),
            "≤ 2×",
            "{:.0}",
        ),
    ];
    let _ = writeln!(out, "\n| figure | nginx | joule | joule ÷ nginx | target |");
    let _ = writeln!(out, "|---|--:|--:|--:|---|");
    for (figure, n, j, target, format) in rows {
        let show = |v: Option<f64>| match (v, format) {
            (Some(v), "{:.3}") => format!("{v:+.3}"),
            (Some(v), _) => format!("{v:.0}"),
            (None, _) => "n/a".to_owned(),
        };
        let ratio = match (n, j) {
            (Some(n), Some(j)) if n > 0.0 => format!("{:.2}×", j / n),
            _ => "n/a".to_owned(),
        };
        let _ = writeln!(out, "| {figure} | {} | {} | {ratio} | {target} |", show(n), show(j));
    }
    let store = match (at(1, 3).cpu_per_request(), at(1, 2).cpu_per_request()) {
        (Some(with), Some(without)) => format!("{:+.0}", with - without),
        _ => "n/a".to_owned(),
    };
    let _ = writeln!(
        out,
        "| SQLite store's CPU per request at c=64 (joule+sqlite − joule), µs | | {store} | | ≤ 15 µs |"
    );
    for (s, samples) in scenarios.iter().zip(results) {
        for (p, x) in paths.iter().zip(samples) {
            for msg in &x.error_examples {
                let _ = writeln!(out, "\n{} / {} error: `{}`", s.label, p.name, msg.replace('`', "'"));
            }
        }
    }
    out
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "n/a".to_owned(), |d| format!("{:.3}", d.as_secs_f64() * 1e3))
}

// ---------------------------------------------------------------------------------------------
// --streams N: memory per open stream and the TTFT of new requests among them

/// What one proxy showed while holding the streams.
struct StreamsResult {
    name: &'static str,
    opened: usize,
    ramp_errors: usize,
    rss_before: u64,
    rss_open: u64,
    cpu: Option<Duration>,
    probe_phase: Duration,
    probes: Vec<Duration>,
    probe_errors: usize,
    error_examples: Vec<String>,
}

fn streams(n: usize, options: &Options, machine: &Machine, nginx_bin: &PathBuf) -> Result<String> {
    let mock = MockProcess::start(SLOW_TOKENS_PER_S)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client runtime")?;
    let mut results = Vec::new();
    {
        let nginx = Nginx::start(nginx_bin, mock.addr)?;
        let path = Endpoint::new("nginx", nginx.addr, Some(nginx.child.id()));
        results.push(runtime.block_on(hold_streams(&path, n, options.probe_phase))?);
    }
    {
        let mut joule = Joule::start(mock.addr, WORKERS, joule_variant(StoreMode::Off))?;
        let path = Endpoint::new("joule", joule.addr, Some(joule.child.id()));
        let result = runtime.block_on(hold_streams(&path, n, options.probe_phase));
        joule.check_alive()?;
        results.push(result?);
    }
    Ok(render_streams(n, options, machine, &results))
}

/// Opens `n` streams through `path` at [`ARRIVALS_PER_S`], keeps them open, then opens probes
/// at the same rate for `phase`, each closed after its first token.
async fn hold_streams(path: &Endpoint, n: usize, phase: Duration) -> Result<StreamsResult> {
    let pid = path.pid.context("a proxy path has a process")?;
    // A stream answered up to its first token: the path works (the slow mock's whole answers
    // would take forever).
    first_token(path.addr, &path.stream)
        .await
        .with_context(|| format!("sanity check of the {} path", path.name))?;
    let rss_before = rss(&process_tree(pid)).context("reading the proxy's RSS")?;
    let errors: Rc<RefCell<Vec<String>>> = Rc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let local = tokio::task::LocalSet::new();
    let result = local
        .run_until(async {
            eprintln!("bench: {}: opening {n} streams…", path.name);
            let mut ramp = Vec::with_capacity(n);
            let mut tick = tokio::time::interval(Duration::from_secs(1) / ARRIVALS_PER_S);
            for _ in 0..n {
                tick.tick().await;
                let (addr, request) = (path.addr, path.stream.clone());
                let mut stop = stop_rx.clone();
                let errors = errors.clone();
                ramp.push(tokio::task::spawn_local(async move {
                    let (mut conn, mut body) = match first_token(addr, &request).await {
                        Ok((conn, body, _)) => (conn, body),
                        Err(e) => return note(&errors, &e),
                    };
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => {}
                        Err(e) = drain(&mut conn, &mut body) => note(&errors, &e),
                    }
                }));
            }
            // Every stream has had its first token (or failed) once its task is past it.
            let opened = wait_opened(&ramp).await;
            let rss_open = rss(&process_tree(pid)).context("reading the proxy's RSS")?;
            eprintln!(
                "bench: {}: {opened} streams open, RSS {} MiB; probing for {phase:?}…",
                path.name,
                rss_open / (1 << 20)
            );
            let cpu_before = path.cpu();
            let started = Instant::now();
            let mut probes = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / ARRIVALS_PER_S);
            while started.elapsed() < phase {
                tick.tick().await;
                let (addr, request) = (path.addr, path.stream.clone());
                probes.push(tokio::task::spawn_local(async move {
                    first_token(addr, &request).await.map(|(_, _, ttft)| ttft)
                }));
            }
            let mut ttfts = Vec::new();
            let mut probe_errors = 0;
            for probe in probes {
                match probe.await {
                    Ok(Ok(ttft)) => ttfts.push(ttft),
                    Ok(Err(e)) => {
                        probe_errors += 1;
                        note(&errors, &e);
                    }
                    Err(e) => {
                        probe_errors += 1;
                        note(&errors, &anyhow!(e));
                    }
                }
            }
            let probe_phase = started.elapsed();
            let cpu = match (cpu_before, path.cpu()) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            };
            let _ = stop_tx.send(true);
            for task in ramp {
                let _ = task.await;
            }
            ttfts.sort_unstable();
            anyhow::Ok(StreamsResult {
                name: path.name,
                opened,
                ramp_errors: n - opened,
                rss_before,
                rss_open,
                cpu,
                probe_phase,
                probes: ttfts,
                probe_errors,
                error_examples: Vec::new(),
            })
        })
        .await;
    let mut result = result?;
    result.error_examples = errors.borrow().clone();
    Ok(result)
}

/// Waits (bounded) until no stream is still waiting for its first token; then the ramp tasks
/// still running are the open streams.
async fn wait_opened(ramp: &[tokio::task::JoinHandle<()>]) -> usize {
    let deadline = Instant::now() + FIRST_TOKEN_TIMEOUT;
    while OPENING.with(std::cell::Cell::get) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ramp.iter().filter(|t| !t.is_finished()).count()
}

thread_local! {
    /// Streams whose first token has not arrived yet.
    static OPENING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note(errors: &Rc<RefCell<Vec<String>>>, e: &anyhow::Error) {
    let mut errors = errors.borrow_mut();
    let msg = format!("{e:#}");
    if errors.len() < 3 && !errors.contains(&msg) {
        errors.push(msg);
    }
}

/// Opens a connection, sends a streaming request and reads up to the first content event:
/// the connection, where its body stands, and the time to first token.
async fn first_token(addr: SocketAddr, request: &[u8]) -> Result<(Conn, Body, Duration)> {
    OPENING.with(|o| o.set(o.get() + 1));
    let result = tokio::time::timeout(FIRST_TOKEN_TIMEOUT, async {
        let start = Instant::now();
        let mut conn = Conn::open(addr).await?;
        conn.send(request).await?;
        let head = conn.read_head().await?;
        let mut body = head.body;
        if head.status != 200 {
            let text = conn.read_body(body).await.unwrap_or_default();
            bail!("HTTP {}: {}", head.status, String::from_utf8_lossy(&text).trim());
        }
        let mut parser = SseParser::default();
        let mut items: Vec<SseItem> = Vec::new();
        while let Some(data) = conn.next_body_data(&mut body).await? {
            items.clear();
            parser.feed(&data, &mut items).context("invalid SSE")?;
            if items.iter().any(is_content_event) {
                return Ok((conn, body, start.elapsed()));
            }
        }
        bail!("stream ended without a content event")
    })
    .await
    .unwrap_or_else(|_| Err(anyhow!("no first token within {FIRST_TOKEN_TIMEOUT:?}")));
    OPENING.with(|o| o.set(o.get() - 1));
    result
}

/// Reads and discards the rest of a stream.
async fn drain(conn: &mut Conn, body: &mut Body) -> Result<()> {
    while conn.next_body_data(body).await?.is_some() {}
    bail!("the held stream ended")
}

fn render_streams(n: usize, options: &Options, machine: &Machine, results: &[StreamsResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {n} slow streams through nginx and joule\n");
    machine.header(&mut out);
    let _ = writeln!(
        out,
        "Mock upstream (`joule mock`, its own process) sending one token every {:.0} s; nginx \
         with {WORKERS} worker processes, joule with threads = {WORKERS} and no store. {n} \
         streams opened at {ARRIVALS_PER_S}/s and held open; then for {:?} new streams arrive at \
         {ARRIVALS_PER_S}/s (probes, each closed after its first token). RSS per stream = (RSS \
         with the streams open − RSS before) / streams open; CPU = the proxy's process tree \
         during the probe phase.\n",
        1.0 / SLOW_TOKENS_PER_S,
        options.probe_phase,
    );
    let _ = writeln!(
        out,
        "| proxy | streams open | RSS before MiB | RSS open MiB | RSS per stream KiB | CPU % of a core | probes | probe TTFT p50 | p99 | max | errors (ramp / probes) |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let per_stream = |r: &StreamsResult| {
        (r.opened > 0).then(|| r.rss_open.saturating_sub(r.rss_before) as f64 / 1024.0 / r.opened as f64)
    };
    let p99 = |r: &StreamsResult| percentile(&r.probes, 0.99).map(|d| d.as_secs_f64() * 1e3);
    for r in results {
        let cpu = r
            .cpu
            .map_or("n/a".to_owned(), |c| format!("{:.0}", 100.0 * c.as_secs_f64() / r.probe_phase.as_secs_f64()));
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {} | {cpu} | {} | {} | {} | {} | {} / {} |",
            r.name,
            r.opened,
            r.rss_before as f64 / 1048576.0,
            r.rss_open as f64 / 1048576.0,
            per_stream(r).map_or("n/a".into(), |v| format!("{v:.1}")),
            r.probes.len(),
            ms(percentile(&r.probes, 0.5)),
            ms(percentile(&r.probes, 0.99)),
            ms(r.probes.last().copied()),
            r.ramp_errors,
            r.probe_errors,
        );
    }
    if let [nginx, joule] = results {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}×", b / a),
            _ => "n/a".to_owned(),
        };
        let _ = writeln!(out, "\n| figure | joule ÷ nginx | target |\n|---|--:|---|");
        let _ = writeln!(
            out,
            "| memory per open stream | {} | ≤ 2× |",
            ratio(per_stream(nginx), per_stream(joule))
        );
        let _ = writeln!(
            out,
            "| TTFT p99 of a new request among the open streams | {} | ≤ 2× |",
            ratio(p99(nginx), p99(joule))
        );
    }
    for r in results {
        for msg in &r.error_examples {
            let _ = writeln!(out, "\n{} error: `{}`", r.name, msg.replace('`', "'"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Processes: nginx and a separate mock

/// nginx as a reverse proxy in front of `upstream`, killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(binary: &PathBuf, upstream: SocketAddr) -> Result<Self> {
        let dir = tempfile::tempdir().context("creating nginx's directory")?;
        let port = harness::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let root = dir.path().display().to_string();
        // Running as root, nginx would switch its workers to `nobody`; the temporary paths
        // must then be theirs to write. As root, keep root.
        let user = if is_root() { "user root;" } else { "" };
        let config = format!(
            r#"{user}
worker_processes {WORKERS};
worker_rlimit_nofile 20000;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    upstream mock {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {addr} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).context("writing nginx.conf")?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut nginx = Nginx { child, addr, _dir: dir };
        let deadline = Instant::now() + harness::STARTUP_TIMEOUT;
        loop {
            if let Some(status) = nginx.child.try_wait().context("checking on nginx")? {
                bail!("nginx exited ({status}): {}", nginx.log());
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && process_tree(nginx.child.id()).len() > WORKERS
            {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr}: {}", nginx.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown; the master takes its workers with it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(str::to_owned)))
        .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// The mock upstream as its own process (`joule mock`), so the bench process holds only the
/// client side of the streams. Killed on drop.
struct MockProcess {
    child: Child,
    addr: SocketAddr,
}

impl MockProcess {
    fn start(tokens_per_s: f64) -> Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_joule"))
            .args(["mock", "--listen", "127.0.0.1:0", "--ttft-ms", "0", "--tokens", "10000000"])
            .arg("--tokens-per-s")
            .arg(tokens_per_s.to_string())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting joule mock")?;
        let stdout = child.stdout.take().context("the mock's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the mock's address")?;
        let url = line
            .trim()
            .strip_prefix("mock listening on http://")
            .with_context(|| format!("unexpected first line from joule mock: `{}`", line.trim()))?;
        let addr = url
            .trim_end_matches("/v1")
            .parse()
            .with_context(|| format!("the mock's address in `{}`", line.trim()))?;
        Ok(MockProcess { child, addr })
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
