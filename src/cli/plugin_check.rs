//! `joule plugin check`: loads a component in a fuel-metered sandbox and checks that it keeps
//! the contract on a range of inputs — loads and matches the world with no imports, describes
//! itself validly, returns one finite score (or exclusion) per candidate, answers the same
//! twice for the same input (on the same instance and on a fresh one), and stays within the
//! fuel budget and time limit.

use std::fmt::Write as _;
use std::time::Duration;

use crate::catalog::{Quote, TokenPrice};
use crate::routing::wasm::plugin::sha256_hex;
use crate::routing::wasm::{CallOutcome, FaultKind, Host, HostConfig, Info, InstanceMode, PluginRegistry};
use crate::routing::Candidate;

/// Check settings.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Fuel per call. Default 50 million (far above what the built-ins need for 64 candidates).
    pub fuel: u64,
    /// Time limit per call. Default 100 ms (generous: fuel metering slows calls down).
    pub timeout: Duration,
    /// Memory cap. Default 16 MiB, the gateway's default.
    pub memory_limit: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { fuel: 50_000_000, timeout: Duration::from_millis(100), memory_limit: 16 << 20 }
    }
}

/// One named check.
#[derive(Debug, Clone)]
pub struct CheckItem {
    /// What was checked (`contract`, `describe`, `scores`, `deterministic`, `budget`, `note`).
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, for the operator.
    pub detail: String,
}

/// The result of `joule plugin check`.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Hex SHA-256 of the component bytes.
    pub sha256: String,
    /// What the component says about itself, once it loaded.
    pub info: Option<Info>,
    /// The checks, in the order they ran.
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        !self.items.is_empty() && self.items.iter().all(|i| i.ok)
    }

    /// A readable report, one line per check.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "sha256 {}", self.sha256);
        if let Some(i) = &self.info {
            let _ = writeln!(s, "strategy @{} — {} (version {})", i.tag, i.name, i.version);
        }
        for item in &self.items {
            let _ = writeln!(s, "  [{}] {}: {}", if item.ok { "ok" } else { "FAIL" }, item.name, item.detail);
        }
        let _ = writeln!(s, "{}", if self.passed() { "PASS" } else { "FAIL" });
        s
    }
}

/// A candidate: `load` is (requests in flight, health), `site` the energy price and data center.
fn cand(i: usize, price: f64, ttft: f64, tps: f64, load: (u32, f64), site: Option<(f64, u32)>) -> Candidate {
    let p = TokenPrice { input: price, output: price * 3.0 };
    Candidate {
        deployment: i,
        quote: Quote { price: p, cost: p, ..Quote::default() },
        ttft_ms: ttft,
        tokens_per_s: tps,
        latency_ms: ttft * 8.0,
        in_flight: load.0,
        health: load.1,
        error_rate: (1.0 - load.1).clamp(0.0, 1.0),
        breaker: crate::telemetry::BreakerState::Closed,
        energy_price: site.map(|s| s.0),
        data_center: site.map(|s| s.1),
    }
}

/// One input the checks run on.
struct Case {
    name: String,
    cands: Vec<Candidate>,
    now_ms: u64,
    seed: u64,
}

/// Inputs the checks run on: sizes 1 to 64 and edge values (zero prices, negative energy
/// prices, no energy price, zero health, heavy load, zero rates).
fn cases() -> Vec<Case> {
    let spread = |n: usize| -> Vec<Candidate> {
        (0..n)
            .map(|i| {
                let f = i as f64;
                let hosted = i % 4 != 3;
                cand(
                    i,
                    0.1 + (f * 0.37) % 2.0,
                    80.0 + (f * 53.0) % 400.0,
                    20.0 + (f * 31.0) % 180.0,
                    ((i as u32 * 7) % 11, 1.0 - (f * 0.13) % 0.5),
                    hosted.then_some((15.0 + (f * 23.0) % 120.0, (i % 5) as u32)),
                )
            })
            .collect()
    };
    let edge = vec![
        cand(0, 0.0, 0.0, 0.0, (0, 0.0), Some((-40.0, 0))),
        cand(1, 0.0, 1.0, 1e6, (10_000, 1.0), None),
        cand(2, 1e4, 1e6, 0.001, (0, 0.5), Some((9_999.0, 1))),
        cand(3, 1.0, 100.0, 100.0, (1, 1.0), Some((0.0, u32::MAX))),
    ];
    let mut out = Vec::new();
    for (i, n) in [1usize, 4, 16, 64].into_iter().enumerate() {
        out.push(Case { name: format!("{n} candidate(s)"), cands: spread(n), now_ms: 1_690_000_000_000 + i as u64 * 60_000, seed: 42 + i as u64 });
    }
    out.push(Case { name: "edge values".into(), cands: edge, now_ms: 0, seed: u64::MAX });
    out
}

/// Loads and checks a component.
pub fn check(bytes: &[u8], opts: &CheckOptions) -> CheckReport {
    let mut report = CheckReport { sha256: sha256_hex(bytes), info: None, items: Vec::new() };
    let config = HostConfig {
        call_timeout: opts.timeout,
        memory_limit: opts.memory_limit,
        disable_after: u32::MAX,
        fuel: Some(opts.fuel),
        instances: InstanceMode::WarmPerThread,
        max_instances: 16,
    };
    let host = match Host::new(config) {
        Ok(h) => h,
        Err(e) => {
            report.items.push(CheckItem { name: "engine", ok: false, detail: e.to_string() });
            return report;
        }
    };
    // A registry without a directory or metrics: loading goes through the gateway's own path.
    let plugin = match PluginRegistry::new(host.clone(), None, None).load(bytes, None) {
        Ok(p) => p,
        Err(e) => {
            report.items.push(CheckItem { name: "contract", ok: false, detail: e.to_string() });
            return report;
        }
    };
    let info = &plugin.info;
    report.items.push(CheckItem {
        name: "contract",
        ok: true,
        detail: "a component of the joule:strategy@0.2.0 world, no imports".into(),
    });
    report.items.push(CheckItem { name: "describe", ok: true, detail: format!("tag `{}`, version `{}`", info.tag, info.version) });
    report.info = Some(info.clone());
    let (mut scores_ok, mut det_ok, mut budget_ok) = (Vec::new(), Vec::new(), Vec::new());
    let mut problems = (Vec::new(), Vec::new(), Vec::new());
    let mut excluded_all = 0;
    let cases = cases();
    for Case { name, cands, now_ms, seed } in &cases {
        let first = host.score(&plugin, cands, *now_ms, *seed);
        let first = match first {
            CallOutcome::Scored(s) => s,
            CallOutcome::Fault(f) => {
                let msg = format!("{name}: {} ({})", f.kind.label(), f.detail);
                if matches!(f.kind, FaultKind::Fuel | FaultKind::Timeout) {
                    problems.2.push(msg);
                } else {
                    problems.0.push(msg);
                }
                continue;
            }
        };
        scores_ok.push(name);
        budget_ok.push(name);
        if first.iter().all(Option::is_none) {
            excluded_all += 1;
        }
        let again = host.score(&plugin, cands, *now_ms, *seed);
        let fresh = host.score_fresh(&plugin, cands, *now_ms, *seed);
        if again == CallOutcome::Scored(first.clone()) && fresh == CallOutcome::Scored(first) {
            det_ok.push(name);
        } else {
            problems.1.push(format!("{name}: a second call (same instance or a fresh one) gave a different answer"));
        }
    }
    let total = cases.len();
    let (p_scores, p_det, p_budget) = problems;
    let verdict = |bad: Vec<String>, good: String| if bad.is_empty() { (true, good) } else { (false, bad.join("; ")) };
    let (ok, detail) = verdict(p_scores, format!("one finite score or exclusion per candidate on {} input(s)", scores_ok.len()));
    report.items.push(CheckItem { name: "scores", ok, detail });
    let (ok, detail) = if scores_ok.is_empty() {
        (false, "not checked: no call succeeded".to_string())
    } else {
        verdict(p_det, format!("same output twice (same and a fresh instance) on {} input(s)", det_ok.len()))
    };
    report.items.push(CheckItem { name: "deterministic", ok, detail });
    let (ok, detail) = verdict(p_budget, format!("within {} fuel and {} ms per call on {} input(s)", opts.fuel, opts.timeout.as_millis(), budget_ok.len()));
    report.items.push(CheckItem { name: "budget", ok, detail });
    if excluded_all == total {
        report.items.push(CheckItem { name: "note", ok: true, detail: "excluded every candidate on every input".into() });
    }
    report
}
