//! Routing: strategy tags, candidates and the native ranking. The native ranking is what
//! runs until Wasm strategies exist, and stays as their fallback.
//!
//! Combination rule (documented in the README): each strategy gives every candidate a raw
//! score (lower is better); scores are min–max normalised per strategy over the candidates
//! (all equal → 0), averaged over the strategies, and ranked ascending; ties keep catalog order.

pub mod tags;

use crate::catalog::{Catalog, Model, Quote};
use crate::telemetry::{BreakerState, Telemetry};
use crate::pricing::PriceBook;
use tags::{Strategy, StrategySet};

/// A deployment with its numbers at decision time.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Index into the model's `deployments`.
    pub deployment: usize,
    pub quote: Quote,
    /// Expected time to first token, ms: the smoothed TTFT scaled up by the requests already
    /// in flight there (see [`crate::telemetry`]).
    pub ttft_ms: f64,
    /// Expected decode rate, tokens/s: the smoothed rate scaled down by the in-flight load.
    pub tokens_per_s: f64,
    /// Smoothed end-to-end latency, ms.
    pub latency_ms: f64,
    /// Smoothed error rate, 0..1.
    pub error_rate: f64,
    /// Requests in flight there now.
    pub in_flight: u32,
    pub breaker: BreakerState,
}

/// Ranked candidates with their combined scores, best first.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    pub ranked: Vec<(Candidate, f64)>,
    pub strategies: StrategySet,
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
            match telemetry.get(model_index, i).filter(|_| telemetry.settings.enabled) {
                Some(st) => {
                    let s = st.snapshot();
                    let load = 1.0 + telemetry.settings.in_flight_penalty * f64::from(s.in_flight);
                    Candidate {
                        deployment: i,
                        quote,
                        ttft_ms: s.ttft_ms * load,
                        tokens_per_s: s.tokens_per_s / load,
                        latency_ms: s.latency_ms,
                        error_rate: s.error_rate,
                        in_flight: s.in_flight,
                        breaker: s.breaker,
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

fn raw_score(s: Strategy, c: &Candidate) -> f64 {
    match s {
        // The current token price from the price book (energy included). `cost` equals the
        // client price except for free models, which still go where they cost us least.
        Strategy::Price => c.quote.cost.input + c.quote.cost.output,
        Strategy::Latency => c.ttft_ms,
        Strategy::TokenRate => -c.tokens_per_s,
    }
}

/// Ranks candidates natively with the combination rule of this module.
pub fn rank_native(cands: Vec<Candidate>, strategies: &StrategySet) -> RouteDecision {
    let n = cands.len();
    let mut combined = vec![0.0f64; n];
    for &s in strategies.strategies() {
        let raw: Vec<f64> = cands.iter().map(|c| raw_score(s, c)).collect();
        let (lo, hi) = raw.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let span = hi - lo;
        for (acc, x) in combined.iter_mut().zip(&raw) {
            *acc += if span > 0.0 && span.is_finite() { (x - lo) / span } else { 0.0 };
        }
    }
    let k = strategies.strategies().len().max(1) as f64;
    let mut ranked: Vec<(Candidate, f64)> = cands.into_iter().zip(combined).map(|(c, s)| (c, s / k)).collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.deployment.cmp(&b.0.deployment)));
    RouteDecision { ranked, strategies: strategies.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Quote, TokenPrice};

    fn cand(i: usize, price: f64, ttft: f64, tps: f64) -> Candidate {
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
}
