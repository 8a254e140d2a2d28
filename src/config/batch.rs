//! `[batch]`: the batch API's limits, its share of each deployment, its price discount and
//! the scheduler's tuning, validated into [`BatchSettings`].

use serde::Deserialize;

use super::problems::{ms, Problems};
use crate::batch::BatchSettings;

/// `[batch]`. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    /// Most lines in an input file, 1 to 1 000 000. Default 50 000.
    pub max_file_lines: Option<usize>,
    /// Largest input file, bytes, 1 to 2 000 000 000. Default 200 000 000.
    pub max_file_bytes: Option<usize>,
    /// Output tokens assumed for a line without `max_tokens`, for plans and budget checks.
    /// Default 256.
    pub default_output_tokens: Option<u32>,
    /// Batch requests in flight at once per deployment, per instance, 1 to 1024. Default 4.
    pub concurrency: Option<u32>,
    /// Requests a deployment serves at once; batch requests only use what interactive
    /// traffic leaves of it. 1 to 100 000. Default 32.
    pub deployment_capacity: Option<u32>,
    /// Share taken off the price of every batch line, 0 to 0.9. Default 0.
    pub discount: Option<f64>,
    /// Unfinished batch lines a project may have queued, ≥ 1. Default 1 000 000.
    pub max_queued_lines: Option<i64>,
    /// Sends of one line before it is given up, 1 to 10. Default 3.
    pub max_attempts: Option<i64>,
    /// Real time between scheduler ticks, > 0. Default 1000.
    pub tick_ms: Option<u64>,
    /// How long a line stays leased to an instance that stopped renewing, ≥ 2 ticks.
    /// Default 60000.
    pub lease_ms: Option<u64>,
    /// Plan slot length, seconds of the pricing clock, 60 to 3600. Default 300.
    pub slot_seconds: Option<i64>,
    /// Safety margin before each deadline, as a share of the window, 0 to 0.5. Default 0.1.
    pub margin_share: Option<f64>,
}

/// Validates `[batch]`; a bad value is reported and replaced by its default.
pub(super) fn batch(p: &mut Problems, raw: &RawBatch) -> BatchSettings {
    let d = BatchSettings::default();
    let mut range = |field: &str, v: Option<f64>, lo: f64, hi: f64, default: f64| match v {
        None => default,
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => x,
        Some(x) => {
            p.add(format!("batch.{field}"), format!("must be between {lo} and {hi}, got {x}"));
            default
        }
    };
    let mut s = d.clone();
    s.input.max_lines = range("max_file_lines", raw.max_file_lines.map(|x| x as f64), 1.0, 1e6, d.input.max_lines as f64) as usize;
    s.input.max_bytes = range("max_file_bytes", raw.max_file_bytes.map(|x| x as f64), 1.0, 2e9, d.input.max_bytes as f64) as usize;
    s.input.default_output_tokens =
        range("default_output_tokens", raw.default_output_tokens.map(f64::from), 1.0, 1e6, f64::from(d.input.default_output_tokens)) as u32;
    s.concurrency = range("concurrency", raw.concurrency.map(f64::from), 1.0, 1024.0, f64::from(d.concurrency)) as u32;
    s.deployment_capacity = range("deployment_capacity", raw.deployment_capacity.map(f64::from), 1.0, 1e5, f64::from(d.deployment_capacity)) as u32;
    s.discount = range("discount", raw.discount, 0.0, 0.9, d.discount);
    s.max_queued_lines = range("max_queued_lines", raw.max_queued_lines.map(|x| x as f64), 1.0, 1e12, d.max_queued_lines as f64) as i64;
    s.max_attempts = range("max_attempts", raw.max_attempts.map(|x| x as f64), 1.0, 10.0, d.max_attempts as f64) as i64;
    s.schedule.slot_s = range("slot_seconds", raw.slot_seconds.map(|x| x as f64), 60.0, 3600.0, d.schedule.slot_s as f64) as i64;
    s.schedule.margin_share = range("margin_share", raw.margin_share, 0.0, 0.5, d.schedule.margin_share);
    p.nonzero("batch", &[("tick_ms", raw.tick_ms), ("lease_ms", raw.lease_ms)]);
    s.tick = ms(raw.tick_ms.filter(|&t| t > 0), 1000);
    s.lease = ms(raw.lease_ms.filter(|&t| t > 0), 60_000);
    if s.lease < 2 * s.tick {
        p.add("batch.lease_ms", format!("must be at least two ticks ({} ms)", 2 * s.tick.as_millis()));
    }
    s
}
