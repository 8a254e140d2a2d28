//! Cost of telemetry on the request path: what one request adds (admission, in-flight guard,
//! success + TTFT + completion records) and what building candidates from live numbers costs
//! compared with priors only (telemetry disabled), for 4 and 16 deployments.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use joule::config;
use joule::routing;
use joule::telemetry::{Telemetry, TelemetrySettings};

fn catalog(n: usize) -> joule::catalog::Catalog {
    let mut toml = String::new();
    for i in 0..n {
        toml += &format!("[[data_centers]]\nid = \"dc{i}\"\n");
    }
    toml += "[server]\nlisten = [\"127.0.0.1:1\"]\n[[models]]\nid = \"m\"\ncategory = \"hosted\"\n";
    for i in 0..n {
        toml += &format!(
            "[[models.deployments]]\nid = \"d{i}\"\ndata_center = \"dc{i}\"\nurl = \"http://127.0.0.1:1/v1\"\nbase_price_input = {}\nbase_price_output = 1.0\n",
            i as f64 * 0.1
        );
    }
    match config::parse(&toml, std::path::Path::new("."), &|_| None) {
        Ok(s) => s.catalog,
        Err(e) => panic!("bench config: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let settings = TelemetrySettings::default();
    let cat = catalog(4);
    let tel = Telemetry::new(&cat, settings.clone(), None);
    let Some(stats) = tel.get(0, 0).cloned() else { return };
    c.bench_function("telemetry/record_request", |b| {
        b.iter(|| {
            black_box(stats.admit());
            let guard = stats.begin();
            stats.record_success(&settings);
            stats.record_ttft(Duration::from_millis(42), &settings);
            stats.record_completion(Duration::from_millis(900), Some((99, Duration::from_millis(800))), &settings);
            drop(guard);
        })
    });
    for n in [4usize, 16] {
        let cat = catalog(n);
        let model = &cat.models[0];
        let book = joule::pricing::PriceBook::build(&cat, &joule::pricing::energy::EnergyTable::default(), 150.0, 0);
        let live = Telemetry::new(&cat, settings.clone(), None);
        let off = Telemetry::new(&cat, TelemetrySettings { enabled: false, ..settings.clone() }, None);
        c.bench_function(&format!("candidates/{n}/telemetry_on"), |b| {
            b.iter(|| black_box(routing::candidates(&cat, &book, model, 0, &live)))
        });
        c.bench_function(&format!("candidates/{n}/telemetry_off"), |b| {
            b.iter(|| black_box(routing::candidates(&cat, &book, model, 0, &off)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
