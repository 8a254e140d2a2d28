//! Allocates without bound in `score`: the host's memory cap must stop it.
use joule_strategy_sdk::{export_strategy, Candidate, Input, Strategy};

struct Bomb;

impl Strategy for Bomb {
    const NAME: &'static str = "Memory bomb";
    const VERSION: &'static str = "0.0.1";
    const TAG: &'static str = "membomb";

    fn score_one(input: &Input, _c: &Candidate) -> Option<f64> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            chunk[input.seed as usize % (1 << 20)] = 1;
            hoard.push(core::hint::black_box(chunk));
        }
    }
}

export_strategy!(Bomb);
