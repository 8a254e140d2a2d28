//! The generated host bindings of the `joule:strategy@0.1.0` world (`wit/strategy.wit`). This
//! is the only module that sees generated code; the rest of the host uses the conversions here.

use crate::routing::Candidate as HostCandidate;

wasmtime::component::bindgen!({
    path: "wit",
    world: "joule:strategy/strategy@0.1.0",
});

/// The contract's "no data center" value.
const NO_DATA_CENTER: u32 = u32::MAX;

/// An empty input whose column buffers [`fill`] reuses across decisions.
pub(crate) fn empty_input() -> DecisionInput {
    DecisionInput {
        now_ms: 0,
        seed: 0,
        candidates: Candidates {
            price_input: Vec::new(),
            price_output: Vec::new(),
            energy_price: Vec::new(),
            ttft_ms: Vec::new(),
            latency_ms: Vec::new(),
            tokens_per_s: Vec::new(),
            in_flight: Vec::new(),
            health: Vec::new(),
            data_center: Vec::new(),
        },
    }
}

/// Writes the guest-facing view of `cands` (exactly the scalars of the contract, column by
/// column) into `input`, keeping its buffers.
pub(crate) fn fill(input: &mut DecisionInput, cands: &[HostCandidate], now_ms: u64, seed: u64) {
    input.now_ms = now_ms;
    input.seed = seed;
    let c = &mut input.candidates;
    let cols: [(&mut Vec<f64>, fn(&HostCandidate) -> f64); 7] = [
        (&mut c.price_input, |x| x.quote.cost.input),
        (&mut c.price_output, |x| x.quote.cost.output),
        (&mut c.energy_price, |x| x.energy_price.unwrap_or(f64::NAN)),
        (&mut c.ttft_ms, |x| x.ttft_ms),
        (&mut c.latency_ms, |x| x.latency_ms),
        (&mut c.tokens_per_s, |x| x.tokens_per_s),
        (&mut c.health, |x| x.health),
    ];
    for (col, get) in cols {
        col.clear();
        col.extend(cands.iter().map(get));
    }
    c.in_flight.clear();
    c.in_flight.extend(cands.iter().map(|x| x.in_flight));
    c.data_center.clear();
    c.data_center.extend(cands.iter().map(|x| x.data_center.unwrap_or(NO_DATA_CENTER)));
}

/// A fresh guest-facing input for `cands`.
pub(crate) fn decision_input(cands: &[HostCandidate], now_ms: u64, seed: u64) -> DecisionInput {
    let mut i = empty_input();
    fill(&mut i, cands, now_ms, seed);
    i
}

/// Number of candidates in an input.
pub(crate) fn len(input: &DecisionInput) -> usize {
    input.candidates.price_input.len()
}
