//! Panics in `score` (an `unreachable` trap under panic=abort).
use joule_strategy_sdk::{export_strategy, Candidate, Input, Strategy};

struct Panics;

impl Strategy for Panics {
    const NAME: &'static str = "Panics";
    const VERSION: &'static str = "0.0.1";
    const TAG: &'static str = "panic";

    fn score_one(input: &Input, _c: &Candidate) -> Option<f64> {
        panic!("strategy bug at {}", input.now_ms)
    }
}

export_strategy!(Panics);
