//! A route decision through the Wasm strategies: every requested tag's plugin scores the
//! candidates, the scores are combined by [`crate::routing::combine`] (the same rule as the
//! native ranking), and any fault, disabled plugin or missing operator plugin makes the whole
//! decision fall back to the native ranking, which reports why.

use std::cell::{Cell, RefCell};

use super::bindings;
use super::host::CallOutcome;
use super::registry::PluginSet;
use crate::metrics::StrategyMetrics;
use crate::routing::tags::{Strategy, StrategySet};
use crate::routing::{decide, native_runs, native_score, Candidate, Engine, Fallback, RouteDecision, StrategyRun};

thread_local! {
    /// The guest-facing input buffer, reused by every decision on this thread.
    static INPUT: RefCell<bindings::DecisionInput> = RefCell::new(bindings::empty_input());
    /// The plugin-set generation this thread last ranked with, to drop warm instances of
    /// replaced plugins once per swap rather than on every call.
    static SEEN_GENERATION: Cell<u64> = const { Cell::new(0) };
}

/// Ranks `cands` for `strategies` with the plugins of `set` (built-in tags without a plugin
/// run natively). Never fails: on any plugin problem the result is the native ranking with
/// [`RouteDecision::fallback`] set, and the fallback is counted in `metrics`.
///
/// `now_ms` and `seed` are passed to every strategy; with the same inputs and plugin versions
/// the decision is the same (see [`super::explain`] for replay).
pub fn rank(
    set: &PluginSet,
    strategies: &StrategySet,
    cands: Vec<Candidate>,
    now_ms: u64,
    seed: u64,
    metrics: Option<&StrategyMetrics>,
) -> RouteDecision {
    if SEEN_GENERATION.with(|g| g.replace(set.generation)) != set.generation {
        super::host::retain_warm(|uid| set.contains_uid(uid));
    }
    INPUT.with(|input| rank_with(set, strategies, cands, now_ms, seed, metrics, &mut input.borrow_mut()))
}

fn rank_with(
    set: &PluginSet,
    strategies: &StrategySet,
    cands: Vec<Candidate>,
    now_ms: u64,
    seed: u64,
    metrics: Option<&StrategyMetrics>,
    buffers: &mut bindings::DecisionInput,
) -> RouteDecision {
    let mut filled = false;
    let mut runs = Vec::with_capacity(strategies.tags().len());
    let mut fallback = None;
    if !cands.is_empty() {
        for tag in strategies.tags() {
            let run = match set.get(tag) {
                Some(p) if p.disabled() => Err(Fallback::Disabled { tag: tag.clone() }),
                Some(p) => {
                    if !filled {
                        bindings::fill(buffers, &cands, now_ms, seed);
                        filled = true;
                    }
                    match set.host.call(p, buffers) {
                        CallOutcome::Scored(scores) => Ok(StrategyRun {
                            tag: tag.clone(),
                            engine: Engine::Wasm { version: p.info.version.clone(), sha256: p.sha256.clone() },
                            scores,
                        }),
                        CallOutcome::Fault(f) => Err(Fallback::Fault { tag: tag.clone(), kind: f.kind }),
                    }
                }
                None => match Strategy::from_tag(tag) {
                    Some(s) => Ok(StrategyRun {
                        tag: tag.clone(),
                        engine: Engine::Native,
                        scores: cands.iter().map(|c| Some(native_score(s, c))).collect(),
                    }),
                    None => Err(Fallback::Missing { tag: tag.clone() }),
                },
            };
            match run {
                Ok(r) => runs.push(r),
                Err(f) => {
                    fallback = Some(f);
                    break;
                }
            }
        }
    }
    if let Some(f) = fallback {
        if let Some(m) = metrics {
            m.fallbacks.with_label_values(&[&**f.tag(), f.label()]).inc();
        }
        let runs = native_runs(&cands, strategies);
        return decide(&cands, strategies, runs, Some(f));
    }
    decide(&cands, strategies, runs, None)
}
