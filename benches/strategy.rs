//! Strategy decision cost: the native ranking vs one Wasm strategy vs a three-tag Wasm
//! combination, for 4, 16 and 64 candidates, in the same run; plus one Wasm call with warm
//! per-thread instances vs a fresh instance per call (the measurement behind
//! `InstanceMode`'s default, see src/routing/wasm/host.rs).
//!
//! Each iteration is a whole decision as the gateway makes it: `routing::wasm::rank` (plugin
//! calls, validation, combination, ranking), including handing it a fresh candidate list (the
//! gateway builds one per request) and dropping the decision afterwards. `decision/clone_only`
//! measures that list's clone and drop alone, so it can be told apart. (Batched setup, where
//! thousands of decisions stay alive until the batch ends, measured page faults rather than
//! the decision.)
//! The plugins are built from plugins/ at the start of the run (wasm32-unknown-unknown +
//! componentise, as `joule plugin build` does).
//!
//! Targets (reported, never asserted): one strategy on 16 candidates under 3 µs, three tags
//! under 10 µs. Run: `cargo bench --bench strategy`.

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use joule::catalog::{Quote, TokenPrice};
use joule::routing::tags::StrategySet;
use joule::cli::toolchain::{build, BuildRequest};
use joule::routing::wasm::{rank, Host, HostConfig, InstanceMode, PluginRegistry};
use joule::routing::Candidate;

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| {
            let f = i as f64;
            let p = TokenPrice { input: 0.05 + (f * 0.37) % 2.0, output: 0.1 + (f * 0.71) % 4.0 };
            Candidate {
                deployment: i,
                quote: Quote { price: p, cost: p, ..Quote::default() },
                ttft_ms: 80.0 + (f * 53.0) % 400.0,
                tokens_per_s: 20.0 + (f * 31.0) % 180.0,
                latency_ms: 900.0 + (f * 97.0) % 3000.0,
                in_flight: (i as u32 * 7) % 11,
                health: 1.0 - (f * 0.13) % 0.5,
                error_rate: (f * 0.13) % 0.5,
                breaker: joule::telemetry::BreakerState::Closed,
                energy_price: (i % 4 != 3).then_some(15.0 + (f * 23.0) % 120.0),
                data_center: (i % 4 != 3).then_some((i % 5) as u32),
            }
        })
        .collect()
}

fn registry(dir: &Path, mode: InstanceMode) -> Arc<PluginRegistry> {
    let host = Host::new(HostConfig { instances: mode, ..HostConfig::default() }).expect("engine");
    let reg = PluginRegistry::new(host, Some(dir.to_path_buf()), None);
    reg.scan();
    assert_eq!(reg.current().tags(), vec!["latency", "price", "tokenrate"], "built-ins loaded");
    reg
}

fn benches(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-plugins");
    let req = BuildRequest {
        manifest_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins"),
        packages: vec!["price".into(), "latency".into(), "tokenrate".into()],
        out_dir: dir.clone(),
        locked: true,
        quiet: true,
    };
    build(&req).expect("building the built-in plugins");
    let warm = registry(&dir, InstanceMode::WarmPerThread);
    let fresh = registry(&dir, InstanceMode::FreshPerCall);
    let none = PluginRegistry::new(Host::new(HostConfig::default()).expect("engine"), None, None);
    let one = StrategySet::parse_list("price").unwrap();
    let three = StrategySet::parse_list("latency@price@tokenrate").unwrap();

    let mut g = c.benchmark_group("decision");
    for n in [4usize, 16, 64] {
        let cands = candidates(n);
        g.bench_with_input(BenchmarkId::new("clone_only", n), &n, |b, _| b.iter(|| std::hint::black_box(cands.clone())));
        let cases: [(&str, &Arc<PluginRegistry>, &StrategySet); 4] =
            [("native_one", &none, &one), ("native_three", &none, &three), ("wasm_one", &warm, &one), ("wasm_three", &warm, &three)];
        for (name, reg, tags) in cases {
            let set = reg.current();
            let d = rank(&set, tags, cands.clone(), 0, 1, None);
            assert!(d.fallback.is_none() && d.ranked.len() == n, "{name}: {:?}", d.fallback);
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| rank(&set, tags, cands.clone(), 0, 1, None))
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("instance_mode");
    let cands = candidates(16);
    for (name, reg) in [("warm_per_thread", &warm), ("fresh_per_call", &fresh)] {
        let set = reg.current();
        g.bench_function(BenchmarkId::new(name, 16), |b| {
            b.iter(|| rank(&set, &one, cands.clone(), 0, 1, None))
        });
    }
    g.finish();
}

criterion_group! {
    name = strategy;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(50);
    targets = benches
}
criterion_main!(strategy);
