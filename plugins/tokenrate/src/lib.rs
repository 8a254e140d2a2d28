//! Built-in `@tokenrate`: the highest expected decode rate, with load and health taken into
//! account ([`joule_strategy_sdk::expected_tokens_per_s`]). Scores are negated rates, since
//! lower scores rank first.

use joule_strategy_sdk::{expected_tokens_per_s, export_strategy, Candidate, Input, Strategy};

struct TokenRate;

impl Strategy for TokenRate {
    const NAME: &'static str = "Highest expected tokens per second";
    const VERSION: &'static str = "1.0.0";
    const TAG: &'static str = "tokenrate";

    fn score_one(_input: &Input, c: &Candidate) -> Option<f64> {
        Some(-expected_tokens_per_s(c))
    }
}

export_strategy!(TokenRate);
