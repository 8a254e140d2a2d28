//! Built-in `@price`: the cheapest token price, input plus output $/Mtok. Free models carry
//! the deployment's cost to the gateway in place of the client price, so they route by cost.

use joule_strategy_sdk::{export_strategy, Candidate, Input, Strategy};

struct Price;

impl Strategy for Price {
    const NAME: &'static str = "Cheapest token price";
    const VERSION: &'static str = "1.0.0";
    const TAG: &'static str = "price";

    fn score_one(_input: &Input, c: &Candidate) -> Option<f64> {
        Some(c.price_input + c.price_output)
    }
}

export_strategy!(Price);
