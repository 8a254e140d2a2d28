//! `joule energy evaluate-batch`: the batch scheduler on a simulated clock against a price
//! trace, compared with running each batch at submission and with the hindsight oracle.
//!
//! A synthetic stream of batches (`--batches`: count, sizes, token mix, completion window,
//! arrival process, per-site capacity, seed) arrives over the trace. Every plan shares one grid
//! of slots (default 5 minutes, ticks aligned with the trace start) and sites (the model's
//! hosted deployments with a priced data center); each site runs at most `capacity` requests
//! per second of batch work; a batch may use the slots that start at or after its arrival and
//! end by its deadline. Work is fluid (fractions of requests), and every request that runs in
//! a slot is charged at the **true** price of the interval in force at the slot's start — the
//! site's token price, base plus energy, by the pricing engine's formula.
//!
//! - **run at submission**: each tick, batches in arrival order take the capacity left, at the
//!   sites in the order joule's `price` routing ranks them on the prices known then (the
//!   interactive path: real row rules, table, stale rule, ranking);
//! - **joule**: each tick, [`schedule::decide`] — the scheduler the gateway runs — plans
//!   every unfinished batch from forecasts built only from what is known at that tick
//!   (real-time prices `feed_delay` after their interval starts; day-ahead prices from their
//!   publication, [`crate::pricing::day_ahead::release`]), and only slot 0 is carried out. Three
//!   lines: the forecast from the trace (history, plus its day-ahead rows if it has any);
//!   *perfect day-ahead* (the true prices given as day-ahead rows, published as a day-ahead
//!   market would: the upper bound of a day-ahead feed); *perfect foresight* (every true price
//!   known from the start: what the planner and its margin lose without any forecast error);
//! - **oracle**: every true price known, the exact optimum under the same capacity and
//!   windows (a min-cost flow, [`oracle`]), without a safety margin.
//!
//! Reported: cost, its energy part, the share of the oracle's energy savings over running at
//! submission (`(submission − plan) / (submission − oracle)`), deadlines met, the mean delay of
//! a request (from its batch's arrival to the start of its slot), and the forecast's mean
//! absolute error 1, 6 and 24 hours ahead.

use std::fmt::Write as _;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::forecast::{ForecastSpecError, NodeForecast, PricePoint};
use super::oracle::{self, Arc};
use super::schedule::{self, Pending, ScheduleSettings, Site};
use crate::catalog::{Catalog, Model, TokenPrice};
use crate::clock::{format_duration, format_rfc3339, parse_duration};
use crate::pricing::day_ahead;
use crate::pricing::energy::{EnergyRow, Market};
use crate::pricing::feed::replay::Trace;
use crate::pricing::{EnergySettings, PriceBook, ReplaySource};
use crate::routing::evaluate::{self as routing_eval, heading, key_values, markdown_table, number, percent, token_mix, Feeder, Ranker, Sites, TokenClass};

/// Why a batch evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("--batches: {0}")]
    Batches(String),
    #[error(transparent)]
    Forecast(#[from] ForecastSpecError),
    #[error(transparent)]
    Setup(#[from] routing_eval::EvalError),
    #[error("--slot must be at least 1 s")]
    Slot,
    #[error("--margin must be a share in 0..1")]
    Margin,
    #[error("the trace's common span ({span}) is shorter than the warm-up ({start}) plus one window ({window})")]
    TooShort { span: String, start: String, window: String },
}

/// How batches arrive over the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// A Poisson process with `count` arrivals (uniform times, sorted).
    Poisson,
    /// Evenly spaced.
    Even,
}

/// The synthetic batches:
/// `--batches count=200,size=500..5000,window=24h,mix=600:200+3000:300,arrivals=poisson,capacity=1,start=1d,seed=1`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchSpec {
    /// Batches. Default 200.
    pub count: usize,
    /// Requests per batch, uniform in `lo..=hi` (whole numbers). Default 500..5000.
    pub size: (u64, u64),
    /// Completion window, seconds. Default 24 h.
    pub window_s: i64,
    /// Token classes; each batch draws one (by weight) as its requests' size. Default
    /// `600:200:0.6+3000:300:0.3+200:800:0.1`, the `--load` default.
    pub mix: Vec<TokenClass>,
    /// Default Poisson.
    pub arrivals: Arrivals,
    /// Batch requests per second each site can run. Default 1.
    pub capacity: f64,
    /// Arrivals begin this long after the trace starts (the forecast's history), seconds.
    /// Default 1 day.
    pub start_s: i64,
    /// Default 1.
    pub seed: u64,
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            count: 200,
            size: (500, 5000),
            window_s: 86_400,
            mix: crate::routing::evaluate::LoadSpec::default().mix,
            arrivals: Arrivals::Poisson,
            capacity: 1.0,
            start_s: 86_400,
            seed: 1,
        }
    }
}

impl FromStr for BatchSpec {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, EvalError> {
        let mut spec = BatchSpec::default();
        let err = EvalError::Batches;
        let whole = |k: &str, v: &str| v.parse::<u64>().map_err(|_| err(format!("{k} = `{v}` is not a whole number")));
        let duration = |k: &str, v: &str| parse_duration(v).ok_or_else(|| err(format!("{k} = `{v}` is not a duration like 90m, 24h, 2d")));
        for (k, v) in key_values(s).map_err(err)? {
            match k {
                "count" => {
                    spec.count = whole(k, v)? as usize;
                    if spec.count == 0 {
                        return Err(err("count must be at least 1".into()));
                    }
                }
                "size" => {
                    let (lo, hi) = v.split_once("..").map_or(Ok((v, v)), |(a, b)| Ok::<_, EvalError>((a, b.trim_start_matches('='))))?;
                    spec.size = (whole(k, lo)?, whole(k, hi)?);
                    if spec.size.0 == 0 || spec.size.0 > spec.size.1 {
                        return Err(err(format!("size = `{v}` must be N or LO..HI with 1 <= LO <= HI")));
                    }
                }
                "window" => {
                    spec.window_s = duration(k, v)?;
                    if spec.window_s <= 0 {
                        return Err(err("window must be longer than 0".into()));
                    }
                }
                "mix" => spec.mix = token_mix(v).map_err(err)?,
                "arrivals" => {
                    spec.arrivals = match v {
                        "poisson" => Arrivals::Poisson,
                        "even" => Arrivals::Even,
                        _ => return Err(err(format!("arrivals `{v}` is not poisson or even"))),
                    }
                }
                "capacity" => {
                    spec.capacity = number(k, v).map_err(err)?;
                    if spec.capacity <= 0.0 {
                        return Err(err("capacity must be more than 0 requests/s".into()));
                    }
                }
                "start" => spec.start_s = duration(k, v)?,
                "seed" => spec.seed = whole(k, v)?,
                other => {
                    return Err(err(format!(
                        "unknown key `{other}` (count, size, window, mix, arrivals, capacity, start, seed)"
                    )))
                }
            }
        }
        Ok(spec)
    }
}

/// One synthetic batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Batch {
    /// Submission, unix seconds.
    pub arrival: i64,
    pub deadline: i64,
    pub requests: f64,
    /// Tokens per request.
    pub input_tokens: f64,
    pub output_tokens: f64,
}

impl BatchSpec {
    /// The batches arriving in `[first, last]`, by the spec's seed.
    pub fn generate(&self, first: i64, last: i64) -> Vec<Batch> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let span = (last - first).max(0);
        let mut arrivals: Vec<i64> = match self.arrivals {
            Arrivals::Poisson => (0..self.count).map(|_| first + rng.gen_range(0..=span)).collect(),
            Arrivals::Even => (0..self.count).map(|i| first + (span as f64 * i as f64 / self.count as f64) as i64).collect(),
        };
        arrivals.sort_unstable();
        let total: f64 = self.mix.iter().map(|c| c.weight).sum();
        arrivals
            .into_iter()
            .map(|arrival| {
                let requests = rng.gen_range(self.size.0..=self.size.1) as f64;
                let mut pick = rng.gen_range(0.0..total.max(f64::MIN_POSITIVE));
                let class = self
                    .mix
                    .iter()
                    .find(|c| {
                        pick -= c.weight;
                        pick < 0.0
                    })
                    .or(self.mix.last())
                    .copied()
                    .unwrap_or(TokenClass { input: 0.0, output: 0.0, weight: 1.0 });
                Batch { arrival, deadline: arrival + self.window_s, requests, input_tokens: class.input, output_tokens: class.output }
            })
            .collect()
    }
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Model id; default the first hosted model with two or more priced sites.
    pub model: Option<String>,
    pub batches: BatchSpec,
    /// The scheduler's settings (slot, margin, forecast); its fallback price is taken from the
    /// energy settings.
    pub schedule: ScheduleSettings,
    /// Seconds from an interval's start until its real-time price is known.
    pub feed_delay: i64,
}

/// One line of the result table.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub plan: String,
    /// $ for every batch's requests that ran.
    pub cost: f64,
    /// The energy part of `cost`, $.
    pub energy: f64,
    /// `(at submission − energy) / at submission`.
    pub energy_savings: f64,
    /// `(at submission − energy) / (at submission − oracle)`, energy parts; none when the
    /// oracle saves nothing.
    pub share_of_oracle_savings: Option<f64>,
    /// Batches whose every request ran in a slot that ended by the deadline.
    pub deadlines_met: usize,
    /// Requests that ran.
    pub requests: f64,
    /// Mean hours from a request's batch arrival to the start of its slot.
    pub mean_delay_hours: f64,
}

/// Mean absolute forecast error at one horizon.
#[derive(Debug, Clone, Serialize)]
pub struct ForecastError {
    pub horizon_hours: i64,
    /// The forecast the joule line plans with, $/MWh.
    pub mae: f64,
    /// The last known price carried forward, $/MWh (for comparison).
    pub mae_last_price: f64,
}

/// The evaluation result.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub model: String,
    pub sites: Vec<String>,
    pub from: String,
    pub to: String,
    pub slot_seconds: i64,
    pub feed_delay_seconds: i64,
    pub margin_share: f64,
    /// The forecast settings, as `--forecast` takes them.
    pub forecast: String,
    pub spec: BatchSpec,
    pub batches: usize,
    pub requests: f64,
    pub input_tokens: f64,
    pub output_tokens: f64,
    /// Day-ahead rows of the trace for the sites' nodes.
    pub day_ahead_rows: usize,
    pub rejected_rows: usize,
    pub forecast_error: Vec<ForecastError>,
    pub outcomes: Vec<Outcome>,
}

/// The run-at-submission line's name.
pub const AT_SUBMISSION: &str = "run at submission";
/// The oracle's line.
pub const ORACLE: &str = "oracle (hindsight, no margin)";
/// The joule line planning with the trace's own forecast.
pub const JOULE: &str = "joule";
/// The joule line with the true prices as day-ahead rows.
pub const JOULE_PERFECT_DAY_AHEAD: &str = "joule, perfect day-ahead";
/// The joule line knowing every true price.
pub const JOULE_FORESIGHT: &str = "joule, perfect foresight";

impl Evaluation {
    /// The outcome of a plan by name (a prefix of it).
    pub fn outcome(&self, plan: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.plan.starts_with(plan))
    }

    /// A Markdown table.
    pub fn table(&self) -> String {
        let mut s = heading(&self.model, self.sites.len(), &self.from, &self.to);
        let _ = writeln!(
            s,
            ", {} batches ({:.0} requests, {:.2e} input + {:.2e} output tokens), window {}, capacity {} req/s per site, slot {}, feed delay {}, margin {} %",
            self.batches,
            self.requests,
            self.input_tokens,
            self.output_tokens,
            format_duration(self.spec.window_s),
            self.spec.capacity,
            format_duration(self.slot_seconds),
            format_duration(self.feed_delay_seconds),
            100.0 * self.margin_share,
        );
        let _ = writeln!(s);
        let rows = self.outcomes.iter().map(|o| {
            vec![
                o.plan.clone(),
                format!("{:.2}", o.cost),
                format!("{:.2}", o.energy),
                format!("{:.1} %", 100.0 * o.energy_savings),
                percent(o.share_of_oracle_savings),
                format!("{}/{}", o.deadlines_met, self.batches),
                format!("{:.1}", o.mean_delay_hours),
            ]
        });
        let header = ["plan", "cost $", "energy $", "energy savings", "share of oracle savings", "deadlines met", "mean delay h"];
        markdown_table(&mut s, &header, rows);
        let _ = writeln!(s);
        let errors: Vec<String> = self.forecast_error.iter().map(|e| format!("{:.1}", e.mae)).collect();
        let last: Vec<String> = self.forecast_error.iter().map(|e| format!("{:.1}", e.mae_last_price)).collect();
        let hours: Vec<String> = self.forecast_error.iter().map(|e| format!("{} h", e.horizon_hours)).collect();
        let _ = writeln!(
            s,
            "forecast {}: mean absolute error {} ahead {} $/MWh (last price carried forward: {}); {} day-ahead rows; {} trace rows rejected",
            self.forecast,
            hours.join(" / "),
            errors.join(" / "),
            last.join(" / "),
            self.day_ahead_rows,
            self.rejected_rows,
        );
        s
    }
}

/// Loads trace files and evaluates.
///
/// # Errors
/// See [`EvalError`].
pub fn evaluate_files(catalog: &Catalog, energy: &EnergySettings, files: &[std::path::PathBuf], setup: &Setup) -> Result<Evaluation, EvalError> {
    let nodes = catalog.data_centers.iter().filter_map(|d| d.price_node.clone()).collect();
    let sources: Vec<ReplaySource> = files.iter().cloned().map(ReplaySource::File).collect();
    let trace = Trace::load(&sources, &nodes).map_err(routing_eval::EvalError::from)?;
    evaluate(catalog, energy, trace.rows(), trace.bad_rows(), setup)
}

/// Day-ahead prices of one node as the simulation learns them: (publication, interval),
/// publication ascending (then interval start).
type Ahead = Vec<(i64, PricePoint)>;

/// Everything a simulated plan needs.
struct World<'a> {
    catalog: &'a Catalog,
    model: &'a Model,
    sites: Sites,
    schedule: ScheduleSettings,
    /// Per site: the real-time prices accepted, interval start ascending.
    history: Vec<Vec<PricePoint>>,
    /// `truth[k][s]`: cost and energy part, $/Mtok, of site `s` in slot `k`.
    truth: Vec<Vec<(TokenPrice, TokenPrice)>>,
    from: i64,
    slot: i64,
    per_slot: f64,
    batches: Vec<Batch>,
    feed_delay: i64,
}

impl World<'_> {
    fn ticks(&self) -> usize {
        self.truth.len()
    }

    fn tick(&self, k: usize) -> i64 {
        self.from + self.slot * k as i64
    }

    /// First slot a batch may use: the first tick at or after its arrival.
    fn first_slot(&self, b: &Batch) -> usize {
        ((b.arrival - self.from + self.slot - 1).div_euclid(self.slot)).max(0) as usize
    }

    /// Slots `first_slot..end_slot` end by the batch's deadline.
    fn end_slot(&self, b: &Batch) -> usize {
        (((b.deadline - self.from).div_euclid(self.slot)).max(0) as usize).min(self.ticks())
    }

    /// A site's known real-time history at tick time `t`.
    fn known(&self, site: usize, t: i64) -> &[PricePoint] {
        let h = &self.history[site];
        &h[..h.partition_point(|p| p.start <= t - self.feed_delay)]
    }

    /// A site's day-ahead prices published by `t`, from a day before `t` to `until`.
    fn ahead(ahead: &Ahead, t: i64, until: i64) -> Vec<PricePoint> {
        let published = &ahead[..ahead.partition_point(|(r, _)| *r <= t)];
        let from = published.partition_point(|(_, p)| p.end() <= t - day_ahead::KEEP_PAST_S);
        published[from..].iter().map(|(_, p)| *p).take_while(|p| p.start < until).collect()
    }

    fn forecast(&self, site: usize, ahead: &[Ahead], t: i64, until: i64) -> NodeForecast {
        let da = Self::ahead(&ahead[site], t, until);
        NodeForecast::build(&self.schedule.forecast, self.known(site, t), &da, t)
    }
}

/// What a plan did.
struct Run {
    cost: f64,
    energy: f64,
    requests: f64,
    delay: f64,
    met: usize,
}

/// Charges `x` requests of batch `b` in slot `k` at site `s`.
fn charge(world: &World<'_>, run: &mut Run, b: &Batch, k: usize, s: usize, x: f64) {
    let (cost, energy) = world.truth[k][s];
    let per = |p: TokenPrice| (b.input_tokens * p.input + b.output_tokens * p.output) / 1e6;
    run.cost += x * per(cost);
    run.energy += x * per(energy);
    run.requests += x;
    run.delay += x * (world.tick(k) - b.arrival) as f64;
}

const EPS: f64 = 1e-6;

/// What a plan runs in one slot: given the slot and the active batches (index, requests left;
/// arrival order), the requests of each per site.
type Step<'s> = dyn FnMut(usize, &[(usize, f64)]) -> Vec<Vec<f64>> + 's;

/// Ticks through the trace; `step(k, active)` says what each active batch (index, requests
/// left; arrival order) runs in slot `k`, per site. Returns the run.
fn simulate(world: &World<'_>, step: &mut Step<'_>) -> Run {
    let mut run = Run { cost: 0.0, energy: 0.0, requests: 0.0, delay: 0.0, met: 0 };
    let mut left: Vec<f64> = world.batches.iter().map(|b| b.requests).collect();
    let mut finished: Vec<i64> = vec![i64::MIN; world.batches.len()];
    for k in 0..world.ticks() {
        let active: Vec<(usize, f64)> = (0..world.batches.len())
            .filter(|&i| left[i] > EPS && world.first_slot(&world.batches[i]) <= k)
            .map(|i| (i, left[i]))
            .collect();
        if active.is_empty() {
            continue;
        }
        let runs = step(k, &active);
        for (&(i, _), now) in active.iter().zip(runs) {
            for (s, x) in now.into_iter().enumerate() {
                let x = x.min(left[i]);
                if x > EPS {
                    charge(world, &mut run, &world.batches[i], k, s, x);
                    left[i] -= x;
                    finished[i] = world.tick(k) + world.slot;
                }
            }
        }
    }
    run.met = world.batches.iter().zip(&left).zip(&finished).filter(|((b, l), f)| **l <= EPS && **f <= b.deadline).count();
    run
}

/// Run at submission: arrival order, the `price` ranking's order of sites on known prices.
fn at_submission(world: &World<'_>, rows: &[EnergyRow], energy: &EnergySettings) -> (Run, usize) {
    let mut known = Feeder::new(rows, energy, &world.sites.nodes);
    let ranker = Ranker::new(world.catalog, world.model);
    let run = simulate(world, &mut |k, active| {
        let t = world.tick(k);
        known.advance(t - world.feed_delay, t);
        let book = PriceBook::build(world.catalog, known.table(), energy.stale_fallback_usd_per_mwh, t);
        let (order, _) = ranker.order(world.catalog, &book, world.model, &world.sites);
        let mut cap = vec![world.per_slot; world.sites.deployments.len()];
        active
            .iter()
            .map(|&(_, mut need)| {
                let mut now = vec![0.0; cap.len()];
                for &s in &order {
                    let x = need.min(cap[s]);
                    now[s] += x;
                    cap[s] -= x;
                    need -= x;
                }
                now
            })
            .collect()
    });
    (run, known.rejected)
}

/// The joule scheduler with forecasts from `ahead` (per site) and the known history.
fn joule(world: &World<'_>, ahead: &[Ahead]) -> Run {
    let sites: Vec<Site> =
        world.sites.deployments.iter().map(|&d| Site { deployment: d, requests_per_slot: world.per_slot }).collect();
    simulate(world, &mut |k, active| {
        let t = world.tick(k);
        let pending: Vec<Pending> = active
            .iter()
            .map(|&(i, remaining)| {
                let b = &world.batches[i];
                Pending { remaining, created: b.arrival, deadline: b.deadline, input_tokens: b.input_tokens, output_tokens: b.output_tokens }
            })
            .collect();
        let until = pending.iter().map(|p| p.deadline).max().unwrap_or(t) + world.slot;
        let forecast = |node: &str| {
            let site = world.sites.nodes.iter().position(|n| n == node)?;
            Some(world.forecast(site, ahead, t, until))
        };
        schedule::decide(&world.schedule, world.catalog, world.model, &sites, &forecast, &pending, t).into_iter().map(|p| p.now).collect()
    })
}

/// The exact optimum with every true price known.
fn hindsight(world: &World<'_>) -> Run {
    let ns = world.sites.deployments.len();
    let mut arcs = Vec::new();
    for (i, b) in world.batches.iter().enumerate() {
        for k in world.first_slot(b)..world.end_slot(b) {
            for s in 0..ns {
                let (cost, _) = world.truth[k][s];
                arcs.push(Arc { batch: i, cell: k * ns + s, cost: (b.input_tokens * cost.input + b.output_tokens * cost.output) / 1e6 });
            }
        }
    }
    let supply: Vec<f64> = world.batches.iter().map(|b| b.requests).collect();
    let capacity = vec![world.per_slot; world.ticks() * ns];
    let solution = oracle::solve(&supply, &capacity, &arcs);
    let mut run = Run { cost: 0.0, energy: 0.0, requests: 0.0, delay: 0.0, met: 0 };
    for (a, &x) in arcs.iter().zip(&solution.flow) {
        if x > EPS {
            charge(world, &mut run, &world.batches[a.batch], a.cell / ns, a.cell % ns, x);
        }
    }
    run.met = solution.unmet.iter().filter(|u| **u <= EPS).count();
    run
}

/// Mean absolute error of the forecast (and of the last price carried forward) at 1, 6 and 24
/// hours, sampled hourly from the first arrival while the truth is known.
fn forecast_error(world: &World<'_>, ahead: &[Ahead], to: i64) -> Vec<ForecastError> {
    let horizons = [1i64, 6, 24];
    let mut sums = vec![(0.0, 0.0, 0usize); horizons.len()];
    let first = world.batches.first().map_or(world.from, |b| b.arrival);
    let truth_at = |s: usize, t: i64| {
        let h = &world.history[s];
        h[..h.partition_point(|p| p.start <= t)].last().map(|p| p.usd_per_mwh)
    };
    let mut t = first - first.rem_euclid(3600);
    while t + 3600 < to {
        for s in 0..world.sites.deployments.len() {
            if world.sites.nodes[..s].contains(&world.sites.nodes[s]) {
                continue;
            }
            let f = world.forecast(s, ahead, t, t + 25 * 3600);
            let last = f.last().map(|p| p.usd_per_mwh);
            for (j, &h) in horizons.iter().enumerate() {
                let at = t + h * 3600;
                if at >= to {
                    continue;
                }
                if let (Some(real), Some(guess), Some(last)) = (truth_at(s, at), f.at(at), last) {
                    sums[j].0 += (guess - real).abs();
                    sums[j].1 += (last - real).abs();
                    sums[j].2 += 1;
                }
            }
        }
        t += 3600;
    }
    horizons
        .iter()
        .zip(sums)
        .map(|(&h, (e, l, n))| {
            let n = n.max(1) as f64;
            ForecastError { horizon_hours: h, mae: e / n, mae_last_price: l / n }
        })
        .collect()
}

/// The simulation ready to run: the world, the real-time rows, the trace's day-ahead prices
/// per site, and what was counted on the way.
struct Prepared<'a> {
    world: World<'a>,
    rt: Vec<EnergyRow>,
    from_trace: Vec<Ahead>,
    day_ahead_rows: usize,
    to: i64,
    rejected_rows: usize,
}

/// Sorts day-ahead knowledge by publication, then interval start.
fn by_publication(mut v: Ahead) -> Ahead {
    v.sort_by_key(|(r, p)| (*r, p.start));
    v
}

fn prepare<'a>(catalog: &'a Catalog, energy: &EnergySettings, rows: &[EnergyRow], setup: &Setup) -> Result<Prepared<'a>, EvalError> {
    let slot = setup.schedule.slot_s;
    if slot < 1 {
        return Err(EvalError::Slot);
    }
    if !(0.0..1.0).contains(&setup.schedule.margin_share) {
        return Err(EvalError::Margin);
    }
    let (model, sites) = Sites::of(catalog, setup.model.as_deref())?;
    let (rt, from, to) = sites.overlap(rows)?;
    let spec = &setup.batches;
    let (first, last) = (from + spec.start_s, to - spec.window_s);
    if last < first {
        return Err(EvalError::TooShort {
            span: format_duration(to - from),
            start: format_duration(spec.start_s),
            window: format_duration(spec.window_s),
        });
    }
    let batches = spec.generate(first, last);

    // The truth, tick by tick, through the real row rules and price book (last price, never
    // the fallback).
    let mut truth_feed = Feeder::new(&rt, energy, &sites.nodes);
    let mut history: Vec<Vec<PricePoint>> = vec![Vec::new(); sites.nodes.len()];
    let mut truth = Vec::new();
    let mut t = from;
    while t < to {
        for r in truth_feed.advance(t, t) {
            for (s, n) in sites.nodes.iter().enumerate() {
                if *n == r.node {
                    history[s].push(r.price.into());
                }
            }
        }
        let book = PriceBook::build(catalog, truth_feed.table(), f64::NEG_INFINITY, t);
        truth.push(sites.costs(catalog, &book, model));
        t += slot;
    }
    let rejected_rows = truth_feed.rejected;
    let da_rows: Vec<&EnergyRow> = rows.iter().filter(|r| r.market == Market::DayAhead && sites.nodes.contains(&r.node)).collect();
    let from_trace: Vec<Ahead> = sites
        .nodes
        .iter()
        .map(|n| by_publication(da_rows.iter().filter(|r| r.node == *n).map(|r| (r.due(), PricePoint::from(r.price))).collect()))
        .collect();
    let schedule = ScheduleSettings { fallback_usd_per_mwh: energy.stale_fallback_usd_per_mwh, ..setup.schedule.clone() };
    let world = World {
        catalog,
        model,
        sites,
        schedule,
        history,
        truth,
        from,
        slot,
        per_slot: spec.capacity * slot as f64,
        batches,
        feed_delay: setup.feed_delay,
    };
    Ok(Prepared { world, rt, from_trace, day_ahead_rows: da_rows.len(), to, rejected_rows })
}

/// Evaluates on rows of a trace (any order; day-ahead rows feed the joule line's forecast).
///
/// # Errors
/// See [`EvalError`].
pub fn evaluate(catalog: &Catalog, energy: &EnergySettings, rows: &[EnergyRow], rejected_rows: usize, setup: &Setup) -> Result<Evaluation, EvalError> {
    let p = prepare(catalog, energy, rows, setup)?;
    let world = &p.world;
    // Day-ahead knowledge besides the trace's own: the true prices published as a day-ahead
    // market would, and every true price from the start.
    let published: Vec<Ahead> =
        world.history.iter().map(|h| by_publication(h.iter().map(|x| (day_ahead::release(x.start), *x)).collect())).collect();
    let foresight: Vec<Ahead> = world.history.iter().map(|h| h.iter().map(|x| (i64::MIN, *x)).collect()).collect();

    let (submission, rejected) = at_submission(world, &p.rt, energy);
    let label = if p.day_ahead_rows == 0 { "joule, forecast from history" } else { "joule, day-ahead + history forecast" };
    let runs = vec![
        (AT_SUBMISSION.to_string(), submission),
        (label.to_string(), joule(world, &p.from_trace)),
        (JOULE_PERFECT_DAY_AHEAD.to_string(), joule(world, &published)),
        (JOULE_FORESIGHT.to_string(), joule(world, &foresight)),
        (ORACLE.to_string(), hindsight(world)),
    ];
    let base = runs[0].1.energy;
    let best = runs.last().map_or(base, |r| r.1.energy);
    let outcomes = runs
        .into_iter()
        .map(|(plan, r)| Outcome {
            plan,
            cost: r.cost,
            energy: r.energy,
            energy_savings: if base.abs() > 0.0 { (base - r.energy) / base.abs() } else { 0.0 },
            share_of_oracle_savings: share(base, r.energy, best),
            deadlines_met: r.met,
            requests: r.requests,
            mean_delay_hours: if r.requests > 0.0 { r.delay / r.requests / 3600.0 } else { 0.0 },
        })
        .collect();
    let requests: f64 = world.batches.iter().map(|b| b.requests).sum();
    Ok(Evaluation {
        model: world.model.id.clone(),
        sites: world.sites.names.clone(),
        from: format_rfc3339(world.from),
        to: format_rfc3339(p.to),
        slot_seconds: world.slot,
        feed_delay_seconds: setup.feed_delay,
        margin_share: setup.schedule.margin_share,
        forecast: setup.schedule.forecast.describe(),
        spec: setup.batches.clone(),
        batches: world.batches.len(),
        requests,
        input_tokens: world.batches.iter().map(|b| b.requests * b.input_tokens).sum(),
        output_tokens: world.batches.iter().map(|b| b.requests * b.output_tokens).sum(),
        day_ahead_rows: p.day_ahead_rows,
        rejected_rows: rejected_rows + p.rejected_rows + rejected,
        forecast_error: forecast_error(world, &p.from_trace, p.to),
        outcomes,
    })
}

/// `(base − x) / (base − best)`; none when the best saves nothing.
fn share(base: f64, x: f64, best: f64) -> Option<f64> {
    (base - best > 1e-12).then(|| (base - x) / (base - best))
}

#[cfg(test)]
mod tests;
