//! The evaluation on a fixture small enough to compute by hand, plus the load spec.

use super::*;
use crate::pricing::energy::EnergyPrice;

/// Two sites, PUE 1, base price 0, 3.6 kW and 1000 decode tokens/s: a request of 1000 output
/// tokens costs P × 1e-6 $ at P $/MWh. One request per second, one-hour steps: 3600 requests
/// per step, so an hour at P $/MWh costs 0.0036 × P $.
pub(crate) const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:1"]
[[data_centers]]
id = "a"
price_node = "X/A"
pue = 1.0
[[data_centers]]
id = "b"
price_node = "X/B"
pue = 1.0
[[models]]
id = "m"
category = "hosted"
[[models.deployments]]
id = "m-a"
data_center = "a"
url = "http://127.0.0.1:9/v1"
base_price_input = 0
base_price_output = 0
gpu = { node_kw = 3.6, prefill_tokens_per_s = 10000, decode_tokens_per_s = 1000 }
[[models.deployments]]
id = "m-b"
data_center = "b"
url = "http://127.0.0.1:9/v1"
base_price_input = 0
base_price_output = 0
gpu = { node_kw = 3.6, prefill_tokens_per_s = 10000, decode_tokens_per_s = 1000 }
"#;

const T0: i64 = 1_688_256_000;
// Hourly prices: A 10, 50, 30, 80; B 40, 20, 60, 20.
const A: [f64; 4] = [10.0, 50.0, 30.0, 80.0];
const B: [f64; 4] = [40.0, 20.0, 60.0, 20.0];

fn fixture() -> (Catalog, Vec<EnergyRow>) {
    let catalog = crate::config::parse(CONFIG, std::path::Path::new("."), &|_| None).unwrap_or_else(|e| panic!("{e}")).catalog;
    let mut rows = Vec::new();
    for h in 0..4 {
        for (node, v) in [("X/A", A[h]), ("X/B", B[h])] {
            let price = EnergyPrice { usd_per_mwh: v, interval_start: T0 + 3600 * h as i64, interval_minutes: 60 };
            rows.push(EnergyRow::real_time(node, price));
        }
    }
    (catalog, rows)
}

fn run(delay: i64, load: &str) -> Evaluation {
    let (catalog, rows) = fixture();
    let setup = Setup { model: None, load: load.parse().unwrap(), feed_delay: delay, step: 3600 };
    evaluate(&catalog, &EnergySettings::default(), &rows, 0, &setup).unwrap()
}

fn cost(e: &Evaluation, name: &str) -> f64 {
    e.outcome(name).unwrap_or_else(|| panic!("no {name} in {:?}", e.outcomes)).cost
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn hand_computed_without_capacity() {
    let e = run(0, "rate=1,shape=flat,mix=0:1000");
    assert_eq!((e.steps, e.requests), (4, 14_400.0));
    assert!(close(cost(&e, "static a"), 0.0036 * 170.0));
    assert!(close(cost(&e, "static b"), 0.0036 * 140.0));
    assert!(close(cost(&e, "round robin"), 0.0036 * 155.0));
    // Cheapest each hour: 10 + 20 + 30 + 20.
    assert!(close(cost(&e, "oracle"), 0.0036 * 80.0));
    assert!(close(cost(&e, "joule price (delay 0)"), 0.0036 * 80.0));
    assert_eq!(e.best_static, "b");
    let j = e.outcome("joule price (delay 0)").unwrap();
    assert!(close(j.savings_vs_best_static, 60.0 / 140.0));
    assert!(close(j.share_of_oracle_savings.unwrap(), 1.0));
    assert!(close(j.energy, j.cost), "base 0: all energy");
    assert_eq!(e.stale_decisions, 0);
    assert!(e.table().contains("| oracle | 0.29 |"), "{}", e.table());
}

#[test]
fn hand_computed_with_a_one_hour_feed_delay() {
    let e = run(3600, "rate=1,shape=flat,mix=0:1000");
    // Hour 0: nothing known, both at the stale fallback → tie → catalog order (a, 10).
    // Hour 1 knows hour 0 (a 10 < b 40) → a (50). Hour 2 knows a 50, b 20 → b (60).
    // Hour 3 knows a 30, b 60 → a (80). 200 in all: worse than staying in b.
    let j = e.outcome("joule price (delay 1h)").unwrap();
    assert!(close(j.cost, 0.0036 * 200.0));
    assert!(close(j.savings_vs_best_static, -60.0 / 140.0));
    assert!(close(j.share_of_oracle_savings.unwrap(), -1.0));
    assert_eq!(e.stale_decisions, 1);
}

#[test]
fn hand_computed_with_capacity() {
    // 0.6 req/s per site: the cheaper site takes 60 %, the other 40 %.
    let e = run(0, "rate=1,shape=flat,mix=0:1000,capacity=0.6");
    // Oracle: .6 cheap + .4 other = 22 + 32 + 42 + 44.
    assert!(close(cost(&e, "oracle"), 0.0036 * 140.0));
    assert!(close(cost(&e, "joule price (delay 0)"), 0.0036 * 140.0));
    // Static a fills a first: 22 + 38 + 42 + 56; static b: 28 + 32 + 48 + 44.
    assert!(close(cost(&e, "static a"), 0.0036 * 158.0));
    assert!(close(cost(&e, "static b"), 0.0036 * 152.0));
    assert!(close(cost(&e, "round robin"), 0.0036 * 155.0));
    let j = e.outcome("joule price (delay 0)").unwrap();
    assert!(close(j.savings_vs_best_static, 12.0 / 152.0));
    assert!(close(j.share_of_oracle_savings.unwrap(), 1.0));
}

#[test]
fn load_spec() {
    let d: LoadSpec = "".parse().unwrap();
    assert_eq!(d, LoadSpec::default());
    let s: LoadSpec = "rate=3, shape=diurnal, amplitude=0.5, peak=18, mix=100:10:3+500:50:1, capacity=2".parse().unwrap();
    assert_eq!((s.rate, s.capacity, s.peak_hour), (3.0, Some(2.0), 18.0));
    assert_eq!(s.mean_tokens(), (200.0, 20.0));
    // Diurnal: peak at 18:00 UTC, trough at 06:00, mean over the day = rate.
    assert!(close(s.rate_at(T0 + 18 * 3600), 4.5));
    assert!(close(s.rate_at(T0 + 6 * 3600), 1.5));
    let mean: f64 = (0..1440).map(|m| s.rate_at(T0 + 60 * m)).sum::<f64>() / 1440.0;
    assert!(close(mean, 3.0));
    for bad in ["rate", "rate=-1", "shape=square", "amplitude=2", "mix=1", "mix=1:2:0", "burst=3", "rate=NaN"] {
        assert!(bad.parse::<LoadSpec>().is_err(), "{bad}");
    }
}

#[test]
fn fill_and_even_split() {
    let mut out = vec![0.0; 3];
    fill(&[2, 0, 1], 10.0, Some(4.0), &mut out);
    assert_eq!(out, vec![4.0, 2.0, 4.0]);
    fill(&[1, 0, 2], 20.0, Some(4.0), &mut out);
    assert_eq!(out, vec![4.0, 4.0 + 8.0, 4.0], "overflow beyond every site goes to the first");
    even(3, 9.0, None, &mut out);
    assert_eq!(out, vec![3.0, 3.0, 3.0]);
    even(3, 9.0, Some(2.0), &mut out);
    assert_eq!(out, vec![5.0, 2.0, 2.0]);
}

/// The full July 2023 trace's CSV files, when present next to the repository
/// (`../shared/data/energy`, or `JOULE_ENERGY_TRACE_DIR`), and `config/evaluate.toml`.
pub(crate) fn shared_trace() -> Option<(crate::config::Settings, Vec<std::path::PathBuf>)> {
    let dir = std::env::var("JOULE_ENERGY_TRACE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/energy"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: no energy trace at {}", dir.display());
        return None;
    };
    let files: Vec<std::path::PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "csv")).collect();
    let cfg = crate::config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/evaluate.toml")).unwrap();
    Some((cfg, files))
}

/// The full trace on `config/evaluate.toml`: the figures the README reports.
#[test]
fn full_trace_figures_when_available() {
    let Some((cfg, files)) = shared_trace() else { return };
    let share = |delay: i64, load: &str| {
        let setup = Setup { model: None, load: load.parse().unwrap(), feed_delay: delay, step: 60 };
        let e = evaluate_files(&cfg.catalog, &cfg.energy, &files, &setup).unwrap();
        assert_eq!(e.rejected_rows, 0);
        let j = e.outcomes.iter().find(|o| o.strategy.starts_with("joule")).unwrap();
        for o in e.outcomes.iter().filter(|o| o.strategy.starts_with("static") || o.strategy == "round robin") {
            assert!(j.cost < o.cost, "joule beats {}:\n{}", o.strategy, e.table());
        }
        j.share_of_oracle_savings.unwrap()
    };
    // Measured: 99.5 % with no delay, 92.4 % with 5 minutes (the issue's target is 95 %).
    assert!(share(0, "") > 0.99);
    assert!(share(300, "") > 0.92);
    assert!(share(300, "capacity=1.5") > 0.9);
}
