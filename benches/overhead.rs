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

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

mod harness;
use harness::{
    percentile, run_scenario, sanity_check, Endpoint, Joule, Machine, Mode,
    MockThread, Samples, Scenario, StoreMode, Variant,
};

/// Completion tokens the mock generates per request.
const TOKENS: u32 = 16;
/// Worker threads joule runs with, unless `JOULE_BENCH_THREADS` says otherwise.
const DEFAULT_JOULE_THREADS: usize = 1;
/// Added p50 at concurrency 1 that the gateway aims to stay under.
const TARGET_ADDED_P50: Duration = Duration::from_micros(500);

fn main() -> Result<()> {
    let plan = Plan::from_env()?;
    let comparison = Comparison::from_env()?;
    let machine = Machine::probe();

    let mock = MockThread::immediate(TOKENS)?;
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
    harness::publish(&report, comparison.report_file())
}

// ---------------------------------------------------------------------------------------------
// Plan and scenarios

/// How many requests each scenario sends per path.
struct Plan {
    quick: bool,
    joule_threads: usize,
    scenarios: Vec<Scenario>,
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
        let scenario = Scenario::new;
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
        let samples = run_scenario(&scenario, paths).await;
        let paths = samples
            .try_into()
            .map_err(|_| anyhow!("one result per path"))?;
        results.push(ScenarioResult { scenario, paths });
    }
    Ok(results)
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
    s.throughput().map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
}

/// CPU time per request of the path's process, in µs.
fn cpu_per_request(s: &Samples) -> String {
    s.cpu_per_request().map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
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
    machine.header(&mut out);
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
        let (f, s) = (first.sorted(), second.sorted());
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
