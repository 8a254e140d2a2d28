//! Built-in `@latency`: the lowest expected time to first token, with the requests already in
//! flight to each deployment and its health taken into account
//! ([`joule_strategy_sdk::expected_ttft_ms`]).

use joule_strategy_sdk::{expected_ttft_ms, export_strategy, Candidate, Input, Strategy};

struct Latency;

impl Strategy for Latency {
    const NAME: &'static str = "Lowest expected time to first token";
    const VERSION: &'static str = "1.0.0";
    const TAG: &'static str = "latency";

    fn score_one(_input: &Input, c: &Candidate) -> Option<f64> {
        Some(expected_ttft_ms(c))
    }
}

export_strategy!(Latency);
