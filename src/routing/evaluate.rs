//! `joule energy evaluate`: replays an energy price trace against a synthetic request load
//! through the real pricing code (row validation, energy table, price book, stale rule) and
//! the real `price` strategy, and compares what serving the load costs when routed by
//!
//! - each single data center (static; with a capacity limit, overflow goes to the other sites
//!   in the order of their mean cost over the trace),
//! - round robin (an even split; with capacity, water-filled over the sites with room),
//! - joule's `price` routing, deciding on prices that arrive `feed_delay` after their interval
//!   starts (and so sometimes stale),
//! - the oracle: the cheapest site for every step with today's prices, no delay.
//!
//! The load is fluid and deterministic: each step (default 1 minute) carries
//! `rate × shape(t) × step` requests of the token mix's mean size; requests of one step go to
//! the ranked sites in order, each up to its capacity. Costs are always counted at the true
//! price of the interval the work ran in (the last price when an interval is missing), i.e.
//! the token price of the site — base plus energy — at that time. The model's hosted
//! deployments are the sites; provider routes are left out.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::str::FromStr;

use serde::Serialize;

use crate::catalog::{Catalog, DeploymentKind, TokenPrice};
use crate::pricing::energy::{EnergyRow, EnergyTable, Market, ParsedRow, RowRules};
use crate::pricing::feed::replay::{ReplayError, Trace};
use crate::pricing::{EnergySettings, PriceBook, ReplaySource};
use crate::routing::{self, tags::StrategySet};

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("--load: {0}")]
    Load(String),
    #[error("model `{0}` is not in the config")]
    UnknownModel(String),
    #[error("model `{0}` has fewer than two hosted deployments with a priced data center")]
    TooFewSites(String),
    #[error("the config has no hosted model to evaluate")]
    NoModel,
    #[error(transparent)]
    Trace(#[from] ReplayError),
    #[error("the trace has no interval where every site has a price{0}")]
    NoOverlap(String),
    #[error("--step must be at least 1 s")]
    Step,
}

/// Daily shape of the arrival rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Flat,
    /// `rate × (1 + amplitude × cos(2π (hour − peak) / 24))`, hours UTC.
    Diurnal,
}

/// One kind of request in the token mix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TokenClass {
    pub input: f64,
    pub output: f64,
    pub weight: f64,
}

/// The synthetic load: `--load rate=2,shape=diurnal,amplitude=0.5,peak=20,mix=600:200:0.7+3000:300:0.3,capacity=1.5`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadSpec {
    /// Mean requests per second. Default 2.
    pub rate: f64,
    /// Default diurnal.
    pub shape: Shape,
    /// Default 0.5.
    pub amplitude: f64,
    /// Peak hour, UTC. Default 20 (early afternoon in the US).
    pub peak_hour: f64,
    /// Default `600:200:0.6+3000:300:0.3+200:800:0.1` (chat, long prompts, long answers).
    pub mix: Vec<TokenClass>,
    /// Requests per second each data center can take; none = unlimited.
    pub capacity: Option<f64>,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            rate: 2.0,
            shape: Shape::Diurnal,
            amplitude: 0.5,
            peak_hour: 20.0,
            mix: vec![
                TokenClass { input: 600.0, output: 200.0, weight: 0.6 },
                TokenClass { input: 3000.0, output: 300.0, weight: 0.3 },
                TokenClass { input: 200.0, output: 800.0, weight: 0.1 },
            ],
            capacity: None,
        }
    }
}

impl FromStr for LoadSpec {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, EvalError> {
        let mut spec = LoadSpec::default();
        let num = |k: &str, v: &str| number(k, v).map_err(EvalError::Load);
        for (k, v) in key_values(s).map_err(EvalError::Load)? {
            match k {
                "rate" => spec.rate = num(k, v)?,
                "shape" => {
                    spec.shape = match v {
                        "flat" => Shape::Flat,
                        "diurnal" => Shape::Diurnal,
                        _ => return Err(EvalError::Load(format!("shape `{v}` is not flat or diurnal"))),
                    }
                }
                "amplitude" => {
                    spec.amplitude = num(k, v)?;
                    if spec.amplitude > 1.0 {
                        return Err(EvalError::Load("amplitude must be in 0..1".into()));
                    }
                }
                "peak" => spec.peak_hour = num(k, v)? % 24.0,
                "capacity" => spec.capacity = Some(num(k, v)?),
                "mix" => spec.mix = token_mix(v).map_err(EvalError::Load)?,
                other => {
                    return Err(EvalError::Load(format!(
                        "unknown key `{other}` (rate, shape, amplitude, peak, mix, capacity)"
                    )))
                }
            }
        }
        Ok(spec)
    }
}

/// The `key=value` pairs of a comma-separated spec (`--load`, `--batches`), keys trimmed.
///
/// # Errors
/// A part without `=`.
pub fn key_values(s: &str) -> Result<Vec<(&str, &str)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| part.split_once('=').map(|(k, v)| (k.trim(), v.trim())).ok_or_else(|| format!("`{part}` is not key=value")))
        .collect()
}

/// A spec value that must be a finite number ≥ 0.
///
/// # Errors
/// Anything else, naming the key.
pub fn number(k: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0).ok_or_else(|| format!("{k} = `{v}` is not a number >= 0"))
}

/// A token mix: `input:output[:weight]` classes joined by `+`, weights not all 0.
///
/// # Errors
/// A malformed class or only zero weights.
pub fn token_mix(v: &str) -> Result<Vec<TokenClass>, String> {
    let mix = v
        .split('+')
        .map(|c| {
            let f: Vec<&str> = c.split(':').collect();
            match f.as_slice() {
                [i, o] => Ok(TokenClass { input: number("mix", i)?, output: number("mix", o)?, weight: 1.0 }),
                [i, o, w] => Ok(TokenClass { input: number("mix", i)?, output: number("mix", o)?, weight: number("mix", w)? }),
                _ => Err(format!("mix class `{c}` is not input:output[:weight]")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if mix.iter().map(|c| c.weight).sum::<f64>() <= 0.0 {
        return Err("mix weights must not all be 0".into());
    }
    Ok(mix)
}

impl LoadSpec {
    /// Requests per second at time `t`.
    pub fn rate_at(&self, t: i64) -> f64 {
        match self.shape {
            Shape::Flat => self.rate,
            Shape::Diurnal => {
                let hour = t.rem_euclid(86_400) as f64 / 3600.0;
                self.rate * (1.0 + self.amplitude * (std::f64::consts::TAU * (hour - self.peak_hour) / 24.0).cos())
            }
        }
    }

    /// Mean input and output tokens per request.
    pub fn mean_tokens(&self) -> (f64, f64) {
        let w: f64 = self.mix.iter().map(|c| c.weight).sum();
        (
            self.mix.iter().map(|c| c.input * c.weight).sum::<f64>() / w,
            self.mix.iter().map(|c| c.output * c.weight).sum::<f64>() / w,
        )
    }
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Model id; default the first hosted model with two or more priced sites.
    pub model: Option<String>,
    pub load: LoadSpec,
    /// Seconds from an interval's start until its price reaches joule.
    pub feed_delay: i64,
    /// Simulation step, seconds. Default 60.
    pub step: i64,
}

/// One line of the result table.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub strategy: String,
    /// $ for the whole load.
    pub cost: f64,
    /// The energy part of `cost`, $.
    pub energy: f64,
    /// `(best static − cost) / best static`.
    pub savings_vs_best_static: f64,
    /// The same for the energy part alone (what routing can change when base prices are equal).
    pub energy_savings_vs_best_static: f64,
    /// `(best static − cost) / (best static − oracle)`; none when the oracle saves nothing.
    pub share_of_oracle_savings: Option<f64>,
}

/// The evaluation result.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub model: String,
    pub sites: Vec<String>,
    pub from: String,
    pub to: String,
    pub step_seconds: i64,
    pub feed_delay_seconds: i64,
    pub load: LoadSpec,
    pub requests: f64,
    pub input_tokens: f64,
    pub output_tokens: f64,
    pub rejected_rows: usize,
    /// Simulation steps.
    pub steps: usize,
    /// Steps in which joule decided on a stale price.
    pub stale_decisions: usize,
    pub best_static: String,
    pub outcomes: Vec<Outcome>,
}

impl Evaluation {
    /// The outcome of a strategy by name.
    pub fn outcome(&self, strategy: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.strategy == strategy)
    }

    /// A Markdown table.
    pub fn table(&self) -> String {
        let mut s = heading(&self.model, self.sites.len(), &self.from, &self.to);
        let _ = writeln!(
            s,
            ", {:.0} requests ({:.2e} input + {:.2e} output tokens), feed delay {} s, step {} s{}",
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.feed_delay_seconds,
            self.step_seconds,
            self.load.capacity.map_or(String::new(), |c| format!(", capacity {c} req/s per site")),
        );
        let _ = writeln!(s);
        let rows = self.outcomes.iter().map(|o| {
            vec![
                o.strategy.clone(),
                format!("{:.2}", o.cost),
                format!("{:.2}", o.energy),
                format!("{:.2} %", 100.0 * o.savings_vs_best_static),
                format!("{:.1} %", 100.0 * o.energy_savings_vs_best_static),
                percent(o.share_of_oracle_savings),
            ]
        });
        let header = ["strategy", "cost $", "energy $", "savings vs best static", "energy savings", "share of oracle savings"];
        markdown_table(&mut s, &header, rows);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "best static site: {}; joule decided on a stale price in {} of {} steps; {} trace rows rejected",
            self.best_static,
            self.stale_decisions,
            self.steps,
            self.rejected_rows
        );
        s
    }
}

/// The start of a result's caption: `model M on N sites, FROM → TO`.
pub fn heading(model: &str, sites: usize, from: &str, to: &str) -> String {
    format!("model {model} on {sites} sites, {from} → {to}")
}

/// A Markdown table: the first column left-aligned, the others right-aligned.
pub fn markdown_table(out: &mut String, header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(header.len().saturating_sub(1)));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
}

/// A share as `12.3 %`, or `–` when there is none.
pub fn percent(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1} %", 100.0 * x))
}

/// Loads trace files and evaluates.
///
/// # Errors
/// See [`EvalError`].
pub fn evaluate_files(catalog: &Catalog, energy: &EnergySettings, files: &[std::path::PathBuf], setup: &Setup) -> Result<Evaluation, EvalError> {
    let nodes: HashSet<String> = catalog.data_centers.iter().filter_map(|d| d.price_node.clone()).collect();
    let sources: Vec<ReplaySource> = files.iter().cloned().map(ReplaySource::File).collect();
    let trace = Trace::load(&sources, &nodes)?;
    evaluate(catalog, energy, trace.rows(), trace.bad_rows(), setup)
}

/// Fills `n` requests into sites in `order`, each up to `cap`; what is left over when every
/// site is full goes to the first (it has to run somewhere).
fn fill(order: &[usize], n: f64, cap: Option<f64>, out: &mut [f64]) {
    out.iter_mut().for_each(|x| *x = 0.0);
    let mut left = n;
    for &s in order {
        let take = cap.map_or(left, |c| left.min(c));
        out[s] += take;
        left -= take;
        if left <= 0.0 {
            return;
        }
    }
    if let Some(&s) = order.first() {
        out[s] += left;
    }
}

/// An even split, water-filled when capacity binds.
fn even(k: usize, n: f64, cap: Option<f64>, out: &mut [f64]) {
    out.iter_mut().for_each(|x| *x = 0.0);
    let Some(c) = cap else {
        out.iter_mut().for_each(|x| *x = n / k as f64);
        return;
    };
    let mut left = n;
    let mut open: Vec<usize> = (0..k).collect();
    while left > 1e-12 && !open.is_empty() {
        let share = left / open.len() as f64;
        let mut next = Vec::new();
        for &s in &open {
            let take = share.min(c - out[s]);
            out[s] += take;
            left -= take;
            if out[s] < c - 1e-12 {
                next.push(s);
            }
        }
        open = next;
    }
    if left > 1e-12 {
        out[0] += left;
    }
}

/// The sites an evaluation compares: a model's hosted deployments whose data center has a
/// price node.
#[derive(Debug, Clone, PartialEq)]
pub struct Sites {
    /// Indexes into the model's deployments.
    pub deployments: Vec<usize>,
    /// Each site's price node.
    pub nodes: Vec<String>,
    /// Each site's data center id.
    pub names: Vec<String>,
}

impl Sites {
    /// The model `id` (default: the first model with two or more priced sites) and its sites.
    ///
    /// # Errors
    /// No such model, or fewer than two priced sites.
    pub fn of<'c>(catalog: &'c Catalog, id: Option<&str>) -> Result<(&'c crate::catalog::Model, Sites), EvalError> {
        let node = |d: &crate::catalog::Deployment| catalog.data_center_of(d).and_then(|dc| dc.price_node.clone());
        let model = match id {
            Some(id) => catalog.model(id).ok_or_else(|| EvalError::UnknownModel(id.to_string()))?,
            None => catalog
                .models
                .iter()
                .find(|m| m.deployments.iter().filter(|d| node(d).is_some()).count() >= 2)
                .ok_or(EvalError::NoModel)?,
        };
        let mut sites = Sites { deployments: Vec::new(), nodes: Vec::new(), names: Vec::new() };
        for (i, d) in model.deployments.iter().enumerate() {
            if let (Some(n), Some(dc)) = (node(d), catalog.data_center_of(d)) {
                sites.deployments.push(i);
                sites.nodes.push(n);
                sites.names.push(dc.id.clone());
            }
        }
        if sites.deployments.len() < 2 {
            return Err(EvalError::TooFewSites(model.id.clone()));
        }
        Ok((model, sites))
    }

    /// The real-time rows of the sites' nodes, sorted by interval start, and the span where
    /// every site has a price: from the latest first row to the earliest end.
    ///
    /// # Errors
    /// A node without rows, or no common span.
    pub fn overlap(&self, rows: &[EnergyRow]) -> Result<(Vec<EnergyRow>, i64, i64), EvalError> {
        let mut rows: Vec<EnergyRow> =
            rows.iter().filter(|r| r.market == Market::RealTime && self.nodes.contains(&r.node)).cloned().collect();
        rows.sort_by_key(|r| r.price.interval_start);
        let first_of = |n: &str| rows.iter().find(|r| r.node == n).map(|r| r.price.interval_start);
        let end_of = |n: &str| {
            rows.iter().rev().find(|r| r.node == n).map(|r| r.price.interval_start + 60 * i64::from(r.price.interval_minutes))
        };
        let missing: Vec<&str> = self.nodes.iter().map(String::as_str).filter(|n| first_of(n).is_none()).collect();
        if !missing.is_empty() {
            return Err(EvalError::NoOverlap(format!(" (no rows for {})", missing.join(", "))));
        }
        let from = self.nodes.iter().filter_map(|n| first_of(n)).max().unwrap_or(0);
        let to = self.nodes.iter().filter_map(|n| end_of(n)).min().unwrap_or(0);
        if to <= from {
            return Err(EvalError::NoOverlap(String::new()));
        }
        Ok((rows, from, to))
    }

    /// Each site's cost and energy part, $/Mtok per direction, from `book`'s quotes.
    pub fn costs(&self, catalog: &Catalog, book: &PriceBook, model: &crate::catalog::Model) -> Vec<(TokenPrice, TokenPrice)> {
        self.deployments
            .iter()
            .map(|&i| {
                let q = book.quote(catalog, model, i);
                let base = match &model.deployments[i].kind {
                    DeploymentKind::Hosted { base_price, .. } => *base_price,
                    DeploymentKind::Provider { .. } => TokenPrice::default(),
                };
                (q.cost, TokenPrice { input: q.cost.input - base.input, output: q.cost.output - base.output })
            })
            .collect()
    }
}

/// Trace rows (sorted by interval start) fed into an energy table through the real row rules
/// as simulated time passes.
#[derive(Debug)]
pub struct Feeder<'a> {
    rows: &'a [EnergyRow],
    next: usize,
    rules: RowRules,
    table: EnergyTable,
    /// Rows the rules rejected so far.
    pub rejected: usize,
}

impl<'a> Feeder<'a> {
    /// A feeder over `rows` for the `nodes` given, with `energy`'s sanity range.
    pub fn new(rows: &'a [EnergyRow], energy: &EnergySettings, nodes: &[String]) -> Self {
        let rules = RowRules {
            min_usd_per_mwh: energy.min_usd_per_mwh,
            max_usd_per_mwh: energy.max_usd_per_mwh,
            known_nodes: nodes.iter().cloned().collect(),
        };
        Feeder { rows, next: 0, rules, table: EnergyTable::default(), rejected: 0 }
    }

    /// Applies the rows whose interval starts by `upto`, at time `now`; the rows accepted.
    pub fn advance(&mut self, upto: i64, now: i64) -> Vec<EnergyRow> {
        let from = self.next;
        let j = from + self.rows[from..].partition_point(|r| r.price.interval_start <= upto);
        if j == from {
            return Vec::new();
        }
        let batch: Vec<ParsedRow> = self.rows[from..j].iter().cloned().enumerate().map(|(p, r)| (p + 1, Ok(r))).collect();
        let applied = self.table.apply(batch, &self.rules, now);
        self.rejected += applied.rejected.len();
        if let Some(t) = applied.table {
            self.table = t;
        }
        self.next = j;
        applied.accepted
    }

    /// The table so far.
    pub fn table(&self) -> &EnergyTable {
        &self.table
    }
}

/// Ranks sites the way joule's `price` routing does, from a price book, with priors only (the
/// evaluations replay prices, not traffic).
pub struct Ranker {
    strategies: StrategySet,
    telemetry: crate::telemetry::Telemetry,
    model_index: usize,
}

impl Ranker {
    /// A ranker for `model` of `catalog`.
    pub fn new(catalog: &Catalog, model: &crate::catalog::Model) -> Self {
        let telemetry = crate::telemetry::Telemetry::new(
            catalog,
            crate::telemetry::TelemetrySettings { enabled: false, ..Default::default() },
            None,
        );
        Ranker { strategies: StrategySet::default_price(), telemetry, model_index: catalog.model_index(&model.id).unwrap_or(0) }
    }

    /// The sites (indexes into `sites.deployments`) best first, and whether the first one's
    /// price was stale.
    pub fn order(&self, catalog: &Catalog, book: &PriceBook, model: &crate::catalog::Model, sites: &Sites) -> (Vec<usize>, bool) {
        let cands: Vec<_> = routing::candidates(catalog, book, model, self.model_index, &self.telemetry)
            .into_iter()
            .filter(|c| sites.deployments.contains(&c.deployment))
            .collect();
        let decision = routing::rank_native(cands, &self.strategies);
        let order =
            decision.ranked.iter().filter_map(|(c, _)| sites.deployments.iter().position(|&s| s == c.deployment)).collect();
        (order, decision.ranked.first().is_some_and(|(c, _)| c.quote.stale))
    }
}

/// Evaluates on rows of a trace (any order; day-ahead rows are ignored).
///
/// # Errors
/// See [`EvalError`].
pub fn evaluate(catalog: &Catalog, energy: &EnergySettings, rows: &[EnergyRow], rejected_rows: usize, setup: &Setup) -> Result<Evaluation, EvalError> {
    if setup.step < 1 {
        return Err(EvalError::Step);
    }
    let (model, sites) = Sites::of(catalog, setup.model.as_deref())?;
    let (rows, from, to) = sites.overlap(rows)?;
    let (mean_in, mean_out) = setup.load.mean_tokens();
    let k = sites.deployments.len();
    let step = setup.step;

    // Per step: requests, true cost and energy per request at each site, joule's order.
    struct StepData {
        n: f64,
        cost: Vec<f64>,
        energy: Vec<f64>,
        joule: Vec<usize>,
    }
    let mut steps = Vec::new();
    let mut truth = Feeder::new(&rows, energy, &sites.nodes);
    let mut known = Feeder::new(&rows, energy, &sites.nodes);
    let mut stale_decisions = 0usize;
    let ranker = Ranker::new(catalog, model);
    let per_request = |p: TokenPrice| (mean_in * p.input + mean_out * p.output) / 1e6;
    let mut t = from;
    while t < to {
        truth.advance(t, t);
        known.advance(t - setup.feed_delay, t);
        // True prices: the last price of each site, never the stale fallback.
        let true_book = PriceBook::build(catalog, truth.table(), f64::NEG_INFINITY, t);
        let joule_book = PriceBook::build(catalog, known.table(), energy.stale_fallback_usd_per_mwh, t);
        let (cost, en) = sites.costs(catalog, &true_book, model).into_iter().map(|(c, e)| (per_request(c), per_request(e))).unzip();
        let (joule, stale) = ranker.order(catalog, &joule_book, model, &sites);
        stale_decisions += usize::from(stale);
        let n = setup.load.rate_at(t) * step.min(to - t) as f64;
        steps.push(StepData { n, cost, energy: en, joule });
        t += step;
    }
    let rejected = rejected_rows + truth.rejected + known.rejected;
    let site_names = sites.names;

    let cap = setup.load.capacity.map(|c| c * step as f64);
    // Static priority for overflow: sites by mean true cost.
    let mut by_mean: Vec<usize> = (0..k).collect();
    let mean = |s: usize| steps.iter().map(|x| x.cost[s]).sum::<f64>();
    by_mean.sort_by(|&a, &b| mean(a).total_cmp(&mean(b)));

    let mut alloc = vec![0.0; k];
    let mut run = |choose: &mut dyn FnMut(&StepData, &mut [f64])| {
        let (mut c, mut e) = (0.0, 0.0);
        for st in &steps {
            choose(st, &mut alloc);
            for ((n, cost), energy) in alloc.iter().zip(&st.cost).zip(&st.energy) {
                c += n * cost;
                e += n * energy;
            }
        }
        (c, e)
    };
    let mut results: Vec<(String, f64, f64)> = Vec::new();
    for (s, name) in site_names.iter().enumerate() {
        let order: Vec<usize> = std::iter::once(s).chain(by_mean.iter().copied().filter(|&x| x != s)).collect();
        let (c, e) = run(&mut |st, out| fill(&order, st.n, cap, out));
        results.push((format!("static {name}"), c, e));
    }
    let (c, e) = run(&mut |st, out| even(k, st.n, cap, out));
    results.push(("round robin".into(), c, e));
    let (c, e) = run(&mut |st, out| fill(&st.joule, st.n, cap, out));
    results.push((format!("joule price (delay {})", crate::clock::format_duration(setup.feed_delay)), c, e));
    let (c, e) = run(&mut |st, out| {
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| st.cost[a].total_cmp(&st.cost[b]));
        fill(&order, st.n, cap, out)
    });
    results.push(("oracle".into(), c, e));

    let (best_i, best, best_energy) = results[..k]
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
        .map(|(i, r)| (i, r.1, r.2))
        .unwrap_or((0, 0.0, 0.0));
    let oracle = results[k + 2].1;
    let outcomes = results
        .into_iter()
        .map(|(strategy, cost, energy)| Outcome {
            strategy,
            cost,
            energy,
            savings_vs_best_static: if best > 0.0 { (best - cost) / best } else { 0.0 },
            energy_savings_vs_best_static: if best_energy.abs() > 0.0 { (best_energy - energy) / best_energy.abs() } else { 0.0 },
            share_of_oracle_savings: (best - oracle > 1e-12).then(|| (best - cost) / (best - oracle)),
        })
        .collect();
    let requests: f64 = steps.iter().map(|s| s.n).sum();
    Ok(Evaluation {
        model: model.id.clone(),
        sites: site_names.clone(),
        from: crate::clock::format_rfc3339(from),
        to: crate::clock::format_rfc3339(to),
        step_seconds: step,
        feed_delay_seconds: setup.feed_delay,
        load: setup.load.clone(),
        requests,
        input_tokens: requests * mean_in,
        output_tokens: requests * mean_out,
        rejected_rows: rejected,
        steps: steps.len(),
        stale_decisions,
        best_static: site_names[best_i].clone(),
        outcomes,
    })
}

#[cfg(test)]
pub(crate) mod tests;
