//! Unit tests of the formula, the price book and the engine (stale rule, ingest, history).

use std::path::Path;
use std::sync::Arc;

use crate::clock::ManualClock;
use super::energy::{EnergyPrice, EnergyRow, ParsedRow};
use super::*;

/// Sites: `west` (CAISO/SP-15, PUE 1.25), `chicago` (PJM/Chicago Hub, PUE 1.0), `plain` (no
/// price node). GPU: 3.6 kW, 10 000 prefill and 1 000 decode tokens/s, so in `west` the energy
/// part is P/8000 $/Mtok input and P/800 output for P $/MWh; in `chicago` P/10000 and P/1000.
pub(crate) const CATALOG: &str = r#"
[server]
listen = ["127.0.0.1:1"]
[[data_centers]]
id = "west"
price_node = "CAISO/SP-15"
pue = 1.25
[[data_centers]]
id = "chicago"
price_node = "PJM/Chicago Hub"
pue = 1.0
[[data_centers]]
id = "plain"
[[providers]]
id = "prov"
base_url = "https://provider.example/v1"
[[models]]
id = "m"
category = "hosted"
[[models.deployments]]
id = "m-west"
data_center = "west"
url = "http://127.0.0.1:9/v1"
base_price_input = 0.1
base_price_output = 0.2
gpu = { node_kw = 3.6, prefill_tokens_per_s = 10000, decode_tokens_per_s = 1000 }
[[models.deployments]]
id = "m-chicago"
data_center = "chicago"
url = "http://127.0.0.1:9/v1"
base_price_input = 0.1
base_price_output = 0.2
floor_price_input = 0.05
floor_price_output = 0.1
gpu = { node_kw = 3.6, prefill_tokens_per_s = 10000, decode_tokens_per_s = 1000 }
[[models.deployments]]
id = "m-plain"
data_center = "plain"
url = "http://127.0.0.1:9/v1"
base_price_input = 0.3
base_price_output = 0.3
[[models.deployments]]
id = "m-prov"
provider = "prov"
list_price_input = 1.0
list_price_output = 2.0
[[models]]
id = "f"
category = "free"
[[models.deployments]]
id = "f-west"
data_center = "west"
url = "http://127.0.0.1:9/v1"
base_price_input = 0.01
base_price_output = 0.02
gpu = { node_kw = 3.6, prefill_tokens_per_s = 10000, decode_tokens_per_s = 1000 }
"#;

pub(crate) fn two_site_catalog() -> Catalog {
    crate::config::parse(CATALOG, Path::new("."), &|_| None).unwrap_or_else(|e| panic!("{e}")).catalog
}

const T0: i64 = 1_688_256_000;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn row(node: &str, start: i64, minutes: u32, v: f64) -> ParsedRow {
    (1, Ok(EnergyRow::real_time(node, EnergyPrice { usd_per_mwh: v, interval_start: start, interval_minutes: minutes })))
}

#[test]
fn formula() {
    // DESIGN.md: ($/MWh ÷ 1000) × kW × PUE ÷ (3600 × tokens/s) × 1e6
    assert!(close(energy_per_mtok(40.0, 3.6, 1.25, 1000.0), 0.05));
    // A 10.2 kW node at PUE 1.2 and 3000 decode tokens/s, 50 $/MWh: 0.612 $/h over 10.8M tokens/h.
    assert!(close(energy_per_mtok(50.0, 10.2, 1.2, 3000.0), 0.612 / 10.8));
    let gpu = GpuProfile { node_kw: 3.6, prefill_tokens_per_s: 10_000.0, decode_tokens_per_s: 1000.0 };
    let base = TokenPrice { input: 0.1, output: 0.2 };
    let zero = TokenPrice::default();
    // Spike: ERCOT's 3 944 $/MWh.
    let e = energy_price(3944.0, &gpu, 1.25);
    assert!(close(e.input, 3944.0 / 8000.0) && close(e.output, 3944.0 / 800.0));
    let p = token_price(base, e, zero);
    assert!(close(p.output, 0.2 + 4.93));
    // Negative prices lower the price …
    let p = token_price(base, energy_price(-52.0, &gpu, 1.25), zero);
    assert!(close(p.input, 0.1 - 0.0065) && close(p.output, 0.2 - 0.065));
    // … down to the floor, never below.
    let deep = energy_price(-1000.0, &gpu, 1.25);
    assert_eq!(token_price(base, deep, zero), TokenPrice { input: 0.0, output: 0.0 });
    let floor = TokenPrice { input: 0.05, output: 0.1 };
    assert_eq!(token_price(base, deep, floor), floor);
}

#[test]
fn book_quotes_every_kind_of_deployment() {
    let c = two_site_catalog();
    let table = EnergyTable::default().with(&[
        EnergyRow::real_time("CAISO/SP-15", EnergyPrice { usd_per_mwh: 40.0, interval_start: T0, interval_minutes: 15 }),
        EnergyRow::real_time("PJM/Chicago Hub", EnergyPrice { usd_per_mwh: -200.0, interval_start: T0, interval_minutes: 5 }),
    ]);
    let book = PriceBook::build(&c, &table, 150.0, T0 + 60);
    let m = c.model("m").unwrap();
    let west = book.quote(&c, m, 0);
    assert!(close(west.price.input, 0.105) && close(west.price.output, 0.25));
    assert!(close(west.energy.input, 0.005) && close(west.energy.output, 0.05));
    assert!(!west.stale);
    // Chicago: −200 $/MWh → energy −0.02/−0.2 → 0.08 / 0.0, output floored at 0.1.
    let chi = book.quote(&c, m, 1);
    assert!(close(chi.price.input, 0.08) && close(chi.price.output, 0.1));
    assert!(close(chi.energy.input, -0.02) && close(chi.energy.output, -0.1), "energy part = price − base");
    // No price node: base only.
    let plain = book.quote(&c, m, 2);
    assert_eq!((plain.price, plain.energy, plain.stale), (TokenPrice { input: 0.3, output: 0.3 }, TokenPrice::default(), false));
    // Provider: list + 5 %.
    let prov = book.quote(&c, m, 3);
    assert!(close(prov.price.input, 1.05) && close(prov.fee.output, 0.1));
    assert_eq!(book.best(&c, m).map(|(i, _)| i), Some(1));
    // Free: 0 to the client, cost with energy for routing.
    let f = c.model("f").unwrap();
    let fq = book.quote(&c, f, 0);
    assert_eq!(fq.price, TokenPrice::default());
    assert!(close(fq.cost.output, 0.02 + 0.05));
    assert_eq!(book.site(&c, 0).unwrap().usd_per_mwh, 40.0);
    assert!(book.site(&c, 2).is_none());
    // A book that does not know the model falls back to the catalog's base quote.
    assert_eq!(PriceBook::default().quote(&c, m, 0).price, TokenPrice { input: 0.1, output: 0.2 });
}

fn engine(clock: Arc<ManualClock>) -> Arc<Pricing> {
    Pricing::new(&two_site_catalog(), &EnergySettings::default(), clock, History::in_memory(7), None)
}

#[test]
fn stale_prices_are_flagged_and_priced_at_the_fallback() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = engine(clock.clone());
    let c = p.catalog().clone();
    let m = c.model("m").unwrap();
    // Before any price: the priced sites are at the 150 $/MWh fallback, flagged stale.
    let q = p.book().quote(&c, m, 0);
    assert!(q.stale && close(q.price.output, 0.2 + 150.0 / 800.0));
    p.ingest(Feed::Push, vec![row("CAISO/SP-15", T0, 5, 40.0), row("PJM/Chicago Hub", T0, 60, 30.0)]);
    let q = p.book().quote(&c, m, 0);
    assert!(!q.stale && close(q.price.output, 0.25));
    // 10 minutes on, the 5-minute price is still fresh; a second later it is stale.
    clock.set(T0 + 600);
    assert!(!p.refresh(), "nothing changed");
    clock.set(T0 + 601);
    assert!(p.refresh());
    let book = p.book();
    let q = book.quote(&c, m, 0);
    assert!(q.stale && close(q.price.output, 0.2 + 150.0 / 800.0));
    assert!(book.site(&c, 0).unwrap().stale && book.site(&c, 0).unwrap().held.unwrap().usd_per_mwh == 40.0);
    // The hourly Chicago price is fresh for two hours.
    assert!(!book.quote(&c, m, 1).stale);
    // A fresh row clears the flag.
    p.ingest(Feed::Push, vec![row("CAISO/SP-15", T0 + 600, 5, 20.0)]);
    let q = p.book().quote(&c, m, 0);
    assert!(!q.stale && close(q.price.output, 0.2 + 20.0 / 800.0));
    // History: the first ingest, the stale transition, the fresh row.
    let frames = p.history().frames();
    let west: Vec<(i64, bool)> = frames
        .iter()
        .map(|f| (f.t, f.points.iter().find(|x| &*x.deployment == "m-west").unwrap().stale))
        .collect();
    assert_eq!(west, vec![(T0, false), (T0 + 601, true), (T0 + 601, false)]);
}

#[test]
fn a_bad_batch_keeps_the_table_and_book() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = engine(clock);
    p.ingest(Feed::Poll, vec![row("CAISO/SP-15", T0, 5, 40.0)]);
    let before = p.book();
    let report = p.ingest(
        Feed::Poll,
        vec![row("CAISO/SP-15", T0, 5, f64::NAN), row("ERCOT/Nowhere", T0, 5, 1.0), row("CAISO/SP-15", T0 - 300, 5, 1.0)],
    );
    assert_eq!(report.accepted, 0);
    let kinds: Vec<&str> = report.rejected.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, vec!["non_finite", "unknown_location", "out_of_order"]);
    assert!(Arc::ptr_eq(&before, &p.book()), "book untouched");
    assert_eq!(p.table().get("CAISO/SP-15").unwrap().usd_per_mwh, 40.0);
}

#[test]
fn a_backlog_becomes_one_history_frame_per_interval() {
    let clock = Arc::new(ManualClock::new(T0 + 900));
    let p = engine(clock);
    let rows = (0..4).map(|k| row("CAISO/SP-15", T0 + k * 300, 5, 10.0 * k as f64)).collect();
    assert_eq!(p.ingest(Feed::Push, rows).accepted, 4);
    let frames = p.history().frames();
    let got: Vec<(i64, f64)> = frames
        .iter()
        .map(|f| (f.t, f.points.iter().find(|x| &*x.deployment == "m-west").unwrap().usd_per_mwh.unwrap()))
        .collect();
    // Until Chicago has a price it is at the fallback; West's own prices are as sent.
    assert_eq!(got, vec![(T0, 0.0), (T0 + 300, 10.0), (T0 + 600, 20.0), (T0 + 900, 30.0)]);
}

#[test]
fn a_late_backlog_ends_with_a_stale_frame() {
    // Prices from an hour ago arrive now: history shows them as they were, then stale.
    let clock = Arc::new(ManualClock::new(T0 + 3600));
    let p = engine(clock);
    p.ingest(Feed::Push, vec![row("CAISO/SP-15", T0, 5, 40.0), row("CAISO/SP-15", T0 + 300, 5, 50.0)]);
    let frames = p.history().frames();
    let west: Vec<(i64, bool, f64)> = frames
        .iter()
        .map(|f| {
            let x = f.points.iter().find(|x| &*x.deployment == "m-west").unwrap();
            (f.t, x.stale, x.usd_per_mwh.unwrap())
        })
        .collect();
    assert_eq!(west, vec![(T0, false, 40.0), (T0 + 300, false, 50.0), (T0 + 3600, true, 150.0)]);
    let c = p.catalog();
    assert!(p.book().quote(&c, c.model("m").unwrap(), 0).stale);
}

#[test]
fn day_ahead_rows_are_kept_apart_from_real_time_prices() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = engine(clock);
    p.ingest(Feed::Push, vec![row("CAISO/SP-15", T0, 5, 40.0)]);
    let before = p.book();
    let frames = p.history().frames().len();
    let da = |pos: usize, start: i64, v: f64| -> ParsedRow {
        let price = EnergyPrice { usd_per_mwh: v, interval_start: start, interval_minutes: 60 };
        (pos, Ok(EnergyRow { node: "CAISO/SP-15".into(), price, market: energy::Market::DayAhead }))
    };
    // A day-ahead price for the current interval, one for the next hour, one too far ahead,
    // and a real-time row in the same batch.
    let report = p.ingest(
        Feed::Push,
        vec![da(1, T0, 999.0), da(2, T0 + 3600, 10.0), da(3, T0 + 3 * 86_400, 1.0), row("CAISO/SP-15", T0 + 300, 5, 41.0)],
    );
    assert_eq!(report.accepted, 3);
    let kinds: Vec<(usize, &str)> = report.rejected.iter().map(|r| (r.row, r.kind)).collect();
    assert_eq!(kinds, vec![(3, "future")]);
    // The real-time price is the real-time row's, never the day-ahead 999.
    assert_eq!(p.table().get("CAISO/SP-15").unwrap().usd_per_mwh, 41.0);
    let c = p.catalog();
    assert!(close(p.book().quote(&c, c.model("m").unwrap(), 0).price.output, 0.2 + 41.0 / 800.0));
    assert!(!Arc::ptr_eq(&before, &p.book()));
    let ahead: Vec<(i64, f64)> = p.day_ahead("CAISO/SP-15").iter().map(|x| (x.interval_start, x.usd_per_mwh)).collect();
    assert_eq!(ahead, vec![(T0, 999.0), (T0 + 3600, 10.0)]);
    assert!(p.day_ahead("PJM/Chicago Hub").is_empty());
    // Day-ahead rows alone change neither the table, the book nor history.
    let book = p.book();
    assert_eq!(p.ingest(Feed::Push, vec![da(1, T0 + 7200, 12.0)]).accepted, 1);
    assert!(Arc::ptr_eq(&book, &p.book()));
    assert_eq!(p.history().frames().len(), frames + 1, "one frame, for the real-time row");
    assert_eq!(p.day_ahead_table().len(), 3);
}

#[test]
fn quote_at_is_the_book_formula_for_any_price() {
    let c = two_site_catalog();
    let m = c.model("m").unwrap();
    let table = EnergyTable::default()
        .with(&[EnergyRow::real_time("CAISO/SP-15", EnergyPrice { usd_per_mwh: 40.0, interval_start: T0, interval_minutes: 15 })]);
    let book = PriceBook::build(&c, &table, 150.0, T0);
    let q = quote_at(&c, m, &m.deployments[0], Some(40.0));
    assert_eq!(q, book.quote(&c, m, 0));
    // Floors apply; providers ignore the price; no price: base only.
    assert!(close(quote_at(&c, m, &m.deployments[1], Some(-1000.0)).price.output, 0.1));
    assert!(close(quote_at(&c, m, &m.deployments[3], Some(500.0)).price.input, 1.05));
    assert_eq!(quote_at(&c, m, &m.deployments[0], None).price, TokenPrice { input: 0.1, output: 0.2 });
}
