//! The `price` strategy with a version string that tests patch in the built component
//! (same length, so the binary stays valid) to make many distinct versions from one build.
use joule_strategy_sdk::{export_strategy, Candidate, Input, Strategy};

struct Versioned;

impl Strategy for Versioned {
    const NAME: &'static str = "Cheapest token price (hot-swap test build)";
    /// Tests replace the digits after `swap.` in the component bytes.
    const VERSION: &'static str = "1.0.0-swap.000000";
    const TAG: &'static str = "price";

    fn score_one(_input: &Input, c: &Candidate) -> Option<f64> {
        Some(c.price_input + c.price_output)
    }
}

export_strategy!(Versioned);
