//! The batch evaluation on small synthetic traces, and the batch spec.

use super::*;
use super::super::forecast::ForecastSettings;
use crate::pricing::energy::EnergyPrice;


const T0: i64 = 1_688_256_000;
const H: i64 = 3600;

/// Two sites, PUE 1, base price 0, 3.6 kW and 1000 decode tokens/s: a request of 1000 output
/// tokens costs P × 1e-6 $ at P $/MWh.
fn catalog() -> Catalog {
    crate::config::parse(crate::routing::evaluate::tests::CONFIG, std::path::Path::new("."), &|_| None).unwrap_or_else(|e| panic!("{e}")).catalog
}

/// Hourly rows for `days` days; `price(node, hour)` gives each price.
fn trace(days: i64, price: impl Fn(&str, i64) -> f64) -> Vec<EnergyRow> {
    let mut rows = Vec::new();
    for h in 0..24 * days {
        for node in ["X/A", "X/B"] {
            let p = EnergyPrice { usd_per_mwh: price(node, h), interval_start: T0 + H * h, interval_minutes: 60 };
            rows.push(EnergyRow::real_time(node, p));
        }
    }
    rows
}

/// The same day every day: A cheap around 03:00, B around 15:00.
fn daily(node: &str, h: i64) -> f64 {
    let hour = (h % 24) as f64;
    let phase = if node == "X/A" { 3.0 } else { 15.0 };
    50.0 - 30.0 * (std::f64::consts::TAU * (hour - phase) / 24.0).cos()
}

fn setup(batches: &str) -> Setup {
    Setup {
        model: None,
        batches: batches.parse().unwrap(),
        schedule: ScheduleSettings { slot_s: H, ..ScheduleSettings::default() },
        feed_delay: 0,
    }
}

fn run(rows: &[EnergyRow], batches: &str) -> Evaluation {
    evaluate(&catalog(), &EnergySettings::default(), rows, 0, &setup(batches)).unwrap_or_else(|e| panic!("{e}"))
}

fn energy(e: &Evaluation, plan: &str) -> f64 {
    e.outcome(plan).unwrap_or_else(|| panic!("no {plan} in {:?}", e.outcomes)).energy
}

#[test]
fn every_plan_meets_every_deadline_and_the_oracle_bounds_joule() {
    // Four days of a daily shape with seeded noise, 12-hour windows, capacity that binds
    // (0.5 requests/s per site: 1800 per hour, batches of up to 4000).
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let noise: Vec<f64> = (0..2 * 24 * 4).map(|_| rng.gen_range(-15.0..15.0)).collect();
    let rows = trace(4, |n, h| daily(n, h) + noise[(2 * h + i64::from(n == "X/B")) as usize]);
    let e = run(&rows, "count=12,size=1000..4000,window=12h,capacity=0.5,mix=0:1000,seed=5");
    assert_eq!(e.batches, 12);
    let sub = energy(&e, AT_SUBMISSION);
    let oracle = energy(&e, ORACLE);
    for o in &e.outcomes {
        assert_eq!(o.deadlines_met, 12, "{}:\n{}", o.plan, e.table());
        assert!((o.requests - e.requests).abs() < 1e-6, "{} ran every request", o.plan);
        assert!(o.energy >= oracle - 1e-9, "{} below the oracle:\n{}", o.plan, e.table());
        assert!(o.energy <= sub + 1e-9, "{} above running at submission:\n{}", o.plan, e.table());
    }
    // Running at submission waits for nothing; the planners do.
    assert!(e.outcome(AT_SUBMISSION).unwrap().mean_delay_hours < 1.0);
    let joule = e.outcome(JOULE).unwrap();
    assert!(joule.share_of_oracle_savings.unwrap() > 0.5, "{}", e.table());
    assert!(e.table().contains("| run at submission |"), "{}", e.table());
}

#[test]
fn a_repeating_day_is_forecast_exactly() {
    // From the second day on the hourly profile is the truth, so the forecast from history
    // plans exactly as perfect foresight does.
    let rows = trace(4, daily);
    let e = run(&rows, "count=10,size=100..2000,window=24h,capacity=1,mix=0:1000");
    assert!(e.forecast_error.iter().all(|f| f.mae < 1e-9), "{:?}", e.forecast_error);
    // The last price is wrong 1 and 6 hours ahead, right a whole day ahead.
    let last: Vec<bool> = e.forecast_error.iter().map(|f| f.mae_last_price > 1.0).collect();
    assert_eq!(last, vec![true, true, false]);
    assert!((energy(&e, JOULE) - energy(&e, JOULE_FORESIGHT)).abs() < 1e-9, "{}", e.table());
    assert!((energy(&e, JOULE_PERFECT_DAY_AHEAD) - energy(&e, JOULE_FORESIGHT)).abs() < 1e-9, "{}", e.table());
}

#[test]
fn joule_never_sees_a_price_before_it_is_known() {
    // A repeating day, except that on day 3 site A is at −200 $/MWh from 10:00 to 14:00.
    // Perfect foresight waits for it; the forecast from history cannot know.
    let rows = trace(4, |n, h| if n == "X/A" && (58..62).contains(&h) { -200.0 } else { daily(n, h) });
    let e = run(&rows, "count=6,size=500,window=24h,capacity=1,mix=0:1000,arrivals=even,start=1d");
    let (history, foresight) = (energy(&e, JOULE), energy(&e, JOULE_FORESIGHT));
    assert!(foresight < history - 1e-6, "{}", e.table());
    assert!(energy(&e, ORACLE) <= foresight + 1e-9);
}

#[test]
fn day_ahead_rows_of_the_trace_feed_the_forecast() {
    // The trace's own day-ahead rows are the truth: the first joule line then plans like the
    // perfect day-ahead line (they are published at the same times).
    let mut rows = trace(4, |n, h| if n == "X/A" && (58..62).contains(&h) { -200.0 } else { daily(n, h) });
    let ahead: Vec<EnergyRow> = rows.iter().map(|r| EnergyRow { market: Market::DayAhead, ..r.clone() }).collect();
    rows.extend(ahead);
    let e = run(&rows, "count=6,size=500,window=24h,capacity=1,mix=0:1000,arrivals=even,start=1d");
    assert_eq!(e.day_ahead_rows, 2 * 24 * 4);
    let joule = e.outcomes[1].clone();
    assert_eq!(joule.plan, "joule, day-ahead + history forecast");
    assert!((joule.energy - energy(&e, JOULE_PERFECT_DAY_AHEAD)).abs() < 1e-9, "{}", e.table());
    // The day-ahead rows never became real-time prices: running at submission is unchanged.
    let plain = run(&rows[..2 * 24 * 4], "count=6,size=500,window=24h,capacity=1,mix=0:1000,arrivals=even,start=1d");
    assert!((energy(&e, AT_SUBMISSION) - energy(&plain, AT_SUBMISSION)).abs() < 1e-12);
}

#[test]
fn a_trace_too_short_for_the_window_is_refused() {
    let rows = trace(1, daily);
    let err = evaluate(&catalog(), &EnergySettings::default(), &rows, 0, &setup("window=24h")).unwrap_err();
    assert!(matches!(err, EvalError::TooShort { .. }), "{err}");
    assert!(err.to_string().contains("warm-up (1d)"), "{err}");
    let mut s = setup("");
    s.schedule.margin_share = 1.5;
    assert!(matches!(evaluate(&catalog(), &EnergySettings::default(), &rows, 0, &s), Err(EvalError::Margin)));
}

#[test]
fn batch_spec() {
    assert_eq!("".parse::<BatchSpec>().unwrap(), BatchSpec::default());
    let s: BatchSpec = "count=3, size=10..20, window=6h, mix=100:10, arrivals=even, capacity=2.5, start=2d, seed=9".parse().unwrap();
    assert_eq!((s.count, s.size, s.window_s, s.arrivals, s.capacity, s.start_s, s.seed), (3, (10, 20), 6 * H, Arrivals::Even, 2.5, 2 * 86_400, 9));
    assert_eq!("size=7".parse::<BatchSpec>().unwrap().size, (7, 7));
    for (bad, needle) in [
        ("count=0", "count must be at least 1"),
        ("count=x", "count = `x`"),
        ("size=0..5", "1 <= LO <= HI"),
        ("size=9..5", "1 <= LO <= HI"),
        ("size=a..5", "size = `a`"),
        ("window=1y", "window = `1y`"),
        ("window=0", "longer than 0"),
        ("mix=1", "input:output"),
        ("arrivals=burst", "poisson or even"),
        ("capacity=0", "more than 0"),
        ("capacity=-1", "capacity = `-1`"),
        ("seed=-1", "seed = `-1`"),
        ("rate=3", "unknown key `rate`"),
        ("count", "not key=value"),
    ] {
        let e = bad.parse::<BatchSpec>().unwrap_err().to_string();
        assert!(e.starts_with("--batches: ") && e.contains(needle), "{bad}: {e}");
    }
}

#[test]
fn batches_are_generated_by_seed() {
    let spec: BatchSpec = "count=50,size=10..20,window=6h,mix=100:10:1+300:30:3,seed=4".parse().unwrap();
    let a = spec.generate(T0, T0 + 86_400);
    assert_eq!(a, spec.generate(T0, T0 + 86_400), "same seed, same batches");
    assert_ne!(a, BatchSpec { seed: 5, ..spec.clone() }.generate(T0, T0 + 86_400));
    assert_eq!(a.len(), 50);
    assert!(a.windows(2).all(|w| w[0].arrival <= w[1].arrival));
    assert!(a.iter().all(|b| (T0..=T0 + 86_400).contains(&b.arrival) && b.deadline == b.arrival + 6 * H));
    assert!(a.iter().all(|b| (10.0..=20.0).contains(&b.requests) && b.requests.fract() == 0.0));
    // Both classes are drawn, the heavier one more often.
    let heavy = a.iter().filter(|b| b.input_tokens == 300.0).count();
    assert!(heavy > 25 && heavy < 50, "{heavy}");
    let even = BatchSpec { arrivals: Arrivals::Even, count: 4, ..spec }.generate(T0, T0 + 4 * H);
    let at: Vec<i64> = even.iter().map(|b| b.arrival).collect();
    assert_eq!(at, vec![T0, T0 + H, T0 + 2 * H, T0 + 3 * H]);
}

/// The forecast variants compared on the shared trace (`../shared/data/energy`, or
/// `JOULE_ENERGY_TRACE_DIR`) with `config/evaluate.toml` and the default batches, for 24-hour
/// and 6-hour windows: the share of the oracle's energy savings of the joule line and the
/// forecast's error. Slow in a debug build (about 30 s a variant); run with
/// `cargo test --lib forecast_variants -- --ignored --nocapture`. The module docs of
/// `batch::forecast` and the README report its output.
#[test]
#[ignore]
fn forecast_variants_on_the_shared_trace() {
    let Some((cfg, files)) = crate::routing::evaluate::tests::shared_trace() else { return };
    let nodes = cfg.catalog.data_centers.iter().filter_map(|d| d.price_node.clone()).collect();
    let sources: Vec<ReplaySource> = files.into_iter().map(ReplaySource::File).collect();
    let trace = Trace::load(&sources, &nodes).unwrap();
    let variants = [
        ("last price only", "days=0"),
        ("profile only, 1-hour buckets", "decay=0,bucket=1h"),
        ("profile only", "decay=0"),
        ("profile only, mean", "decay=0,stat=mean"),
        ("profile only, 1 day", "decay=0,days=1"),
        ("profile only, 3 days", "decay=0,days=3"),
        ("profile only, 14 days", "decay=0,days=14"),
        ("deviation, decay 1 h", "decay=1h"),
        ("deviation, decay 3 h (default)", ""),
        ("deviation, decay 6 h", "decay=6h"),
        ("deviation, decay 12 h", "decay=12h"),
        ("default, mean", "stat=mean"),
        ("default, 3 days", "days=3"),
        ("default, 1-hour buckets", "bucket=1h"),
        ("level blend, decay 3 h", "blend=level"),
    ];
    for window in ["24h", "6h"] {
        let setup = Setup {
            model: None,
            batches: format!("window={window}").parse().unwrap(),
            schedule: ScheduleSettings::default(),
            feed_delay: 300,
        };
        let mut p = prepare(&cfg.catalog, &cfg.energy, trace.rows(), &setup).unwrap();
        let base = at_submission(&p.world, &p.rt, &cfg.energy).0.energy;
        let best = hindsight(&p.world).energy;
        println!("\nwindow {window}: at submission {base:.2} $, oracle {best:.2} $ of energy\n");
        println!("default forecast: {}\n", ForecastSettings::default().describe());
        println!("| forecast | `--forecast` | energy $ | share of oracle savings | MAE 1 h / 6 h / 24 h $/MWh |");
        println!("|---|---|---:|---:|---|");
        for (name, spec) in variants {
            p.world.schedule.forecast = spec.parse().unwrap();
            let run = joule(&p.world, &p.from_trace);
            assert_eq!(run.met, p.world.batches.len(), "{name}");
            let err = forecast_error(&p.world, &p.from_trace, p.to);
            let mae: Vec<String> = err.iter().map(|e| format!("{:.1}", e.mae)).collect();
            let share = share(base, run.energy, best).unwrap_or(f64::NAN);
            println!("| {name} | `{spec}` | {:.2} | {:.1} % | {} |", run.energy, 100.0 * share, mae.join(" / "));
            if spec.is_empty() && window == "24h" {
                assert!(share > 0.8, "the issue's target: 80 % of the oracle's savings with 24-hour windows");
            }
        }
    }
}
