//! One scheduling decision, as both the gateway's batch runner and the evaluation make it:
//! forecasts → per-request cost of each batch in each (slot, site) cell → [`plan::plan`].
//! Whoever calls it carries out only slot 0 (`JobPlan::now`) and calls again on the next tick.
//!
//! **Cell costs.** A batch's cost per request in a cell is `input_tokens × input $/Mtok +
//! output_tokens × output $/Mtok` of the site's deployment at the slot's start, by the pricing
//! engine's own formula ([`pricing::quote_at`]: base price, energy part with the data center's
//! PUE, floor; provider routes at list price plus fee, whatever the time). The $/MWh of a
//! hosted site with a price node:
//! - slot 0 (now): the last real-time price, under the engine's stale rule
//!   ([`site_energy`]: older than two intervals → `max(last, fallback)`) — the price a request
//!   sent now is charged;
//! - later slots: the node's forecast ([`NodeForecast::at`]);
//! - no price known for the node at all (no forecast, or one without any price): the stale
//!   fallback, [`ScheduleSettings::fallback_usd_per_mwh`] — as the engine prices such a site,
//!   so the plan never counts on a site it cannot see being cheap.
//!
//! **Margin.** A batch aims to be done `max(margin_share × window, one slot)` before its
//! deadline; if it cannot be, it is behind and runs now whatever the price (see [`plan`]).

use std::collections::HashMap;

use super::forecast::{ForecastSettings, NodeForecast};
use super::plan::{self, Grid, Job, JobPlan};
use crate::catalog::{Catalog, Model, TokenPrice};
use crate::pricing::{self, energy::site_energy};

/// How the scheduler plans. Validated from `[batch]` in the config.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSettings {
    /// Slot length, seconds of the pricing clock. Default 300.
    pub slot_s: i64,
    /// The safety margin kept before each deadline, as a share of the batch's window; the
    /// margin is at least one slot. Default 0.1.
    pub margin_share: f64,
    /// $/MWh assumed where a node has no price at all, and the floor of a stale slot-0 price
    /// (the engine's `stale_fallback_usd_per_mwh`; set it from `[energy]`). Default 150.
    pub fallback_usd_per_mwh: f64,
    pub forecast: ForecastSettings,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings { slot_s: 300, margin_share: 0.1, fallback_usd_per_mwh: 150.0, forecast: ForecastSettings::default() }
    }
}

/// A place a batch of the model can run: one of the model's deployments, with the batch
/// requests it can run per slot (slot 0 included: what can be started now).
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Index into `model.deployments`.
    pub deployment: usize,
    pub requests_per_slot: f64,
}

/// One batch's remaining work, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Requests not finished and not in flight.
    pub remaining: f64,
    /// Submission and deadline, pricing-clock seconds.
    pub created: i64,
    pub deadline: i64,
    /// Mean tokens per request.
    pub input_tokens: f64,
    pub output_tokens: f64,
}

/// The grid a decision at `now` plans over: slots from `now` to the latest deadline (at least
/// one), each site's capacity in every slot.
pub fn grid(settings: &ScheduleSettings, sites: &[Site], pending: &[Pending], now: i64) -> Grid {
    let slot = settings.slot_s.max(1);
    let horizon = pending.iter().map(|p| p.deadline).max().unwrap_or(now);
    let slots = (((horizon - now).max(0) + slot - 1) / slot).max(1) as usize;
    let per_site: Vec<f64> = sites.iter().map(|s| s.requests_per_slot).collect();
    Grid::uniform(now, slot, slots, &per_site)
}

/// Each cell's token price, $/Mtok (cost to us, as the `price` strategy ranks), slot-major
/// like [`Grid::capacity`] (module docs).
pub fn cell_prices(
    settings: &ScheduleSettings,
    catalog: &Catalog,
    model: &Model,
    sites: &[Site],
    forecast: &dyn Fn(&str) -> Option<NodeForecast>,
    grid: &Grid,
) -> Vec<TokenPrice> {
    let fallback = settings.fallback_usd_per_mwh;
    let mut forecasts: HashMap<&str, Option<NodeForecast>> = HashMap::new();
    // Per site: the forecast of its price node (none for provider routes and unpriced sites).
    let per_site: Vec<Option<Option<&NodeForecast>>> = {
        for s in sites {
            if let Some(node) = node_of(catalog, model, s) {
                forecasts.entry(node).or_insert_with(|| forecast(node));
            }
        }
        sites.iter().map(|s| node_of(catalog, model, s).map(|n| forecasts.get(n).and_then(Option::as_ref))).collect()
    };
    let mut out = Vec::with_capacity(grid.slots * sites.len());
    for k in 0..grid.slots {
        let t = grid.slot_start(k);
        for (s, f) in sites.iter().zip(&per_site) {
            let Some(d) = model.deployments.get(s.deployment) else {
                out.push(TokenPrice { input: f64::INFINITY, output: f64::INFINITY });
                continue;
            };
            let usd_per_mwh = f.map(|f| match (k, f) {
                (0, f) => site_energy(f.and_then(|f| f.last()).map(|p| p.to_energy()).as_ref(), t, fallback).usd_per_mwh,
                (_, Some(f)) => f.at(t).unwrap_or(fallback),
                (_, None) => fallback,
            });
            out.push(pricing::quote_at(catalog, model, d, usd_per_mwh).cost);
        }
    }
    out
}

fn node_of<'c>(catalog: &'c Catalog, model: &Model, site: &Site) -> Option<&'c str> {
    model.deployments.get(site.deployment).and_then(|d| catalog.data_center_of(d)).and_then(|dc| dc.price_node.as_deref())
}

/// The plan's aim for a batch: its deadline minus `max(margin_share × window, one slot)`.
pub fn latest(settings: &ScheduleSettings, p: &Pending) -> i64 {
    let margin = ((settings.margin_share * (p.deadline - p.created) as f64) as i64).max(settings.slot_s.max(1));
    p.deadline - margin
}

/// Plans `pending` (batches of `model`) over `sites` at `now`; `forecast` gives a node's
/// forecast. The result is in the order of `pending`.
pub fn decide(
    settings: &ScheduleSettings,
    catalog: &Catalog,
    model: &Model,
    sites: &[Site],
    forecast: &dyn Fn(&str) -> Option<NodeForecast>,
    pending: &[Pending],
    now: i64,
) -> Vec<JobPlan> {
    let grid = grid(settings, sites, pending, now);
    let prices = cell_prices(settings, catalog, model, sites, forecast, &grid);
    let jobs: Vec<Job> = pending
        .iter()
        .map(|p| Job {
            remaining: p.remaining,
            deadline: p.deadline,
            latest: latest(settings, p),
            cost: prices.iter().map(|c| (p.input_tokens * c.input + p.output_tokens * c.output) / 1e6).collect(),
        })
        .collect();
    plan::plan(&grid, &jobs)
}

#[cfg(test)]
mod tests {
    use super::super::forecast::PricePoint;
    use super::*;

    const H: i64 = 3600;
    const T0: i64 = 1_688_256_000;

    /// Sites A (`X/A`) and B (`X/B`): PUE 1, 3.6 kW, 1000 decode tokens/s, base 0, so a request
    /// of 1000 output tokens costs P × 1e-6 $ at P $/MWh.
    fn catalog() -> Catalog {
        let config = crate::routing::evaluate::tests::CONFIG;
        crate::config::parse(config, std::path::Path::new("."), &|_| None).unwrap_or_else(|e| panic!("{e}")).catalog
    }

    /// Hourly slots, no margin share (the one-slot floor remains).
    fn settings() -> ScheduleSettings {
        ScheduleSettings { slot_s: H, margin_share: 0.0, ..Default::default() }
    }

    /// Forecasts made at `T0`: each listed node's hourly prices from `T0` as day-ahead prices,
    /// with the first hour as its last real-time price.
    fn forecasts(nodes: &'static [(&'static str, &'static [f64])]) -> impl Fn(&str) -> Option<NodeForecast> {
        move |node: &str| {
            let (_, v) = nodes.iter().find(|(n, _)| *n == node)?;
            let points: Vec<PricePoint> =
                v.iter().enumerate().map(|(h, &p)| PricePoint { start: T0 + H * h as i64, minutes: 60, usd_per_mwh: p }).collect();
            Some(NodeForecast::build(&ForecastSettings::default(), &points[..1], &points, T0))
        }
    }

    fn pending(remaining: f64, deadline_h: i64) -> Pending {
        Pending { remaining, created: T0, deadline: T0 + deadline_h * H, input_tokens: 0.0, output_tokens: 1000.0 }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn the_cheapest_cells_before_the_deadline_by_hand() {
        // A: 50, 30, 10, 5 $/MWh; B: 40, 20, 60, 1. One request costs P·1e-6 $. 5 requests,
        // 2 per site per hour, deadline after hour 3 (slots 0–2), margin one slot → slots 0–1
        // only: cells B1 (20), A1 (30), B0 (40), A0 (50): 2 + 2 + 1 → 2·20 + 2·30 + 40 = 140 µ$,
        // one now at B.
        let c = catalog();
        let m = c.model("m").unwrap();
        let sites = [Site { deployment: 0, requests_per_slot: 2.0 }, Site { deployment: 1, requests_per_slot: 2.0 }];
        let f = forecasts(&[("X/A", &[50.0, 30.0, 10.0, 5.0]), ("X/B", &[40.0, 20.0, 60.0, 1.0])]);
        let p = &decide(&settings(), &c, m, &sites, &f, &[pending(5.0, 3)], T0)[0];
        assert_eq!(p.now, vec![0.0, 1.0]);
        assert!(close(p.cost, 140e-6), "{p:?}");
        assert!(!p.behind);
        // Without the one-slot margin floor, slot 2 at A (10) would be used.
        let g = grid(&settings(), &sites, &[pending(5.0, 3)], T0);
        assert_eq!(g.slots, 3);
        assert_eq!(latest(&settings(), &pending(5.0, 3)), T0 + 2 * H);
        // A 10 % margin of a 30-hour window is 3 hours.
        let wide = ScheduleSettings { margin_share: 0.1, ..settings() };
        assert_eq!(latest(&wide, &pending(1.0, 30)), T0 + 27 * H);
    }

    #[test]
    fn slot_zero_is_the_last_price_under_the_stale_rule_and_unknown_nodes_the_fallback() {
        let c = catalog();
        let m = c.model("m").unwrap();
        let sites: Vec<Site> = (0..2).map(|d| Site { deployment: d, requests_per_slot: 1.0 }).collect();
        let f = forecasts(&[("X/A", &[50.0, 30.0]), ("X/B", &[40.0, 20.0])]);
        let output = |f: &dyn Fn(&str) -> Option<NodeForecast>, g: &Grid| -> Vec<f64> {
            cell_prices(&settings(), &c, m, &sites, f, g).iter().map(|p| p.output).collect()
        };
        // $/Mtok output at P $/MWh: P/1000.
        let g = grid(&settings(), &sites, &[pending(1.0, 2)], T0);
        let cost = output(&f, &g);
        assert!(cost.iter().zip([0.05, 0.04, 0.03, 0.02]).all(|(a, b)| close(*a, b)), "{cost:?}");
        // Three hours on, the last prices (hour 0) are stale: slot 0 at max(last, 150).
        let late = grid(&settings(), &sites, &[Pending { deadline: T0 + 5 * H, ..pending(1.0, 5) }], T0 + 3 * H);
        let cost = output(&f, &late);
        assert!(close(cost[0], 0.15) && close(cost[1], 0.15), "{cost:?}");
        // No forecast for B at all: the fallback in every slot.
        let only_a = |n: &str| if n == "X/A" { f(n) } else { None };
        let cost = output(&only_a, &g);
        assert!(close(cost[1], 0.15) && close(cost[3], 0.15) && close(cost[0], 0.05), "{cost:?}");
    }

    #[test]
    fn unpriced_sites_and_provider_routes_by_hand() {
        // `pricing::tests` catalog, model `m`: west (CAISO/SP-15, PUE 1.25, base 0.1/0.2; at
        // 100 $/MWh 0.1125/0.325 $/Mtok), plain (no price node, 0.3/0.3), provider (list
        // 1.0/2.0 + 5 %: 1.05/2.1). A request of 2000 input and 500 output tokens: west 387.5 µ$,
        // plain 750 µ$, provider 3150 µ$. One request of room each (the provider 10), three
        // requests, only slot 0 before the margin: one at each, 4287.5 µ$.
        let c = crate::pricing::tests::two_site_catalog();
        let m = c.model("m").unwrap();
        let sites = [
            Site { deployment: 0, requests_per_slot: 1.0 },
            Site { deployment: 2, requests_per_slot: 1.0 },
            Site { deployment: 3, requests_per_slot: 10.0 },
        ];
        let f = forecasts(&[("CAISO/SP-15", &[100.0, 100.0])]);
        let job = Pending { remaining: 3.0, created: T0, deadline: T0 + 2 * H, input_tokens: 2000.0, output_tokens: 500.0 };
        let p = &decide(&settings(), &c, m, &sites, &f, std::slice::from_ref(&job), T0)[0];
        assert_eq!(p.now, vec![1.0, 1.0, 1.0]);
        assert!(close(p.cost, 4287.5e-6), "{p:?}");
        // With two requests the provider is left out.
        let p = &decide(&settings(), &c, m, &sites, &f, &[Pending { remaining: 2.0, ..job }], T0)[0];
        assert_eq!(p.now, vec![1.0, 1.0, 0.0]);
    }
}
