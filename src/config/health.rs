//! `[telemetry]` and `[health]`: the live per-deployment numbers, the circuit breaker and the
//! active probes, validated into [`TelemetrySettings`] (which also carries the breaker's
//! `[health]` fields) and [`HealthSettings`].

use serde::Deserialize;

use super::problems::{ms, Problems};
use crate::telemetry::TelemetrySettings;
use crate::upstream::probe::HealthSettings;

/// `[telemetry]`: live numbers measured from traffic.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Off = configured priors only. Default true.
    pub enabled: Option<bool>,
    /// EWMA weight of a new sample, in (0, 1]. Default 0.2.
    pub alpha: Option<f64>,
    /// How many samples a deployment's prior is worth, >= 0. Default 2.
    pub prior_weight: Option<f64>,
}

/// `[health]`: the circuit breaker per deployment and the active probes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Consecutive failures that open the breaker, at least 1. Default 3.
    pub failure_threshold: Option<u32>,
    /// First open period. Default 1000.
    pub open_base_ms: Option<u64>,
    /// Longest open period, >= `open_base_ms`. Default 60000.
    pub open_max_ms: Option<u64>,
    /// Probe interval; 0 disables probes. Default 5000.
    pub probe_interval_ms: Option<u64>,
    /// Probe timeout, > 0. Default 2000.
    pub probe_timeout_ms: Option<u64>,
    /// Probe provider routes too. Default false.
    pub probe_third_party: Option<bool>,
}

/// Validates `[telemetry]` and the breaker fields of `[health]`. A bad value is reported and
/// replaced by its default (`failure_threshold = 0` by 1).
pub(super) fn telemetry(p: &mut Problems, t: &RawTelemetry, h: &RawHealth) -> TelemetrySettings {
    let d = TelemetrySettings::default();
    let alpha = p.positive("telemetry.alpha", t.alpha, d.alpha);
    if alpha > 1.0 {
        p.add("telemetry.alpha", format!("must be in (0, 1], got {alpha}"));
    }
    let telemetry = TelemetrySettings {
        enabled: t.enabled.unwrap_or(true),
        alpha,
        prior_weight: match t.prior_weight {
            Some(w) if !(w.is_finite() && w >= 0.0) => {
                p.add("telemetry.prior_weight", format!("must be a finite number >= 0, got {w}"));
                d.prior_weight
            }
            Some(w) => w,
            None => d.prior_weight,
        },
        failure_threshold: match h.failure_threshold {
            Some(0) => {
                p.add("health.failure_threshold", "must be at least 1");
                1
            }
            Some(n) => n,
            None => d.failure_threshold,
        },
        open_base: ms(h.open_base_ms, 1_000),
        open_max: ms(h.open_max_ms, 60_000),
    };
    if telemetry.open_max < telemetry.open_base {
        p.add("health.open_max_ms", "must be >= health.open_base_ms");
    }
    telemetry
}

/// Validates the probe fields of `[health]`. `probe_interval_ms = 0` disables probes;
/// `probe_timeout_ms = 0` is a problem.
pub(super) fn probes(p: &mut Problems, h: &RawHealth) -> HealthSettings {
    if h.probe_timeout_ms == Some(0) {
        p.add("health.probe_timeout_ms", "must be > 0");
    }
    HealthSettings {
        probe_interval: match h.probe_interval_ms {
            Some(0) => None,
            v => Some(ms(v, 5_000)),
        },
        probe_timeout: ms(h.probe_timeout_ms, 2_000),
        probe_third_party: h.probe_third_party.unwrap_or(false),
    }
}
