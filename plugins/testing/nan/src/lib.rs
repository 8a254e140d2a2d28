//! Scores every candidate NaN.
use joule_strategy_sdk::{export_strategy, Candidate, Input, Strategy};

struct NotANumber;

impl Strategy for NotANumber {
    const NAME: &'static str = "NaN scores";
    const VERSION: &'static str = "0.0.1";
    const TAG: &'static str = "nan";

    fn score_one(_input: &Input, c: &Candidate) -> Option<f64> {
        Some(c.ttft_ms * f64::NAN)
    }
}

export_strategy!(NotANumber);
