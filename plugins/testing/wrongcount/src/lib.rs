//! Returns one score fewer than there are candidates.
use joule_strategy_sdk::{export_strategy, Input, Strategy};

struct Short;

impl Strategy for Short {
    const NAME: &'static str = "Wrong number of scores";
    const VERSION: &'static str = "0.0.1";
    const TAG: &'static str = "wrongcount";

    fn score(input: &Input) -> Result<Vec<Option<f64>>, String> {
        Ok(input.candidates().skip(1).map(|c| Some(c.ttft_ms)).collect())
    }
}

export_strategy!(Short);
