//! The Wasm strategy host against real components built from plugins/ during the test run:
//! conformance checks, the sandbox (misbehaving guests fall back to the native ranking and are
//! counted, repeated faults disable), load-time rejection, hot swap under concurrent decisions,
//! the directory watcher, rollback, order-independence of tags, explain and replay.

mod guests;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use joule::catalog::{Quote, TokenPrice};
use joule::cli::plugin_check::{check, CheckOptions};
use joule::metrics::{Metrics, StrategyMetrics};
use joule::routing::tags::{parse_model, StrategySet};
use joule::routing::wasm::explain::{self, DecisionInput, DecisionOutput, LoggedDecision};
use joule::routing::wasm::{rank, FaultKind, FileOutcome, Host, HostConfig, LoadError, PluginRegistry, RegistryError};
use joule::routing::{rank_native, Candidate, Engine, Fallback, RouteDecision};
use proptest::prelude::*;

/// A host with a generous call deadline: these tests run beside each other (and beside
/// spinning guests) on a small machine, and a preempted call must not count as a timeout.
/// The sandbox test sets its own, shorter deadline.
fn host(disable_after: u32) -> Arc<Host> {
    host_with(disable_after, Duration::from_secs(2))
}

fn host_with(disable_after: u32, call_timeout: Duration) -> Arc<Host> {
    Host::new(HostConfig { disable_after, call_timeout, ..HostConfig::default() }).expect("engine")
}

fn metrics() -> StrategyMetrics {
    Metrics::new().expect("metrics").strategy
}

fn registry(disable_after: u32) -> (Arc<PluginRegistry>, StrategyMetrics) {
    let m = metrics();
    (PluginRegistry::new(host(disable_after), None, Some(m.clone())), m)
}

fn cand(i: usize, price: f64, ttft: f64, tps: f64, in_flight: u32, health: f64, energy: Option<f64>) -> Candidate {
    let p = TokenPrice { input: price, output: price * 2.0 };
    Candidate {
        deployment: i,
        quote: Quote { price: p, cost: p, ..Quote::default() },
        ttft_ms: ttft,
        tokens_per_s: tps,
        latency_ms: ttft * 10.0,
        in_flight,
        health,
        error_rate: (1.0 - health).clamp(0.0, 1.0),
        breaker: joule::telemetry::BreakerState::Closed,
        energy_price: energy,
        data_center: energy.map(|_| i as u32),
    }
}

fn sample() -> Vec<Candidate> {
    vec![
        cand(0, 3.0, 100.0, 50.0, 0, 1.0, Some(95.0)),
        cand(1, 1.0, 300.0, 20.0, 2, 1.0, Some(40.0)),
        cand(2, 2.0, 150.0, 90.0, 0, 0.9, Some(60.0)),
        cand(3, 2.5, 120.0, 10.0, 6, 1.0, None),
    ]
}

fn set(tags: &str) -> StrategySet {
    StrategySet::parse_list(tags).unwrap()
}

fn order(d: &RouteDecision) -> Vec<usize> {
    d.ranked.iter().map(|(c, _)| c.deployment).collect()
}

fn wasm_version(d: &RouteDecision, tag: &str) -> Option<String> {
    d.runs.iter().find(|r| &*r.tag == tag).and_then(|r| match &r.engine {
        Engine::Wasm { version, .. } => Some(version.to_string()),
        Engine::Native => None,
    })
}

// ------------------------------------------------------------------ plugin check

#[test]
fn builtins_and_example_pass_plugin_check() {
    for p in ["price", "latency", "tokenrate", "green"] {
        let report = check(&guests::bytes(p), &CheckOptions::default());
        assert!(report.passed(), "{p}:\n{}", report.render());
        assert_eq!(&*report.info.unwrap().tag, p);
    }
}

#[test]
fn bad_guests_fail_plugin_check_with_the_right_finding() {
    let failing = |p: &str| -> Vec<(&'static str, String)> {
        let r = check(&guests::bytes(p), &CheckOptions::default());
        assert!(!r.passed(), "{p} passed:\n{}", r.render());
        r.items.into_iter().filter(|i| !i.ok).map(|i| (i.name, i.detail)).collect()
    };
    let has = |f: &[(&str, String)], name: &str, needle: &str| f.iter().any(|(n, d)| *n == name && d.contains(needle));
    let f = failing("spin");
    assert!(has(&f, "budget", "fuel"), "{f:?}");
    let f = failing("panics");
    assert!(has(&f, "scores", "trap"), "{f:?}");
    let f = failing("membomb");
    assert!(has(&f, "scores", "memory"), "{f:?}");
    let f = failing("wrongcount");
    assert!(has(&f, "scores", "wrong_count"), "{f:?}");
    let f = failing("nan");
    assert!(has(&f, "scores", "non_finite"), "{f:?}");
    let f = failing("stateful");
    assert!(has(&f, "deterministic", "different answer"), "{f:?}");
    let f = failing("clock");
    assert!(has(&f, "contract", "imports `now`"), "{f:?}");
    let f = failing("mismatch");
    assert!(has(&f, "contract", "does not match the world"), "{f:?}");
}

#[test]
fn plugin_check_cli_exit_status_and_report() {
    let run = |p: &str| Command::new(env!("CARGO_BIN_EXE_joule")).args(["plugin", "check"]).arg(guests::dir().join(format!("{p}.wasm"))).output().unwrap();
    let ok = run("latency");
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}");
    assert!(out.contains("strategy @latency") && out.contains("[ok] deterministic") && out.trim_end().ends_with("PASS"), "{out}");
    let bad = run("nan");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(out.contains("[FAIL] scores") && out.contains("non_finite"), "{out}");
}

// ------------------------------------------------------------------ sandbox

#[test]
fn misbehaving_guests_fall_back_to_native_and_are_counted() {
    let m = metrics();
    let reg = PluginRegistry::new(host_with(100, Duration::from_millis(250)), None, Some(m.clone()));
    for (guest, kind) in [
        ("spin", FaultKind::Timeout),
        ("panics", FaultKind::Trap),
        ("membomb", FaultKind::Memory),
        ("wrongcount", FaultKind::WrongCount),
        ("nan", FaultKind::NonFinite),
    ] {
        reg.upload(&guests::bytes(guest)).unwrap_or_else(|e| panic!("{guest}: {e}"));
        let tag = match guest {
            "spin" => "loop",
            "panics" => "panic",
            other => other,
        };
        for round in 1..=2u64 {
            let started = Instant::now();
            let d = rank(&reg.current(), &set(&format!("{tag}@latency")), sample(), 1_000, round, Some(&m));
            // Still answered, by the native ranking of the built-in tags requested.
            assert_eq!(d.fallback, Some(Fallback::Fault { tag: tag.into(), kind }), "{guest}");
            assert_eq!(order(&d), order(&rank_native(sample(), &set("latency"))), "{guest}");
            assert!(d.runs.iter().all(|r| r.engine == Engine::Native));
            assert!(d.strategy_header().contains(&format!("fallback: {tag} faulted ({})", kind.label())), "{}", d.strategy_header());
            assert!(started.elapsed() < Duration::from_secs(5), "{guest} was not stopped");
            let p = reg.current().get(tag).unwrap().clone();
            assert_eq!(p.faults(kind), round, "{guest}");
            assert_eq!(m.faults.with_label_values(&[tag, kind.label()]).get(), round);
            assert_eq!(m.fallbacks.with_label_values(&[tag, "fault"]).get(), round);
        }
    }
    // The host is unharmed: a good plugin still runs after all that.
    reg.upload(&guests::bytes("price")).unwrap();
    let d = rank(&reg.current(), &set("price"), sample(), 1_000, 1, Some(&m));
    assert_eq!(d.fallback, None);
    assert_eq!(wasm_version(&d, "price").as_deref(), Some("1.0.0"));
    assert_eq!(order(&d), vec![1, 2, 3, 0]);
    assert_eq!(m.call_duration.with_label_values(&["price"]).get_sample_count(), 1);
}

#[test]
fn repeated_faults_disable_until_a_new_version_replaces_it() {
    let (reg, m) = registry(3);
    reg.upload(&guests::bytes("nan")).unwrap();
    for _ in 0..3 {
        let d = rank(&reg.current(), &set("nan"), sample(), 0, 0, Some(&m));
        assert!(matches!(d.fallback, Some(Fallback::Fault { .. })));
    }
    let p = reg.current().get("nan").unwrap().clone();
    assert!(p.disabled());
    for _ in 0..5 {
        let d = rank(&reg.current(), &set("nan"), sample(), 0, 0, Some(&m));
        assert_eq!(d.fallback, Some(Fallback::Disabled { tag: "nan".into() }));
        // Operator-only set: native falls back to price.
        assert_eq!(order(&d), order(&rank_native(sample(), &set("price"))));
    }
    assert_eq!(p.calls(), 3, "a disabled plugin is not called");
    assert_eq!(m.fallbacks.with_label_values(&["nan", "disabled"]).get(), 5);
    assert!(reg.list().iter().any(|s| s.tag == "nan" && s.disabled && s.faults.get("non_finite") == Some(&3)));
    // A new version (same guest, version string changed) is enabled again and is called.
    reg.upload(&guests::patched(&guests::bytes("nan"), "0.0.1", "0.0.2")).unwrap();
    let d = rank(&reg.current(), &set("nan"), sample(), 0, 0, Some(&m));
    assert_eq!(d.fallback, Some(Fallback::Fault { tag: "nan".into(), kind: FaultKind::NonFinite }));
    let p2 = reg.current().get("nan").unwrap().clone();
    assert_eq!((&*p2.info.version, p2.calls(), p2.disabled()), ("0.0.2", 1, false));
}

#[test]
fn bad_components_are_rejected_at_load_and_the_old_version_stays() {
    let (reg, _) = registry(5);
    let v1 = reg.upload(&guests::price_version(1)).unwrap();
    let err = |b: &[u8]| match reg.upload(b) {
        Err(RegistryError::Load(e)) => e,
        other => panic!("expected a load error, got {other:?}"),
    };
    let e = err(&guests::bytes("mismatch"));
    assert!(matches!(e, LoadError::World(_)), "{e}");
    assert!(e.to_string().contains("does not match the world joule:strategy/strategy@0.2.0"), "{e}");
    let e = err(&guests::bytes("clock"));
    assert!(matches!(e, LoadError::Imports(_)) && e.to_string().contains("`now`"), "{e}");
    assert_eq!(err(b"\0asm\x01\0\0\0"), LoadError::CoreModule);
    assert!(matches!(err(b"not wasm at all"), LoadError::Invalid(_)));
    let now = reg.current();
    assert_eq!(now.tags(), vec!["price"]);
    assert_eq!(*now.get("price").unwrap().sha256, *v1.sha256);

    // The same through the directory: a bad file in place of a good one keeps the good one.
    let dir = tempfile::tempdir().unwrap();
    let reg = PluginRegistry::new(host(5), Some(dir.path().to_path_buf()), None);
    std::fs::write(dir.path().join("price.wasm"), guests::price_version(7)).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let r = reg.scan();
    assert!(matches!(&r.files["price.wasm"], FileOutcome::Loaded { version, .. } if version == "1.0.0-swap.000007"), "{r:?}");
    std::fs::write(dir.path().join("price.wasm"), guests::bytes("mismatch")).unwrap();
    let r = reg.scan();
    assert!(matches!(&r.files["price.wasm"], FileOutcome::Rejected { message } if message.contains("does not match the world")), "{r:?}");
    assert_eq!(&*reg.current().get("price").unwrap().info.version, "1.0.0-swap.000007");
    assert!(reg.rejected()["price.wasm"].contains("does not match"));
    // Unchanged bad content is not reloaded; a second file claiming the tag is refused.
    assert!(reg.scan().is_quiet());
    std::fs::write(dir.path().join("zz-price.wasm"), guests::price_version(8)).unwrap();
    let r = reg.scan();
    assert!(matches!(&r.files["zz-price.wasm"], FileOutcome::Rejected { message } if message.contains("already served by price.wasm")), "{r:?}");
}

// ------------------------------------------------------------------ swap, watch, rollback

#[test]
fn hot_swap_fifty_times_under_concurrent_decisions() {
    let (reg, m) = registry(5);
    reg.upload(&guests::price_version(0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (decisions, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (reg, stop, decisions, failed, m) = (reg.clone(), stop.clone(), decisions.clone(), failed.clone(), m.clone());
            std::thread::spawn(move || {
                let mut last_seen = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let set = reg.current();
                    let d = rank(&set, &StrategySet::parse_list("price@latency").unwrap(), sample(), 5, w, Some(&m));
                    decisions.fetch_add(1, Ordering::Relaxed);
                    let version = wasm_version(&d, "price");
                    // Versions only move forward for a thread, and every decision ran the plugin.
                    let n = version.as_deref().and_then(|v| v.strip_prefix("1.0.0-swap.")).and_then(|n| n.parse::<u32>().ok());
                    match n {
                        Some(n) if d.fallback.is_none() && n >= last_seen && order(&d) == vec![2, 0, 1, 3] => last_seen = n,
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for n in 1..=50 {
        reg.upload(&guests::price_version(n)).unwrap();
        let d = rank(&reg.current(), &set("price"), sample(), 5, 0, Some(&m));
        assert_eq!(wasm_version(&d, "price"), Some(format!("1.0.0-swap.{n:06}")));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let total = decisions.load(Ordering::Relaxed);
    assert!(total > 50, "only {total} decisions ran during the swaps");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed decisions out of {total}");
    assert_eq!(m.loaded.with_label_values(&["price", "1.0.0-swap.000050", &reg.list()[0].sha256[..12]]).get(), 1);
}

#[test]
fn in_flight_decision_keeps_the_set_it_started_with() {
    let (reg, _) = registry(5);
    reg.upload(&guests::price_version(1)).unwrap();
    let started_with = reg.current();
    reg.upload(&guests::price_version(2)).unwrap();
    let d = rank(&started_with, &set("price"), sample(), 0, 0, None);
    assert_eq!(wasm_version(&d, "price").as_deref(), Some("1.0.0-swap.000001"));
    let d = rank(&reg.current(), &set("price"), sample(), 0, 0, None);
    assert_eq!(wasm_version(&d, "price").as_deref(), Some("1.0.0-swap.000002"));
}

#[test]
fn rollback_restores_the_previous_version_and_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let reg = PluginRegistry::new(host(5), Some(dir.path().to_path_buf()), None);
    let v1 = reg.upload(&guests::price_version(1)).unwrap();
    assert_eq!(v1.file.as_deref(), Some("price.wasm"));
    reg.upload(&guests::price_version(2)).unwrap();
    let back = reg.rollback("price").unwrap();
    assert_eq!((back.version.as_str(), back.sha256.as_str()), ("1.0.0-swap.000001", v1.sha256.as_str()));
    assert_eq!(std::fs::read(dir.path().join("price.wasm")).unwrap(), guests::price_version(1));
    assert!(reg.scan().is_quiet(), "the file already matches what is loaded");
    assert!(matches!(reg.rollback("price"), Err(RegistryError::NoHistory(_))));
    assert!(matches!(reg.rollback("latency"), Err(RegistryError::NoHistory(_))));
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn watcher_handles_rename_in_place_writes_bad_files_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let reg = PluginRegistry::new(host(5), Some(dir.path().to_path_buf()), None);
    reg.scan();
    let _w = joule::routing::wasm::watch(&reg, Duration::from_millis(50)).unwrap();
    let version = |reg: &PluginRegistry| reg.current().get("price").map(|p| p.info.version.to_string());
    // Written elsewhere, renamed in.
    let tmp = dir.path().join(".incoming.tmp");
    std::fs::write(&tmp, guests::price_version(1)).unwrap();
    std::fs::rename(&tmp, dir.path().join("price.wasm")).unwrap();
    wait_for("renamed-in file loaded", || version(&reg).as_deref() == Some("1.0.0-swap.000001"));
    // An editor-style in-place save of a new version (truncate, then write in pieces).
    {
        use std::io::Write;
        let bytes = guests::price_version(2);
        let mut f = std::fs::File::create(dir.path().join("price.wasm")).unwrap();
        for chunk in bytes.chunks(4096) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
        }
    }
    wait_for("in-place save loaded", || version(&reg).as_deref() == Some("1.0.0-swap.000002"));
    // A broken file: rejected, the loaded version stays.
    std::fs::write(dir.path().join("price.wasm"), b"garbage").unwrap();
    wait_for("garbage rejected", || reg.rejected().contains_key("price.wasm"));
    assert_eq!(version(&reg).as_deref(), Some("1.0.0-swap.000002"));
    // Another plugin appears, then is deleted.
    std::fs::write(dir.path().join("green.wasm"), guests::bytes("green")).unwrap();
    wait_for("green loaded", || reg.current().get("green").is_some());
    std::fs::remove_file(dir.path().join("green.wasm")).unwrap();
    wait_for("green removed", || reg.current().get("green").is_none());
    assert_eq!(version(&reg).as_deref(), Some("1.0.0-swap.000002"));
}

// ------------------------------------------------------------------ combination

fn loaded_builtins() -> Arc<PluginRegistry> {
    let (reg, _) = registry(5);
    for p in ["price", "latency", "tokenrate", "green"] {
        reg.upload(&guests::bytes(p)).unwrap();
    }
    reg
}

#[test]
fn operator_strategy_excludes_and_explain_shows_scores() {
    let reg = loaded_builtins();
    let d = rank(&reg.current(), &set("green@price"), sample(), 0, 0, None);
    assert_eq!(d.fallback, None);
    // green keeps only data centers under $80/MWh: 1 (40) and 2 (60).
    assert_eq!(order(&d), vec![1, 2]);
    assert_eq!(d.excluded.iter().map(|c| c.deployment).collect::<Vec<_>>(), vec![0, 3]);
    assert_eq!(d.strategy_header(), "green@1.0.0+price@1.0.0");
    let model = joule::catalog::Model {
        id: "m".into(),
        category: joule::catalog::Category::Hosted,
        owned_by: "o".into(),
        created: 0,
        ttft_timeout: None,
        deployments: Vec::new(),
    };
    let v: serde_json::Value = serde_json::from_str(&explain::explain_json(&d, &model)).unwrap();
    assert_eq!(v["strategy"], "green@1.0.0+price@1.0.0");
    assert_eq!(v["ranked"][0]["scores"]["green"], 40.0);
    assert_eq!(v["ranked"][0]["scores"]["price"], 3.0);
    assert_eq!(v["ranked"][1]["scores"]["green"], 60.0);
    assert_eq!(v["excluded"].as_array().unwrap().len(), 2);
}

fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec(
        (0.0f64..20.0, 1.0f64..2000.0, 1.0f64..400.0, 0u32..20, 0.0f64..=1.0, prop::option::of(-50.0f64..300.0)),
        1..12,
    )
    .prop_map(|v| v.into_iter().enumerate().map(|(i, (p, t, r, f, h, e))| cand(i, p, t, r, f, h, e)).collect())
}

fn arb_tags() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(vec!["price", "latency", "tokenrate", "green"]), 1..6).prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Through the Wasm path: every permutation of the same tags (repeats included) gives the
    /// same ranking, and for built-in tags the plugins rank exactly like the native fallback.
    #[test]
    fn every_permutation_of_tags_ranks_the_same(cands in arb_candidates(), tags in arb_tags(), seed in any::<u64>()) {
        let reg = REGISTRY.with(|r| r.clone());
        let current = reg.current();
        let base = format!("m@{}", tags.join("@"));
        let (_, canonical) = parse_model(&base).unwrap();
        let canonical = canonical.unwrap();
        let reference = rank(&current, &canonical, cands.clone(), 7, seed, None);
        prop_assert_eq!(&reference.fallback, &None);
        // Every distinct order of the tags (at most 5 tags: at most 120 orders).
        let mut orders = BTreeSet::new();
        permutations(&tags, &mut Vec::new(), &mut vec![false; tags.len()], &mut orders);
        for perm in orders {
            let (_, s) = parse_model(&format!("m@{}", perm.join("@"))).unwrap();
            let d = rank(&current, &s.unwrap(), cands.clone(), 7, seed, None);
            prop_assert_eq!(order(&d), order(&reference));
            prop_assert_eq!(d.strategy_header(), reference.strategy_header());
        }
        if !tags.contains(&"green") {
            let native = rank_native(cands.clone(), &canonical);
            prop_assert_eq!(order(&native), order(&reference));
            for (a, b) in native.ranked.iter().zip(&reference.ranked) {
                prop_assert!((a.1 - b.1).abs() < 1e-12);
            }
        }
    }
}

fn permutations(tags: &[&'static str], cur: &mut Vec<&'static str>, used: &mut Vec<bool>, out: &mut BTreeSet<Vec<&'static str>>) {
    if cur.len() == tags.len() {
        out.insert(cur.clone());
        return;
    }
    for i in 0..tags.len() {
        if !used[i] {
            used[i] = true;
            cur.push(tags[i]);
            permutations(tags, cur, used, out);
            cur.pop();
            used[i] = false;
        }
    }
}

thread_local! {
    static REGISTRY: Arc<PluginRegistry> = loaded_builtins();
}

// ------------------------------------------------------------------ explain and replay

#[test]
fn logged_decisions_replay_to_the_same_ranking() {
    let plugins = tempfile::tempdir().unwrap();
    for p in ["price", "latency", "tokenrate", "green", "nan"] {
        std::fs::copy(guests::dir().join(format!("{p}.wasm")), plugins.path().join(format!("{p}.wasm"))).unwrap();
    }
    let reg = PluginRegistry::new(host(1000), Some(plugins.path().to_path_buf()), None);
    reg.scan();
    let model = joule::catalog::Model {
        id: "llama".into(),
        category: joule::catalog::Category::Hosted,
        owned_by: "o".into(),
        created: 0,
        ttft_timeout: None,
        deployments: Vec::new(),
    };
    let logdir = tempfile::tempdir().unwrap();
    let path = logdir.path().join("decisions.jsonl");
    let log = explain::DecisionLog::open(&path, None).unwrap();
    let cases = ["price", "latency@tokenrate", "green@latency@price", "nan@price", "tokenrate"];
    for (i, tags) in cases.iter().enumerate() {
        let s = set(tags);
        let cands = sample();
        let input = DecisionInput::capture(&model, &s, &cands, 1_700_000_000_000 + i as u64, 99 + i as u64, &reg.current());
        let d = rank(&reg.current(), &s, cands, input.now_ms, input.seed, None);
        log.record(LoggedDecision { input, output: DecisionOutput::capture(&d, Some(&model)) });
    }
    drop(log);
    wait_for("5 lines logged", || std::fs::read_to_string(&path).is_ok_and(|s| s.lines().count() == 5));
    let text = std::fs::read_to_string(&path).unwrap();
    let replayed = explain::replay(text.as_bytes(), &reg.current()).unwrap();
    assert_eq!(replayed.len(), 5);
    for r in &replayed {
        assert!(r.same_ranking(), "{:?} vs {:?}", r.logged.output, r.replayed);
        assert!(r.version_mismatches.is_empty());
    }
    assert!(replayed[3].logged.output.fallback.as_deref().is_some_and(|f| f.contains("nan faulted")));
    let first: LoggedDecision = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first.input.plugins[0].tag, "price");
    assert_eq!(first.input.candidates.len(), 4);

    // The CLI, with the same plugins directory.
    let out = Command::new(env!("CARGO_BIN_EXE_joule")).args(["strategy", "replay"]).arg(&path).arg("--plugins").arg(plugins.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("same ranking").count(), 5, "{stdout}");
    assert!(stdout.contains("5 decision(s) replayed, all rankings identical"), "{stdout}");

    // A tampered log (a different logged ranking) is reported and fails.
    let mut tampered: LoggedDecision = first.clone();
    tampered.output.ranked.reverse();
    let bad = logdir.path().join("tampered.jsonl");
    std::fs::write(&bad, serde_json::to_string(&tampered).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_joule")).args(["strategy", "replay"]).arg(&bad).arg("--plugins").arg(plugins.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DIFFERENT ranking"));
}
