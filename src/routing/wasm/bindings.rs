//! The generated host bindings of the `joule:strategy@0.2.0` world (`wit/strategy.wit`). This
//! is the only module that sees generated code; the rest of the host uses the conversions here.

use crate::routing::Candidate as HostCandidate;

wasmtime::component::bindgen!({
    path: "wit",
    world: "joule:strategy/strategy@0.2.0",
});

/// Numbers per candidate in the contract's flat `numbers` list (its `stride`).
pub(crate) const STRIDE: usize = 9;

/// An empty input whose `numbers` buffer [`fill`] reuses across decisions.
pub(crate) fn empty_input() -> DecisionInput {
    DecisionInput { now_ms: 0, seed: 0, count: 0, stride: STRIDE as u32, numbers: Vec::new() }
}

/// Writes the guest-facing view of `cands` (exactly the scalars of the contract, candidate
/// after candidate in the field order of `wit/strategy.wit`) into `input`, keeping its buffer.
pub(crate) fn fill(input: &mut DecisionInput, cands: &[HostCandidate], now_ms: u64, seed: u64) {
    input.now_ms = now_ms;
    input.seed = seed;
    input.count = u32::try_from(cands.len()).unwrap_or(u32::MAX);
    input.stride = STRIDE as u32;
    let numbers = &mut input.numbers;
    numbers.clear();
    numbers.reserve(cands.len() * STRIDE);
    for c in cands {
        numbers.extend_from_slice(&[
            c.quote.cost.input,
            c.quote.cost.output,
            c.energy_price.unwrap_or(f64::NAN),
            c.ttft_ms,
            c.latency_ms,
            c.tokens_per_s,
            f64::from(c.in_flight),
            c.health,
            c.data_center.map_or(f64::NAN, f64::from),
        ]);
    }
}

/// A fresh guest-facing input for `cands`.
pub(crate) fn decision_input(cands: &[HostCandidate], now_ms: u64, seed: u64) -> DecisionInput {
    let mut i = empty_input();
    fill(&mut i, cands, now_ms, seed);
    i
}

/// Number of candidates in an input.
pub(crate) fn len(input: &DecisionInput) -> usize {
    input.count as usize
}
