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
//! and, in the non-stream scenarios only, two floors that answer the mock's answer themselves,
//! proxying nothing:
//!
//! - `nginx static`: the same nginx answering it with `return 200`;
//! - `pingora floor`: pingora's HTTP/1 server session (`HttpServerApp`, its default buffered
//!   client stream, `threads = 2`) reading each request and writing the answer, nothing else:
//!   what pingora's session costs before joule does any work. It runs in a child process (this
//!   binary started with `--floor-server ADDR BODY`).
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
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(floor::FLAG) {
        return floor::serve(args);
    }
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

/// The paths of the default run, in column order. The non-stream scenarios run all of them,
/// the stream scenario the first [`PROXIES`] (the floors answer no streams).
const DIRECT: usize = 0;
const NGINX: usize = 1;
const JOULE: usize = 2;
const JOULE_SQLITE: usize = 3;
const NGINX_STATIC: usize = 4;
const FLOOR: usize = 5;
const PROXIES: usize = 4;

fn fast(options: &Options, machine: &Machine, nginx_bin: &PathBuf) -> Result<String> {
    let mock = MockThread::immediate(TOKENS)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client runtime")?;
    // The floors answer what the mock answers, byte for byte.
    let answer = runtime.block_on(answer_of(&Endpoint::new("direct", mock.addr, None)))?;
    let nginx = Nginx::start(nginx_bin, mock.addr, Some(&answer))?;
    let floor = floor::FloorProcess::start(&answer)?;
    let mut joule = Joule::start(mock.addr, WORKERS, joule_variant(StoreMode::Off))?;
    let mut joule_sqlite = Joule::start(mock.addr, WORKERS, joule_variant(StoreMode::Default))?;
    let paths = [
        Endpoint::new("direct", mock.addr, None),
        Endpoint::new("nginx", nginx.addr, Some(nginx.child.id())),
        Endpoint::new("joule", joule.addr, Some(joule.child.id())),
        Endpoint::new("joule+sqlite", joule_sqlite.addr, Some(joule_sqlite.child.id())),
        Endpoint::new("nginx static", nginx.static_addr, Some(nginx.child.id())),
        Endpoint::new("pingora floor", floor.addr, Some(floor.child.id())),
    ];
    let (c1, c64, streams) = if options.quick {
        (200, 1_280, 160)
    } else {
        (5_000, 40_000, 4_000)
    };
    let scenario = Scenario::new;
    let scenarios = [
        (scenario("non-stream, c=1", Mode::Complete, 1, c1, 10), paths.len()),
        (scenario("non-stream, c=64", Mode::Complete, 64, c64, 64 * 8), paths.len()),
        (scenario("16-token stream, c=16", Mode::WholeStream, 16, streams, 16 * 4), PROXIES),
    ];
    let results = runtime.block_on(async {
        for path in &paths[..PROXIES] {
            sanity_check(path)
                .await
                .with_context(|| format!("sanity check of the {} path", path.name))?;
        }
        for path in &paths[PROXIES..] {
            let got = answer_of(path).await.with_context(|| format!("sanity check of the {} path", path.name))?;
            if got != answer {
                bail!("the {} path answered {} bytes, not the mock's {}", path.name, got.len(), answer.len());
            }
        }
        let mut results = Vec::new();
        for (s, n) in &scenarios {
            eprintln!("bench: {} — {} requests per path…", s.label, s.requests);
            results.push(run_scenario(s, &paths[..*n]).await);
        }
        anyhow::Ok(results)
    });
    joule.check_alive()?;
    joule_sqlite.check_alive()?;
    let results = results?;
    let scenarios: Vec<Scenario> = scenarios.into_iter().map(|(s, _)| s).collect();
    Ok(render_fast(options, machine, &paths, &scenarios, &results))
}

/// The body of one non-stream answer on `path` (which must be 200).
async fn answer_of(path: &Endpoint) -> Result<Vec<u8>> {
    let mut conn = Conn::open(path.addr).await?;
    conn.send(path.request(Mode::Complete)).await?;
    let head = conn.read_head().await?;
    let body = conn.read_body(head.body).await?;
    if head.status != 200 {
        bail!("HTTP {}: {}", head.status, String::from_utf8_lossy(&body));
    }
    Ok(body)
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
         store), log level warn. Floors, non-stream only: nginx static (the same nginx \
         answering the mock's answer itself) and pingora floor (pingora's HTTP/1 server session \
         answering it, {WORKERS} threads, nothing else). Client: hand-rolled HTTP/1.1, one \
         keep-alive connection per in-flight request; paths interleaved batch by batch. Times \
         in ms; CPU = the path's process tree, µs per request.\n"
    );
    let _ = write!(out, "| scenario | requests/path |");
    for p in paths {
        let _ = write!(out, " {0} p50 | {0} p99 | {0} req/s | {0} CPU µs |", p.name);
    }
    let _ = writeln!(out, " errors |");
    let _ = writeln!(out, "|---|--:|{}---|", "--:|".repeat(paths.len() * 4));
    for (s, samples) in scenarios.iter().zip(results) {
        let _ = write!(out, "| {} | {} |", s.label, s.requests);
        for i in 0..paths.len() {
            let Some(x) = samples.get(i) else {
                let _ = write!(out, " — | — | — | — |");
                continue;
            };
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
    let cpu = |path| at(1, path).cpu_per_request();
    let p50 = |scenario, path| percentile(&at(scenario, path).sorted(), 0.5).map(|d| d.as_secs_f64() * 1e3);
    let added = |path| Some(p50(0, path)? - p50(0, DIRECT)?);
    let ratio = |n: Option<f64>, j: Option<f64>| match (n, j) {
        (Some(n), Some(j)) if n > 0.0 => format!("{:.2}×", j / n),
        _ => "n/a".to_owned(),
    };
    let show = |v: Option<f64>, decimals: usize| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"));
    let signed = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:+.3}"));
    let _ = writeln!(out, "\n| figure | nginx | joule | joule ÷ nginx | target |");
    let _ = writeln!(out, "|---|--:|--:|--:|---|");
    let whole = |v| show(v, 0);
    let rps = |path| at(1, path).throughput();
    let stream = |path| at(2, path).cpu_per_request();
    let figures: [(&str, Option<f64>, Option<f64>, &dyn Fn(Option<f64>) -> String, &str); 4] = [
        ("CPU per non-stream request at saturation (c=64), µs", cpu(NGINX), cpu(JOULE), &whole, "≤ 1.8×"),
        ("requests/s at c=64", rps(NGINX), rps(JOULE), &whole, ""),
        ("added p50 at c=1, ms", added(NGINX), added(JOULE), &signed, "≤ 1.5×"),
        ("CPU per 16-token stream (c=16), µs", stream(NGINX), stream(JOULE), &whole, "≤ 2×"),
    ];
    for (figure, n, j, shown, target) in figures {
        let _ = writeln!(out, "| {figure} | {} | {} | {} | {target} |", shown(n), shown(j), ratio(n, j));
    }
    let store = cpu(JOULE_SQLITE).zip(cpu(JOULE)).map(|(with, without)| with - without);
    let _ = writeln!(
        out,
        "| SQLite store's CPU per request at c=64 (joule+sqlite − joule), µs | | {} | | ≤ 15 µs |",
        store.map_or_else(|| "n/a".to_owned(), |v| format!("{v:+.0}"))
    );

    // The floors: what answering costs before any proxying, and what the CPU target leaves.
    let _ = writeln!(out, "\n| non-stream, no proxying | nginx static | pingora floor | floor ÷ nginx static | floor ÷ nginx (proxying) |");
    let _ = writeln!(out, "|---|--:|--:|--:|--:|");
    let p50_1 = |path| p50(0, path);
    let figures: [(&str, &dyn Fn(usize) -> Option<f64>, usize); 2] =
        [("CPU per request at c=64, µs", &cpu, 0), ("p50 at c=1, ms", &p50_1, 3)];
    for (figure, of, decimals) in figures {
        let _ = writeln!(
            out,
            "| {figure} | {} | {} | {} | {} |",
            show(of(NGINX_STATIC), decimals),
            show(of(FLOOR), decimals),
            ratio(of(NGINX_STATIC), of(FLOOR)),
            ratio(of(NGINX), of(FLOOR))
        );
    }
    if let (Some(n), Some(st), Some(f), Some(j)) = (cpu(NGINX), cpu(NGINX_STATIC), cpu(FLOOR), cpu(JOULE)) {
        let _ = writeln!(
            out,
            "\nAt c=64, 1.8 × nginx's {n:.0} µs leaves {:.0} µs per request above the pingora floor \
             for the upstream exchange and all of joule's work; joule spends {:.0} µs there, and \
             nginx's own upstream exchange costs {:.0} µs (nginx − nginx static).",
            1.8 * n - f,
            j - f,
            n - st
        );
    }
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
        let nginx = Nginx::start(nginx_bin, mock.addr, None)?;
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

/// nginx as a reverse proxy in front of `upstream` and, given an answer, a second server
/// answering every request with it itself. Killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    /// The static server's address (`addr` when there is none).
    static_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(binary: &PathBuf, upstream: SocketAddr, answer: Option<&[u8]>) -> Result<Self> {
        let dir = tempfile::tempdir().context("creating nginx's directory")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
        let root = dir.path().display().to_string();
        let (static_addr, static_server) = match answer {
            Some(answer) => {
                let at = SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
                (at, static_server(at, answer)?)
            }
            None => (addr, String::new()),
        };
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
{static_server}}}
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
        let mut nginx = Nginx { child, addr, static_addr, _dir: dir };
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

/// An nginx `server` block answering every request (POST too) with `answer`, as JSON.
fn static_server(addr: SocketAddr, answer: &[u8]) -> Result<String> {
    let text = std::str::from_utf8(answer).context("the answer is not UTF-8")?;
    // `return`'s text interpolates `$variables`; nginx has no escape for `$`.
    if text.contains('$') {
        bail!("the answer contains `$`, which nginx's `return` would read as a variable");
    }
    let quoted = text.replace('\\', "\\\\").replace('\'', "\\'");
    Ok(format!(
        "    server {{\n        listen {addr} backlog=4096;\n        location / {{\n            \
         default_type application/json;\n            return 200 '{quoted}';\n        }}\n    }}\n"
    ))
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

// ---------------------------------------------------------------------------------------------
// The pingora floor

mod floor {
    //! pingora's HTTP/1 server session with no work behind it: every request is read whole and
    //! answered with a fixed body. Runs in a child process, this binary started with [`FLAG`].

    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use async_trait::async_trait;
    use bytes::Bytes;
    use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
    use pingora::http::ResponseHeader;
    use pingora::protocols::http::ServerSession;
    use pingora::server::configuration::ServerConf;
    use pingora::server::{Server, ShutdownWatch};
    use pingora::services::listening::Service;

    use super::{harness, WORKERS};

    /// `--floor-server ADDR BODY`: serve the floor on ADDR until killed.
    pub const FLAG: &str = "--floor-server";

    struct Floor {
        body: Bytes,
    }

    #[async_trait]
    impl HttpServerApp for Floor {
        async fn process_new_http(self: &Arc<Self>, mut session: ServerSession, _shutdown: &ShutdownWatch) -> Option<ReusedHttpStream> {
            if !matches!(session.read_request().await, Ok(true)) {
                return None;
            }
            while let Ok(Some(_)) = session.read_request_body().await {}
            let mut head = ResponseHeader::build(200, Some(2)).ok()?;
            head.insert_header("content-type", "application/json").ok()?;
            head.insert_header("content-length", self.body.len()).ok()?;
            session.write_response_header(Box::new(head)).await.ok()?;
            session.write_response_body(self.body.clone(), true).await.ok()?;
            let settings = HttpPersistentSettings::for_session(&session);
            session.finish().await.ok().flatten().map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
        }
    }

    /// The child's side: never returns while serving.
    pub fn serve(mut args: impl Iterator<Item = String>) -> Result<()> {
        let addr = args.next().context("--floor-server needs an address")?;
        let body = args.next().context("--floor-server needs a body")?;
        let mut server = Server::new_with_opt_and_conf(None, ServerConf { threads: WORKERS, ..ServerConf::default() });
        server.bootstrap();
        let mut service = Service::new("floor".into(), Floor { body: Bytes::from(body) });
        service.add_tcp(&addr);
        server.add_service(service);
        server.run_forever()
    }

    /// The floor's process, killed on drop.
    pub struct FloorProcess {
        pub child: Child,
        pub addr: SocketAddr,
    }

    impl FloorProcess {
        pub fn start(body: &[u8]) -> Result<Self> {
            let body = std::str::from_utf8(body).context("the answer is not UTF-8")?;
            let addr = SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
            let child = Command::new(std::env::current_exe().context("finding the bench binary")?)
                .args([FLAG, &addr.to_string(), body])
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting the pingora floor")?;
            let mut floor = FloorProcess { child, addr };
            let deadline = Instant::now() + harness::STARTUP_TIMEOUT;
            loop {
                if let Some(status) = floor.child.try_wait().context("checking on the floor")? {
                    bail!("the pingora floor exited ({status})");
                }
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(floor);
                }
                if Instant::now() > deadline {
                    bail!("the pingora floor did not listen on {addr}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for FloorProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
