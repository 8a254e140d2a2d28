//! Never returns from `score`: the host's epoch deadline must stop it.
use joule_strategy_sdk::{export_strategy, Candidate, Input, Strategy};

struct Spin;

impl Strategy for Spin {
    const NAME: &'static str = "Infinite loop";
    const VERSION: &'static str = "0.0.1";
    const TAG: &'static str = "loop";

    fn score_one(input: &Input, _c: &Candidate) -> Option<f64> {
        let mut x = input.seed;
        loop {
            // Opaque to the optimiser, so the loop is not removed.
            x = core::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export_strategy!(Spin);
