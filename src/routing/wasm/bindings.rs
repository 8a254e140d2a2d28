//! The generated host bindings of the `joule:strategy@0.1.0` world (`wit/strategy.wit`). This
//! is the only module that sees generated code; the rest of the host uses the conversions here.

use crate::routing::Candidate as HostCandidate;

wasmtime::component::bindgen!({
    path: "wit",
    world: "joule:strategy/strategy@0.1.0",
});

/// The guest-facing view of candidates: exactly the scalars of the contract.
pub(crate) fn decision_input(cands: &[HostCandidate], now_ms: u64, seed: u64) -> DecisionInput {
    DecisionInput { now_ms, seed, candidates: cands.iter().map(candidate).collect() }
}

fn candidate(c: &HostCandidate) -> Candidate {
    Candidate {
        price_input: c.quote.cost.input,
        price_output: c.quote.cost.output,
        energy_price: c.energy_price,
        ttft_ms: c.ttft_ms,
        latency_ms: c.latency_ms,
        tokens_per_s: c.tokens_per_s,
        in_flight: c.in_flight,
        health: c.health,
        data_center: c.data_center,
    }
}
