//! `[plugins]` (the Wasm strategy host) and the top-level `default_strategy`, validated into
//! [`PluginSettings`] and a [`StrategySet`].

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::problems::{resolve, Problems};
use crate::routing::tags::StrategySet;
use crate::routing::wasm::{HostConfig, PluginSettings};

/// `[plugins]`: the Wasm strategy host. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugins {
    /// Directory of strategy components (`*.wasm`), loaded at start and watched; it must
    /// exist. Relative to the config file. Default none.
    pub dir: Option<String>,
    /// Watch `dir` and swap plugins as files change. Default true.
    pub watch: Option<bool>,
    /// Per-call deadline, 1 to 10000. Default 10.
    pub call_timeout_ms: Option<u64>,
    /// Per-instance memory cap, 1 to 4096. Default 16.
    pub memory_limit_mib: Option<u64>,
    /// Consecutive faults that disable a plugin, at least 1. Default 5.
    pub disable_after: Option<u32>,
    /// Append every route decision (inputs and result) as JSON lines to this file.
    pub decision_log: Option<String>,
}

/// Validates `[plugins]`. An out-of-range sandbox limit is reported and left at its default.
pub(super) fn plugins(p: &mut Problems, raw: &RawPlugins, base: &Path) -> PluginSettings {
    let dir = raw.dir.as_ref().map(|d| resolve(base, d));
    if let Some(d) = &dir {
        if !d.is_dir() {
            p.add("plugins.dir", format!("`{}` is not a directory", d.display()));
        }
    }
    let mut host = HostConfig::default();
    match raw.call_timeout_ms {
        Some(ms @ 1..=10_000) => host.call_timeout = Duration::from_millis(ms),
        Some(ms) => p.add("plugins.call_timeout_ms", format!("must be 1 to 10000, got {ms}")),
        None => {}
    }
    match raw.memory_limit_mib {
        Some(mib @ 1..=4096) => host.memory_limit = usize::try_from(mib << 20).unwrap_or(usize::MAX),
        Some(mib) => p.add("plugins.memory_limit_mib", format!("must be 1 to 4096, got {mib}")),
        None => {}
    }
    match raw.disable_after {
        Some(0) => p.add("plugins.disable_after", "must be at least 1"),
        Some(n) => host.disable_after = n,
        None => {}
    }
    let decision_log = raw.decision_log.as_ref().map(|f| resolve(base, f));
    PluginSettings { dir, watch: raw.watch.unwrap_or(true), host, decision_log }
}

/// Validates `default_strategy`: one or more known strategy tags (`latency@price`). Default
/// (and, with a problem, when it does not parse) `price`.
pub(super) fn default_strategy(p: &mut Problems, raw: Option<&str>) -> StrategySet {
    match raw {
        None => StrategySet::default_price(),
        Some(s) => match StrategySet::parse_list(s) {
            Ok(set) => set,
            Err(e) => {
                p.add("default_strategy", e.to_string());
                StrategySet::default_price()
            }
        },
    }
}
