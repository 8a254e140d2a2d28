//! Guest-side helper for joule routing strategies.
//!
//! A strategy implements [`Strategy`] and exports itself with [`export_strategy!`]; this crate
//! owns the `wit-bindgen` glue for the `joule:strategy@0.2.0` world (`wit/strategy.wit`), so a
//! strategy crate never touches generated code:
//!
//! ```ignore
//! use joule_strategy_sdk::{export_strategy, Candidate, Input, Strategy};
//!
//! struct Green;
//!
//! impl Strategy for Green {
//!     const NAME: &'static str = "Cheapest energy under $80/MWh";
//!     const VERSION: &'static str = "1.0.0";
//!     const TAG: &'static str = "green";
//!
//!     fn score_one(_input: &Input, c: &Candidate) -> Option<f64> {
//!         let mwh = c.energy_price?;          // third-party routes: excluded
//!         (mwh < 80.0).then_some(mwh)          // over the cap: excluded
//!     }
//! }
//!
//! export_strategy!(Green);
//! ```
//!
//! Lower scores are better. `None` excludes a candidate from the decision. Scores must be
//! finite; a NaN or infinite score, a trap (panic) or too much time or memory makes the
//! gateway count a fault and fall back to its native ranking for that request.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "joule:strategy/strategy@0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "joule_strategy_sdk::bindings",
    });
}

pub use bindings::Info;

/// One deployment of the requested model with its numbers at decision time (see
/// `wit/strategy.wit` for every field's meaning and unit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// $/Mtok for input tokens (for free models: what the deployment costs the gateway).
    pub price_input: f64,
    /// $/Mtok for output tokens.
    pub price_output: f64,
    /// $/MWh at the data center; `None` for third-party routes or when unknown.
    pub energy_price: Option<f64>,
    /// Expected time to first token, ms.
    pub ttft_ms: f64,
    /// Expected end-to-end latency, ms.
    pub latency_ms: f64,
    /// Expected decode rate, tokens/s.
    pub tokens_per_s: f64,
    /// Requests in flight to the deployment now.
    pub in_flight: u32,
    /// Probability an attempt succeeds, 0..=1.
    pub health: f64,
    /// The data center's index in the gateway's catalog; `None` for third-party routes.
    pub data_center: Option<u32>,
}

/// Numbers per candidate this SDK reads (the contract's fields 0..=8).
const FIELDS: usize = 9;

/// A decision's input: the time, a seed and the candidates.
///
/// Candidates are read on demand from the numbers the gateway sent ([`Input::candidates`],
/// [`Input::candidate`]), so a strategy pays for no copy it does not use.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// Decision time, Unix ms.
    pub now_ms: u64,
    /// Per-decision random seed.
    pub seed: u64,
    count: usize,
    stride: usize,
    numbers: Vec<f64>,
}

impl Input {
    /// Number of candidates; never zero.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always `false`: the gateway never asks about zero candidates.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Candidate `k` (catalog order). Fields the gateway did not send read as NaN / `None`.
    pub fn candidate(&self, k: usize) -> Candidate {
        let row = self.numbers.get(k * self.stride..(k * self.stride + self.stride.min(FIELDS))).unwrap_or(&[]);
        let at = |f: usize| row.get(f).copied().unwrap_or(f64::NAN);
        let whole = |x: f64| if x.is_finite() && x >= 0.0 && x <= u32::MAX as f64 { Some(x as u32) } else { None };
        Candidate {
            price_input: at(0),
            price_output: at(1),
            energy_price: Some(at(2)).filter(|x| !x.is_nan()),
            ttft_ms: at(3),
            latency_ms: at(4),
            tokens_per_s: at(5),
            in_flight: whole(at(6)).unwrap_or(0),
            health: at(7),
            data_center: whole(at(8)),
        }
    }

    /// The candidates in catalog order.
    pub fn candidates(&self) -> impl ExactSizeIterator<Item = Candidate> + '_ {
        (0..self.count).map(|k| self.candidate(k))
    }
}

#[doc(hidden)]
pub fn __input(i: bindings::DecisionInput) -> Input {
    let stride = (i.stride as usize).max(1);
    // A malformed count (more candidates than numbers) is cut to what the numbers hold.
    let count = (i.count as usize).min(i.numbers.len() / stride);
    Input { now_ms: i.now_ms, seed: i.seed, count, stride, numbers: i.numbers }
}

/// A routing strategy: describe it with the three constants and score candidates.
///
/// Implement [`Strategy::score_one`] for a strategy that judges each candidate on its own, or
/// override [`Strategy::score`] for one that needs the whole list (e.g. relative thresholds).
pub trait Strategy {
    /// Human-readable name.
    const NAME: &'static str;
    /// The strategy's version, shown to clients in `x-joule-strategy` (semver recommended).
    const VERSION: &'static str;
    /// The tag clients write after `@`: 1–32 of `a-z`, `0-9`, `-`, `_`.
    const TAG: &'static str;

    /// Score of one candidate (lower is better), or `None` to exclude it.
    fn score_one(input: &Input, candidate: &Candidate) -> Option<f64> {
        let _ = (input, candidate);
        None
    }

    /// Scores of all candidates, one per candidate in input order. The default maps
    /// [`Strategy::score_one`] over them. An `Err` makes the gateway fall back to its native
    /// ranking for this request (and counts a fault).
    fn score(input: &Input) -> Result<Vec<Option<f64>>, String> {
        Ok(input.candidates().map(|c| Self::score_one(input, &c)).collect())
    }
}

/// Requests in flight at which a deployment's expected time to first token doubles.
///
/// The load model of the built-in `latency` and `tokenrate` strategies (and of joule's native
/// fallback, which must agree with them): each request already in flight to a deployment
/// adds `1 / LOAD_SLOTS` of its unloaded TTFT and divides its decode rate likewise.
pub const LOAD_SLOTS: f64 = 4.0;

/// Lowest health the load model divides by, so a deployment at health 0 gets a large but
/// finite expected cost.
pub const MIN_HEALTH: f64 = 0.01;

/// Expected time to first token in ms, accounting for load and health: an attempt succeeds
/// with probability `health`, so `1 / health` attempts are expected.
pub fn expected_ttft_ms(c: &Candidate) -> f64 {
    c.ttft_ms * (1.0 + f64::from(c.in_flight) / LOAD_SLOTS) / c.health.clamp(MIN_HEALTH, 1.0)
}

/// Expected decode rate in tokens/s, accounting for load and health.
pub fn expected_tokens_per_s(c: &Candidate) -> f64 {
    c.tokens_per_s * c.health.clamp(MIN_HEALTH, 1.0) / (1.0 + f64::from(c.in_flight) / LOAD_SLOTS)
}

#[doc(hidden)]
pub fn __describe<S: Strategy>() -> Info {
    Info { name: S::NAME.into(), version: S::VERSION.into(), tag: S::TAG.into() }
}

/// Exports a [`Strategy`] implementation as the component's `describe` and `score`.
#[macro_export]
macro_rules! export_strategy {
    ($strategy:ty) => {
        struct __JouleStrategyExport;

        impl $crate::bindings::Guest for __JouleStrategyExport {
            fn describe() -> $crate::Info {
                $crate::__describe::<$strategy>()
            }

            fn score(input: $crate::bindings::DecisionInput) -> ::core::result::Result<$crate::__Vec<Option<f64>>, $crate::__String> {
                <$strategy as $crate::Strategy>::score(&$crate::__input(input))
            }
        }

        $crate::bindings::__export_world!(__JouleStrategyExport with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub use alloc::string::String as __String;
#[doc(hidden)]
pub use alloc::vec::Vec as __Vec;
