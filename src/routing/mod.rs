//! Routing: strategy tags, candidates and the native ranking. The native ranking is what
//! runs until Wasm strategies exist, and stays as their fallback.
//!
//! Combination rule (documented in the README): each strategy gives every candidate a raw
//! score (lower is better); scores are min–max normalised per strategy over the candidates
//! (all equal → 0), averaged over the strategies, and ranked ascending; ties keep catalog order.

pub mod tags;

use crate::catalog::{Catalog, Model, Quote};
use crate::pricing::PriceBook;
use tags::{Strategy, StrategySet};

/// A deployment with its numbers at decision time.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Index into the model's `deployments`.
    pub deployment: usize,
    pub quote: Quote,
    /// Expected time to first token, ms.
    pub ttft_ms: f64,
    /// Expected decode rate, tokens/s.
    pub tokens_per_s: f64,
}

/// Ranked candidates with their combined scores, best first.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    pub ranked: Vec<(Candidate, f64)>,
    pub strategies: StrategySet,
}

/// Builds the candidates of a model: quotes from the price book (energy-priced, computed when
/// prices last changed), TTFT and rate from the catalog's priors until telemetry exists.
pub fn candidates(catalog: &Catalog, book: &PriceBook, model: &Model) -> Vec<Candidate> {
    let quotes = book.quotes_of(catalog, model);
    model
        .deployments
        .iter()
        .enumerate()
        .map(|(i, d)| Candidate {
            deployment: i,
            quote: quotes.and_then(|q| q.get(i)).copied().unwrap_or_else(|| catalog.quote(model, d)),
            ttft_ms: d.prior.ttft_ms,
            tokens_per_s: d.prior.tokens_per_s,
        })
        .collect()
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
        Candidate { deployment: i, quote: Quote { price: p, cost: p, ..Quote::default() }, ttft_ms: ttft, tokens_per_s: tps }
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
