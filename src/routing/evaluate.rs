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

use crate::pricing::energy::{EnergyRow, EnergyTable, ParsedRow, RowRules};
use crate::pricing::feed::replay::{ReplayError, Trace};
use crate::pricing::{EnergySettings, PriceBook, ReplaySource};
use crate::catalog::{Catalog, DeploymentKind};
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
        let num = |k: &str, v: &str| -> Result<f64, EvalError> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| EvalError::Load(format!("{k} = `{v}` is not a number >= 0")))
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| EvalError::Load(format!("`{part}` is not key=value")))?;
            match k.trim() {
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
                "mix" => {
                    spec.mix = v
                        .split('+')
                        .map(|c| {
                            let f: Vec<&str> = c.split(':').collect();
                            match f.as_slice() {
                                [i, o] => Ok(TokenClass { input: num("mix", i)?, output: num("mix", o)?, weight: 1.0 }),
                                [i, o, w] => Ok(TokenClass { input: num("mix", i)?, output: num("mix", o)?, weight: num("mix", w)? }),
                                _ => Err(EvalError::Load(format!("mix class `{c}` is not input:output[:weight]"))),
                            }
                        })
                        .collect::<Result<_, _>>()?;
                    if spec.mix.iter().map(|c| c.weight).sum::<f64>() <= 0.0 {
                        return Err(EvalError::Load("mix weights must not all be 0".into()));
                    }
                }
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
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model {} on {} sites, {} → {}, {:.0} requests ({:.2e} input + {:.2e} output tokens), feed delay {} s, step {} s{}",
            self.model,
            self.sites.len(),
            self.from,
            self.to,
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.feed_delay_seconds,
            self.step_seconds,
            self.load.capacity.map_or(String::new(), |c| format!(", capacity {c} req/s per site")),
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "| strategy | cost $ | energy $ | savings vs best static | energy savings | share of oracle savings |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for o in &self.outcomes {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.2} | {:.2} % | {:.1} % | {} |",
                o.strategy,
                o.cost,
                o.energy,
                100.0 * o.savings_vs_best_static,
                100.0 * o.energy_savings_vs_best_static,
                o.share_of_oracle_savings.map_or("–".into(), |x| format!("{:.1} %", 100.0 * x)),
            );
        }
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

/// Evaluates on rows of a trace (any order).
///
/// # Errors
/// See [`EvalError`].
pub fn evaluate(catalog: &Catalog, energy: &EnergySettings, rows: &[EnergyRow], rejected_rows: usize, setup: &Setup) -> Result<Evaluation, EvalError> {
    if setup.step < 1 {
        return Err(EvalError::Step);
    }
    let priced = |d: &crate::catalog::Deployment| catalog.data_center_of(d).is_some_and(|dc| dc.price_node.is_some());
    let model = match &setup.model {
        Some(id) => catalog.model(id).ok_or_else(|| EvalError::UnknownModel(id.clone()))?,
        None => catalog
            .models
            .iter()
            .find(|m| m.deployments.iter().filter(|d| priced(d)).count() >= 2)
            .ok_or(EvalError::NoModel)?,
    };
    // Sites: the model's hosted deployments with a priced data center, by deployment index.
    let sites: Vec<usize> = model.deployments.iter().enumerate().filter(|(_, d)| priced(d)).map(|(i, _)| i).collect();
    if sites.len() < 2 {
        return Err(EvalError::TooFewSites(model.id.clone()));
    }
    let nodes: Vec<&str> = sites
        .iter()
        .filter_map(|&i| catalog.data_center_of(&model.deployments[i]).and_then(|dc| dc.price_node.as_deref()))
        .collect();
    let site_names: Vec<String> = sites
        .iter()
        .map(|&i| {
            let d = &model.deployments[i];
            catalog.data_center_of(d).map_or(d.id.clone(), |dc| dc.id.clone())
        })
        .collect();
    let mut rows: Vec<EnergyRow> = rows.iter().filter(|r| nodes.contains(&r.node.as_str())).cloned().collect();
    rows.sort_by_key(|r| r.price.interval_start);
    // Evaluate where every site has a price: from the latest first row to the earliest end.
    let first_of = |n: &str| rows.iter().find(|r| r.node == n).map(|r| r.price.interval_start);
    let end_of = |n: &str| {
        rows.iter().rev().find(|r| r.node == n).map(|r| r.price.interval_start + 60 * i64::from(r.price.interval_minutes))
    };
    let missing: Vec<&str> = nodes.iter().copied().filter(|n| first_of(n).is_none()).collect();
    if !missing.is_empty() {
        return Err(EvalError::NoOverlap(format!(" (no rows for {})", missing.join(", "))));
    }
    let from = nodes.iter().filter_map(|n| first_of(n)).max().unwrap_or(0);
    let to = nodes.iter().filter_map(|n| end_of(n)).min().unwrap_or(0);
    if to <= from {
        return Err(EvalError::NoOverlap(String::new()));
    }

    let rules = RowRules {
        min_usd_per_mwh: energy.min_usd_per_mwh,
        max_usd_per_mwh: energy.max_usd_per_mwh,
        known_nodes: nodes.iter().map(|n| n.to_string()).collect(),
    };
    let strategies = StrategySet::default_price();
    let (mean_in, mean_out) = setup.load.mean_tokens();
    let k = sites.len();
    let step = setup.step;

    // Per step: requests, true cost and energy per request at each site, joule's order.
    struct StepData {
        n: f64,
        cost: Vec<f64>,
        energy: Vec<f64>,
        joule: Vec<usize>,
    }
    let mut steps = Vec::new();
    let (mut truth, mut known) = (EnergyTable::default(), EnergyTable::default());
    let (mut ti, mut ki) = (0usize, 0usize);
    let mut rejected = rejected_rows;
    let mut stale_decisions = 0usize;
    let feed = |table: &mut EnergyTable, idx: &mut usize, upto: i64, now: i64, rejected: &mut usize| {
        let j = *idx + rows[*idx..].partition_point(|r| r.price.interval_start <= upto);
        if j > *idx {
            let batch: Vec<ParsedRow> = rows[*idx..j].iter().cloned().enumerate().map(|(p, r)| (p + 1, Ok(r))).collect();
            let applied = table.apply(batch, &rules, now);
            *rejected += applied.rejected.len();
            if let Some(t) = applied.table {
                *table = t;
            }
            *idx = j;
        }
    };
    // The evaluation replays prices, not traffic: no live telemetry, priors only.
    let model_index = catalog.model_index(&model.id).unwrap_or(0);
    let no_telemetry = crate::telemetry::Telemetry::new(
        catalog,
        crate::telemetry::TelemetrySettings { enabled: false, ..Default::default() },
        None,
    );
    let mut t = from;
    while t < to {
        feed(&mut truth, &mut ti, t, t, &mut rejected);
        feed(&mut known, &mut ki, t - setup.feed_delay, t, &mut rejected);
        // True prices: the last price of each site, never the stale fallback.
        let true_book = PriceBook::build(catalog, &truth, f64::NEG_INFINITY, t);
        let joule_book = PriceBook::build(catalog, &known, energy.stale_fallback_usd_per_mwh, t);
        let mut cost = Vec::with_capacity(k);
        let mut en = Vec::with_capacity(k);
        for &i in &sites {
            let q = true_book.quote(catalog, model, i);
            cost.push((mean_in * q.cost.input + mean_out * q.cost.output) / 1e6);
            let base = match &model.deployments[i].kind {
                DeploymentKind::Hosted { base_price, .. } => *base_price,
                DeploymentKind::Provider { .. } => Default::default(),
            };
            en.push((mean_in * (q.cost.input - base.input) + mean_out * (q.cost.output - base.output)) / 1e6);
        }
        let cands: Vec<_> = routing::candidates(catalog, &joule_book, model, model_index, &no_telemetry).into_iter().filter(|c| sites.contains(&c.deployment)).collect();
        let decision = routing::rank_native(cands, &strategies);
        let joule: Vec<usize> =
            decision.ranked.iter().filter_map(|(c, _)| sites.iter().position(|&s| s == c.deployment)).collect();
        if decision.ranked.first().is_some_and(|(c, _)| c.quote.stale) {
            stale_decisions += 1;
        }
        let n = setup.load.rate_at(t) * step.min(to - t) as f64;
        steps.push(StepData { n, cost, energy: en, joule });
        t += step;
    }

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
    results.push((format!("joule price (delay {})", human(setup.feed_delay)), c, e));
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

fn human(secs: i64) -> String {
    match secs {
        0 => "0".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests;
