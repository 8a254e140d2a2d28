//! Routing: strategy tags, candidates, the combination rule, the native ranking and the Wasm
//! strategy host ([`wasm`]). The native ranking is the fallback whenever a Wasm strategy
//! faults, is disabled or is not loaded for a built-in tag.
//!
//! Combination rule (documented in the README): each strategy gives every candidate a raw
//! score (lower is better) or excludes it. A candidate excluded by any strategy is dropped.
//! Each strategy's scores are min–max normalised over the surviving candidates (all equal → 0),
//! averaged over the strategies, and ranked ascending; ties keep catalog order. Only the *set*
//! of tags matters, so every order of the same tags gives the same ranking.

pub mod evaluate;
pub mod tags;
pub mod wasm;

use std::sync::Arc;

use crate::catalog::{Catalog, DeploymentKind, Model, Quote};
use crate::pricing::PriceBook;
use crate::telemetry::{BreakerState, Telemetry};
use tags::{Strategy, StrategySet};

/// A deployment with its numbers at decision time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Index into the model's `deployments`.
    pub deployment: usize,
    pub quote: Quote,
    /// Smoothed time to first token, ms (see [`crate::telemetry`]); strategies add the
    /// in-flight load and health ([`expected_ttft_ms`]).
    pub ttft_ms: f64,
    /// Smoothed decode rate, tokens/s ([`expected_tokens_per_s`] adds load and health).
    pub tokens_per_s: f64,
    /// Smoothed end-to-end latency, ms.
    pub latency_ms: f64,
    /// Smoothed error rate, 0..1.
    pub error_rate: f64,
    /// Requests in flight there now.
    pub in_flight: u32,
    pub breaker: BreakerState,
    /// Probability an attempt succeeds, 0..=1: 1 − error rate, halved while the breaker is
    /// half-open.
    pub health: f64,
    /// Electricity price at the deployment's data center, $/MWh, when it has a price node.
    pub energy_price: Option<f64>,
    /// Index of the hosted deployment's data center in the catalog.
    pub data_center: Option<u32>,
}

/// Builds the candidates of model `model_index`: quotes from the price book (energy-priced,
/// computed when prices last changed), TTFT, token rate and health from live telemetry.
///
/// Deployments whose breaker is open are left out; if that leaves none, the one whose
/// breaker opened longest ago is the only candidate. With telemetry disabled, the configured
/// priors stand in for measurements.
pub fn candidates(
    catalog: &Catalog,
    book: &PriceBook,
    model: &Model,
    model_index: usize,
    telemetry: &Telemetry,
) -> Vec<Candidate> {
    let quotes = book.quotes_of(catalog, model);
    let all: Vec<Candidate> = model
        .deployments
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let quote = quotes.and_then(|q| q.get(i)).copied().unwrap_or_else(|| catalog.quote(model, d));
            let (data_center, energy_price) = match d.kind {
                DeploymentKind::Hosted { data_center, .. } => (
                    u32::try_from(data_center).ok(),
                    catalog.data_centers.get(data_center).and_then(|dc| dc.price_node.as_ref()).and(book.site(catalog, data_center)).map(|e| e.usd_per_mwh),
                ),
                DeploymentKind::Provider { .. } => (None, None),
            };
            match telemetry.get(model_index, i).filter(|_| telemetry.settings.enabled) {
                Some(st) => {
                    // Raw smoothed numbers: strategies apply load and health themselves
                    // (`expected_ttft_ms`, `expected_tokens_per_s`, and the plugins' SDK).
                    let s = st.snapshot();
                    Candidate {
                        deployment: i,
                        quote,
                        ttft_ms: s.ttft_ms,
                        tokens_per_s: s.tokens_per_s,
                        latency_ms: s.latency_ms,
                        error_rate: s.error_rate,
                        in_flight: s.in_flight,
                        breaker: s.breaker,
                        health: (1.0 - s.error_rate).clamp(0.0, 1.0) * if s.breaker == BreakerState::HalfOpen { 0.5 } else { 1.0 },
                        energy_price,
                        data_center,
                    }
                }
                None => Candidate {
                    deployment: i,
                    quote,
                    ttft_ms: d.prior.ttft_ms,
                    tokens_per_s: d.prior.tokens_per_s,
                    latency_ms: d.prior.ttft_ms,
                    error_rate: 0.0,
                    in_flight: 0,
                    breaker: BreakerState::Closed,
                    health: 1.0,
                    energy_price,
                    data_center,
                },
            }
        })
        .collect();
    if all.iter().any(|c| c.breaker != BreakerState::Open) {
        return all.into_iter().filter(|c| c.breaker != BreakerState::Open).collect();
    }
    // Every breaker is open: try the one that opened longest ago.
    let oldest = all.iter().enumerate().max_by_key(|(_, c)| {
        telemetry.get(model_index, c.deployment).and_then(|st| st.snapshot().open_for).unwrap_or_default()
    });
    oldest.map(|(i, _)| vec![all[i]]).unwrap_or_default()
}

/// Requests in flight at which a deployment's expected TTFT doubles. The same load model as
/// the built-in plugins (`plugins/sdk`: `LOAD_SLOTS`), so the fallback ranks like them.
pub const LOAD_SLOTS: f64 = 4.0;
/// Lowest health divided by (`plugins/sdk`: `MIN_HEALTH`).
pub const MIN_HEALTH: f64 = 0.01;

/// Expected TTFT with load and health: `ttft × (1 + in_flight / LOAD_SLOTS) / health`, since
/// an attempt succeeds with probability `health`.
pub fn expected_ttft_ms(c: &Candidate) -> f64 {
    c.ttft_ms * (1.0 + f64::from(c.in_flight) / LOAD_SLOTS) / c.health.clamp(MIN_HEALTH, 1.0)
}

/// Expected decode rate with load and health: `tokens_per_s × health / (1 + in_flight / LOAD_SLOTS)`.
pub fn expected_tokens_per_s(c: &Candidate) -> f64 {
    c.tokens_per_s * c.health.clamp(MIN_HEALTH, 1.0) / (1.0 + f64::from(c.in_flight) / LOAD_SLOTS)
}

/// A built-in strategy's raw score, computed natively; the same formula as its plugin.
pub fn native_score(s: Strategy, c: &Candidate) -> f64 {
    match s {
        // The current token price from the price book (energy included). `cost` equals the
        // client price except for free models, which still go where they cost us least.
        Strategy::Price => c.quote.cost.input + c.quote.cost.output,
        Strategy::Latency => expected_ttft_ms(c),
        Strategy::TokenRate => -expected_tokens_per_s(c),
    }
}

/// Where a strategy's scores came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// A Wasm plugin of this version (its `describe().version`) and content hash.
    Wasm { version: Arc<str>, sha256: Arc<str> },
    /// The built-in native implementation.
    Native,
}

/// One strategy's contribution to a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyRun {
    pub tag: Arc<str>,
    pub engine: Engine,
    /// Raw scores in candidate (catalog) order; `None` = excluded.
    pub scores: Vec<Option<f64>>,
}

/// Why a decision used the native ranking instead of the requested plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// The plugin for `tag` faulted on this call.
    Fault { tag: Arc<str>, kind: wasm::FaultKind },
    /// The plugin for `tag` is disabled after repeated faults.
    Disabled { tag: Arc<str> },
    /// No plugin is loaded for the operator tag `tag` (e.g. removed, or a default naming a
    /// strategy that is not deployed).
    Missing { tag: Arc<str> },
}

impl Fallback {
    /// Closed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Fallback::Fault { .. } => "fault",
            Fallback::Disabled { .. } => "disabled",
            Fallback::Missing { .. } => "missing",
        }
    }

    /// The tag whose plugin could not be used.
    pub fn tag(&self) -> &Arc<str> {
        match self {
            Fallback::Fault { tag, .. } | Fallback::Disabled { tag } | Fallback::Missing { tag } => tag,
        }
    }
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fallback::Fault { tag, kind } => write!(f, "{tag} faulted ({})", kind.label()),
            Fallback::Disabled { tag } => write!(f, "{tag} disabled"),
            Fallback::Missing { tag } => write!(f, "{tag} not loaded"),
        }
    }
}

/// Ranked candidates with their combined scores, best first, and how they were obtained.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    /// Surviving candidates, best first, with their combined score (0 = best on every strategy).
    pub ranked: Vec<(Candidate, f64)>,
    /// Candidates some strategy excluded, in catalog order.
    pub excluded: Vec<Candidate>,
    /// The requested (or default) strategies.
    pub strategies: StrategySet,
    /// What actually ran, one entry per strategy, in tag order.
    pub runs: Vec<StrategyRun>,
    /// Set when the plugins could not be used and the native ranking answered instead.
    pub fallback: Option<Fallback>,
}

impl RouteDecision {
    /// `x-joule-strategy` value: each strategy with the version that ran (`native` for the
    /// built-in implementation), joined by `+`, plus the fallback reason if any, e.g.
    /// `latency@1.0.0+price@1.0.0` or `price@native (fallback: green not loaded)`.
    pub fn strategy_header(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.runs.iter().enumerate() {
            if i > 0 {
                s.push('+');
            }
            s.push_str(&r.tag);
            s.push('@');
            match &r.engine {
                Engine::Wasm { version, .. } => s.push_str(version),
                Engine::Native => s.push_str("native"),
            }
        }
        if let Some(f) = &self.fallback {
            s.push_str(&format!(" (fallback: {f})"));
        }
        s
    }
}

/// The combination rule over per-strategy scores: `scores[s][i]` is strategy `s`'s score of
/// candidate `i` (`None` excludes it). Returns the surviving candidates' indices with their
/// combined score, best first (ties by index, i.e. catalog order), and the excluded indices.
///
/// Scores are expected finite; a strategy whose scores span no finite range contributes 0.
pub fn combine(n: usize, scores: &[&[Option<f64>]]) -> (Vec<(usize, f64)>, Vec<usize>) {
    let survives = |i: usize| scores.iter().all(|s| matches!(s.get(i), Some(Some(_))));
    let mut ranked: Vec<(usize, f64)> = Vec::with_capacity(n);
    let mut excluded = Vec::new();
    for i in 0..n {
        if survives(i) {
            ranked.push((i, 0.0));
        } else {
            excluded.push(i);
        }
    }
    for s in scores {
        let raw = |i: usize| s[i].unwrap_or(0.0);
        let (lo, hi) = ranked.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(i, _)| (lo.min(raw(i)), hi.max(raw(i))));
        let span = hi - lo;
        if span > 0.0 && span.is_finite() {
            for (i, acc) in &mut ranked {
                *acc += (raw(*i) - lo) / span;
            }
        }
    }
    let k = scores.len().max(1) as f64;
    for (_, acc) in &mut ranked {
        *acc /= k;
    }
    ranked.sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    (ranked, excluded)
}

/// Builds a decision from strategy runs over `cands` with [`combine`].
pub fn decide(cands: &[Candidate], strategies: &StrategySet, runs: Vec<StrategyRun>, fallback: Option<Fallback>) -> RouteDecision {
    let views: Vec<&[Option<f64>]> = runs.iter().map(|r| r.scores.as_slice()).collect();
    let (ranked, excluded) = combine(cands.len(), &views);
    RouteDecision {
        ranked: ranked.into_iter().map(|(i, s)| (cands[i], s)).collect(),
        excluded: excluded.into_iter().map(|i| cands[i]).collect(),
        strategies: strategies.clone(),
        runs,
        fallback,
    }
}

/// The native runs for a strategy set: its built-in strategies, or `price` when it has none
/// (an operator-only set whose plugins cannot be used).
pub fn native_runs(cands: &[Candidate], strategies: &StrategySet) -> Vec<StrategyRun> {
    let mut builtins: Vec<Strategy> = strategies.builtins().collect();
    if builtins.is_empty() {
        builtins.push(Strategy::Price);
    }
    builtins
        .into_iter()
        .map(|s| StrategyRun {
            tag: Arc::from(s.tag()),
            engine: Engine::Native,
            scores: cands.iter().map(|c| Some(native_score(s, c))).collect(),
        })
        .collect()
}

/// Ranks candidates natively with the combination rule of this module.
pub fn rank_native(cands: Vec<Candidate>, strategies: &StrategySet) -> RouteDecision {
    let runs = native_runs(&cands, strategies);
    decide(&cands, strategies, runs, None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::{Quote, TokenPrice};

    pub(crate) fn cand(i: usize, price: f64, ttft: f64, tps: f64) -> Candidate {
        let p = TokenPrice { input: price, output: price };
        Candidate {
            deployment: i,
            quote: Quote { price: p, cost: p, ..Quote::default() },
            ttft_ms: ttft,
            tokens_per_s: tps,
            latency_ms: ttft,
            error_rate: 0.0,
            in_flight: 0,
            breaker: BreakerState::Closed,
            health: 1.0,
            energy_price: None,
            data_center: None,
        }
    }

    fn order(d: &RouteDecision) -> Vec<usize> {
        d.ranked.iter().map(|(c, _)| c.deployment).collect()
    }

    #[test]
    fn single_strategies() {
        let c = vec![cand(0, 3.0, 100.0, 50.0), cand(1, 1.0, 300.0, 20.0), cand(2, 2.0, 200.0, 90.0)];
        let p = |s| tags::StrategySet::parse_list(s).unwrap();
        assert_eq!(order(&rank_native(c.clone(), &p("price"))), vec![1, 2, 0]);
        assert_eq!(order(&rank_native(c.clone(), &p("latency"))), vec![0, 2, 1]);
        assert_eq!(order(&rank_native(c.clone(), &p("tokenrate"))), vec![2, 0, 1]);
        // price: 0=1, 1=0, 2=.5 ; latency: 0=0, 1=1, 2=.5 → averages .5,.5,.5 → catalog order
        assert_eq!(order(&rank_native(c.clone(), &p("price@latency"))), vec![0, 1, 2]);
        let d = rank_native(c, &p("price@latency"));
        assert_eq!(d.strategy_header(), "latency@native+price@native");
    }

    #[test]
    fn every_permutation_same_ranking() {
        let c = vec![cand(0, 3.0, 100.0, 50.0), cand(1, 1.0, 300.0, 20.0), cand(2, 2.0, 150.0, 90.0), cand(3, 2.5, 120.0, 10.0)];
        let perms = ["price@latency@tokenrate", "price@tokenrate@latency", "latency@price@tokenrate",
            "latency@tokenrate@price", "tokenrate@price@latency", "tokenrate@latency@price"];
        let first = order(&rank_native(c.clone(), &tags::StrategySet::parse_list(perms[0]).unwrap()));
        for p in perms {
            assert_eq!(order(&rank_native(c.clone(), &tags::StrategySet::parse_list(p).unwrap())), first, "{p}");
        }
    }

    #[test]
    fn equal_scores_and_single_candidate() {
        let c = vec![cand(0, 1.0, 1.0, 1.0), cand(1, 1.0, 1.0, 1.0)];
        let d = rank_native(c, &StrategySet::default_price());
        assert_eq!(order(&d), vec![0, 1]);
        assert!(d.ranked.iter().all(|(_, s)| *s == 0.0));
        assert_eq!(order(&rank_native(vec![cand(5, 9.0, 1.0, 1.0)], &StrategySet::default_price())), vec![5]);
    }

    #[test]
    fn load_and_health_shift_latency_and_tokenrate() {
        let mut busy = cand(0, 1.0, 100.0, 100.0);
        busy.in_flight = 8; // expected TTFT 300 ms, rate 33 tok/s
        let idle = cand(1, 1.0, 200.0, 50.0);
        let mut sick = cand(2, 1.0, 50.0, 200.0);
        sick.health = 0.1; // expected TTFT 500 ms, rate 20 tok/s
        let c = vec![busy, idle, sick];
        let p = |s| tags::StrategySet::parse_list(s).unwrap();
        assert_eq!(order(&rank_native(c.clone(), &p("latency"))), vec![1, 0, 2]);
        assert_eq!(order(&rank_native(c, &p("tokenrate"))), vec![1, 0, 2]);
        let mut dead = cand(3, 1.0, 10.0, 10.0);
        dead.health = 0.0;
        assert!(expected_ttft_ms(&dead).is_finite() && expected_tokens_per_s(&dead) > 0.0);
    }

    #[test]
    fn exclusion_drops_candidates_before_normalising() {
        let a = [Some(1.0), None, Some(3.0), Some(2.0)];
        let b = [Some(10.0), Some(0.0), Some(30.0), None];
        let (ranked, excluded) = combine(4, &[&a, &b]);
        assert_eq!(excluded, vec![1, 3]);
        // survivors 0 and 2: a → 0, 1; b → 0, 1
        assert_eq!(ranked, vec![(0, 0.0), (2, 1.0)]);
        let (ranked, excluded) = combine(2, &[&[None, None]]);
        assert!(ranked.is_empty());
        assert_eq!(excluded, vec![0, 1]);
    }

    #[test]
    fn operator_only_set_falls_back_to_price() {
        let c = vec![cand(0, 3.0, 100.0, 50.0), cand(1, 1.0, 300.0, 20.0)];
        let d = rank_native(c, &tags::StrategySet::parse_list("green").unwrap());
        assert_eq!(order(&d), vec![1, 0]);
        assert_eq!(&*d.runs[0].tag, "price");
    }
}
