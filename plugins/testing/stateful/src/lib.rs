//! Answers differently every call for the same input (keeps a counter in its memory), which
//! `joule plugin check` must report as non-deterministic.
use joule_strategy_sdk::{export_strategy, Input, Strategy};
use std::sync::atomic::{AtomicU64, Ordering};

static CALLS: AtomicU64 = AtomicU64::new(0);

struct Drifts;

impl Strategy for Drifts {
    const NAME: &'static str = "Drifts between calls";
    const VERSION: &'static str = "0.0.1";
    const TAG: &'static str = "stateful";

    fn score(input: &Input) -> Result<Vec<Option<f64>>, String> {
        let n = CALLS.fetch_add(1, Ordering::Relaxed) as f64;
        Ok((0..input.len()).map(|i| Some((i as f64 + n) % 3.0)).collect())
    }
}

export_strategy!(Drifts);
