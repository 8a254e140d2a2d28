//! Example operator strategy `@green`: run only in our own data centers whose electricity
//! costs under $80/MWh right now, cheapest energy first. Third-party routes and data centers
//! without a current price are excluded.

use joule_strategy_sdk::{export_strategy, Candidate, Input, Strategy};

/// The cap, $/MWh.
const MAX_MWH: f64 = 80.0;

struct Green;

impl Strategy for Green {
    const NAME: &'static str = "Cheapest energy under $80/MWh";
    const VERSION: &'static str = "1.0.0";
    const TAG: &'static str = "green";

    fn score_one(_input: &Input, c: &Candidate) -> Option<f64> {
        let mwh = c.energy_price?;
        (mwh < MAX_MWH).then_some(mwh)
    }
}

export_strategy!(Green);
