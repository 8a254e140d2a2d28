//! `[energy]`: the sanity range and stale fallback of energy prices, the price history, and
//! the feeds (`[energy.replay]`, `[[energy.poll]]`, `[energy.push]`), validated into
//! [`EnergySettings`].

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::problems::{resolve, Env, Problems};
use crate::catalog::DataCenter;
use crate::clock;
use crate::pricing::{
    EnergySettings, FeedFormat, HistorySettings, PollSettings, PushSettings, ReplaySettings, ReplaySource,
    ReplayStart,
};

/// `[energy]`. Every field is optional; defaults are those of [`EnergySettings::default`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnergy {
    /// Lowest accepted $/MWh, finite. Default -1000.
    pub min_usd_per_mwh: Option<f64>,
    /// Highest accepted $/MWh, finite and above the minimum. Default 10000.
    pub max_usd_per_mwh: Option<f64>,
    /// Price floor of stale prices, finite. Default 150.
    pub stale_fallback_usd_per_mwh: Option<f64>,
    /// Staleness re-check period, at least 1. Default 10.
    pub refresh_s: Option<u64>,
    /// Durable price history directory without a store, relative to the config file.
    pub data_dir: Option<String>,
    /// Days of price history kept, 7 to 366. Default 7.
    pub history_days: Option<u64>,
    pub replay: Option<RawReplay>,
    #[serde(default)]
    pub poll: Vec<RawPoll>,
    pub push: Option<RawPush>,
}

/// `[energy.replay]`: CSV traces replayed as a feed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplay {
    /// At least one readable file, relative to the config file.
    #[serde(default)]
    pub files: Vec<String>,
    /// Trace seconds per real second, > 0. Default 1.
    pub speed: Option<f64>,
    /// RFC 3339 time or offset from the first row (`36h`, `2d`). Default: the first row.
    pub start: Option<String>,
    /// Start over at the end. Default false.
    pub repeat: Option<bool>,
}

/// `[[energy.poll]]`: an HTTP poller.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    /// http(s) URL.
    pub url: String,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    /// > 0. Default 60.
    pub interval_s: Option<u64>,
    /// > 0. Default 5000.
    pub timeout_ms: Option<u64>,
}

/// `[energy.push]`: the admin push API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPush {
    /// Environment variable holding the bearer token; it must be set. Default: no token.
    pub token_env: Option<String>,
}

/// Validates `[energy]`. A bad number is reported and replaced by its default (`history_days`
/// clamped to 7..=366); feeds without any data center that has a price node are a problem.
pub(super) fn energy(
    p: &mut Problems,
    raw: &RawEnergy,
    data_centers: &[DataCenter],
    base: &Path,
    env: Env<'_>,
) -> EnergySettings {
    let d = EnergySettings::default();
    let min = finite(p, "energy.min_usd_per_mwh", raw.min_usd_per_mwh, d.min_usd_per_mwh);
    let max = finite(p, "energy.max_usd_per_mwh", raw.max_usd_per_mwh, d.max_usd_per_mwh);
    if min >= max {
        p.add("energy.max_usd_per_mwh", format!("must be above energy.min_usd_per_mwh ({min}), got {max}"));
    }
    let fallback = finite(p, "energy.stale_fallback_usd_per_mwh", raw.stale_fallback_usd_per_mwh, d.stale_fallback_usd_per_mwh);
    let refresh = match raw.refresh_s {
        Some(0) => {
            p.add("energy.refresh_s", "must be at least 1");
            d.refresh
        }
        Some(n) => Duration::from_secs(n),
        None => d.refresh,
    };
    let history = history(p, raw, base, d.history.retention_days);
    let replay = raw.replay.as_ref().map(|r| replay(p, r, base));
    let polls: Vec<PollSettings> = raw.poll.iter().enumerate().map(|(i, r)| poll(p, &format!("energy.poll[{i}]"), r)).collect();
    let push = raw.push.as_ref().map(|r| PushSettings { token: p.secret_env("energy.push.token_env", &r.token_env, env) });

    if (replay.is_some() || !polls.is_empty() || push.is_some()) && data_centers.iter().all(|dc| dc.price_node.is_none()) {
        p.add("energy", "feeds are configured but no data center has a price_node");
    }
    EnergySettings {
        min_usd_per_mwh: min,
        max_usd_per_mwh: max,
        stale_fallback_usd_per_mwh: fallback,
        refresh,
        history,
        replay,
        polls,
        push,
    }
}

/// A finite number; `default` when unset or not finite.
fn finite(p: &mut Problems, path: &str, v: Option<f64>, default: f64) -> f64 {
    match v {
        Some(x) if !x.is_finite() => {
            p.add(path, format!("must be a finite number, got {x}"));
            default
        }
        Some(x) => x,
        None => default,
    }
}

/// `data_dir` and `history_days` (7 to 366, default `default_days`).
fn history(p: &mut Problems, raw: &RawEnergy, base: &Path, default_days: u32) -> HistorySettings {
    let retention_days = match raw.history_days {
        Some(n) if n < 7 => {
            p.add("energy.history_days", format!("must be at least 7 (the 7d window), got {n}"));
            7
        }
        Some(n) if n > 366 => {
            p.add("energy.history_days", format!("must be at most 366, got {n}"));
            366
        }
        Some(n) => n as u32,
        None => default_days,
    };
    HistorySettings { data_dir: raw.data_dir.as_ref().map(|x| resolve(base, x)), retention_days }
}

/// `[energy.replay]`: files must exist now; a bad start is replaced by the trace start.
fn replay(p: &mut Problems, r: &RawReplay, base: &Path) -> ReplaySettings {
    if r.files.is_empty() {
        p.add("energy.replay.files", "list at least one CSV file");
    }
    let sources = r
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let path = resolve(base, f);
            if !path.is_file() {
                p.add(format!("energy.replay.files[{i}]"), format!("`{}` is not a readable file", path.display()));
            }
            ReplaySource::File(path)
        })
        .collect();
    let speed = p.positive("energy.replay.speed", r.speed, 1.0);
    let start = match r.start.as_deref() {
        None => ReplayStart::TraceStart,
        Some(s) => match (clock::parse_rfc3339(s), clock::parse_duration(s)) {
            (Some(t), _) => ReplayStart::At(t),
            (None, Some(off)) => ReplayStart::Offset(off),
            (None, None) => {
                p.add("energy.replay.start", format!("`{s}` is neither an RFC 3339 time nor an offset like 36h or 2d"));
                ReplayStart::TraceStart
            }
        },
    };
    ReplaySettings { sources, speed, start, repeat: r.repeat.unwrap_or(false) }
}

/// One `[[energy.poll]]` at `path`; a zero interval or timeout is reported and taken as 1.
fn poll(p: &mut Problems, path: &str, r: &RawPoll) -> PollSettings {
    let url = p.url(&format!("{path}.url"), &r.url).unwrap_or_default();
    let format = match r.format.as_deref() {
        None | Some("json") => FeedFormat::Json,
        Some("csv") => FeedFormat::Csv,
        Some(other) => {
            p.add(format!("{path}.format"), format!("`{other}` is not one of: json, csv"));
            FeedFormat::Json
        }
    };
    p.nonzero(path, &[("interval_s", r.interval_s), ("timeout_ms", r.timeout_ms)]);
    PollSettings {
        url,
        format,
        interval: Duration::from_secs(r.interval_s.unwrap_or(60).max(1)),
        timeout: Duration::from_millis(r.timeout_ms.unwrap_or(5_000).max(1)),
    }
}
