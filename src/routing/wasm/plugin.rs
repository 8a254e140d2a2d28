//! One loaded strategy: its self-description, content hash, pre-instantiated component, call
//! and fault counters, and the disable rule (too many consecutive faults → disabled until a
//! new version replaces it).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::{Histogram, IntCounter};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::bindings::{self, StrategyPre};
use super::host::{CallOutcome, GuestState, LoadError};
use crate::metrics::StrategyMetrics;
use crate::routing::tags;

/// Kinds of call faults: a closed set, used as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The guest trapped (a Rust panic, `unreachable`, out-of-bounds access …).
    Trap,
    /// The call ran past `call_timeout`.
    Timeout,
    /// The guest tried to grow its memory past `memory_limit`.
    Memory,
    /// The call used up its fuel budget (only when fuel metering is on: `joule plugin check`).
    Fuel,
    /// Not exactly one score per candidate.
    WrongCount,
    /// A NaN or infinite score.
    NonFinite,
    /// The guest returned `err(reason)`.
    GuestError,
    /// No instance could be created (e.g. the instance pool is exhausted).
    Instantiate,
}

impl FaultKind {
    /// Every kind, in label order.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Trap,
        FaultKind::Timeout,
        FaultKind::Memory,
        FaultKind::Fuel,
        FaultKind::WrongCount,
        FaultKind::NonFinite,
        FaultKind::GuestError,
        FaultKind::Instantiate,
    ];

    /// Metric label / wire spelling.
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Timeout => "timeout",
            FaultKind::Memory => "memory",
            FaultKind::Fuel => "fuel",
            FaultKind::WrongCount => "wrong_count",
            FaultKind::NonFinite => "non_finite",
            FaultKind::GuestError => "guest_error",
            FaultKind::Instantiate => "instantiate",
        }
    }

    fn index(self) -> usize {
        FaultKind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// A strategy's validated self-description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    /// Safe to put in a header: 1–64 of `A-Z a-z 0-9 . + - _`.
    pub version: Arc<str>,
    /// A valid tag ([`tags::valid_tag`]).
    pub tag: Arc<str>,
}

impl Info {
    pub(crate) fn validate(i: bindings::Info) -> Result<Info, LoadError> {
        if !tags::valid_tag(&i.tag) {
            let message = format!("`{}` is not 1 to 32 of a-z, 0-9, `-`, `_`", i.tag.chars().take(64).collect::<String>());
            return Err(LoadError::Info { field: "tag", message });
        }
        let version_ok = !i.version.is_empty()
            && i.version.len() <= 64
            && i.version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b'_'));
        if !version_ok {
            let message = format!("`{}` is not 1 to 64 of A-Z, a-z, 0-9, `.`, `+`, `-`, `_`", i.version.chars().take(64).collect::<String>());
            return Err(LoadError::Info { field: "version", message });
        }
        if i.name.is_empty() || i.name.chars().count() > 128 || i.name.chars().any(char::is_control) {
            return Err(LoadError::Info { field: "name", message: "must be 1 to 128 printable characters".into() });
        }
        Ok(Info { name: i.name, version: Arc::from(i.version), tag: Arc::from(i.tag) })
    }
}

/// Prometheus children resolved once at load, so calls take no lock.
struct PluginMetrics {
    duration: Histogram,
    faults: Vec<IntCounter>,
}

/// A compiled, validated, pre-instantiated strategy.
pub struct Plugin {
    /// Unique per load (keys the per-thread warm instances).
    pub(crate) uid: u64,
    pub info: Info,
    /// Hex SHA-256 of the component bytes.
    pub sha256: Arc<str>,
    pub loaded_at: SystemTime,
    /// File in the plugins directory it came from (`None`: uploaded without a directory).
    pub file: Option<String>,
    pub(crate) bytes: Arc<[u8]>,
    pub(crate) pre: StrategyPre<GuestState>,
    calls: AtomicU64,
    faults: [AtomicU64; 8],
    consecutive: AtomicU32,
    disabled: AtomicBool,
    metrics: Option<PluginMetrics>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.info).field("sha256", &self.sha256).finish_non_exhaustive()
    }
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// Hex SHA-256 of component bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A plugin's public state, as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginSummary {
    pub tag: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// Unix seconds.
    pub loaded_at: u64,
    pub file: Option<String>,
    pub calls: u64,
    /// Fault counts by kind (kinds with 0 omitted).
    pub faults: std::collections::BTreeMap<&'static str, u64>,
    pub disabled: bool,
}

impl Plugin {
    pub(crate) fn new(
        info: Info,
        bytes: Arc<[u8]>,
        pre: StrategyPre<GuestState>,
        file: Option<String>,
        metrics: Option<&StrategyMetrics>,
    ) -> Plugin {
        let metrics = metrics.map(|m| PluginMetrics {
            duration: m.call_duration.with_label_values(&[&*info.tag]),
            faults: FaultKind::ALL.iter().map(|k| m.faults.with_label_values(&[&*info.tag, k.label()])).collect(),
        });
        Plugin {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            sha256: Arc::from(sha256_hex(&bytes)),
            info,
            loaded_at: SystemTime::now(),
            file,
            bytes,
            pre,
            calls: AtomicU64::new(0),
            faults: Default::default(),
            consecutive: AtomicU32::new(0),
            disabled: AtomicBool::new(false),
            metrics,
        }
    }

    /// True once the plugin faulted `disable_after` times in a row; it stays disabled until a
    /// new version is loaded.
    pub fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Calls so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Faults of `kind` so far.
    pub fn faults(&self, kind: FaultKind) -> u64 {
        self.faults[kind.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, out: &CallOutcome, took: Duration, disable_after: u32) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.duration.observe(took.as_secs_f64());
        }
        match out {
            CallOutcome::Scored(_) => {
                // Only write when needed: this line runs on every successful call.
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
            }
            CallOutcome::Fault(f) => {
                self.faults[f.kind.index()].fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.faults[f.kind.index()].inc();
                }
                let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(strategy = %self.info.tag, version = %self.info.version, kind = f.kind.label(), detail = %f.detail, consecutive = n, "strategy plugin fault; native ranking used for this request");
                if n >= disable_after && !self.disabled.swap(true, Ordering::Relaxed) {
                    tracing::error!(strategy = %self.info.tag, version = %self.info.version, consecutive = n, "strategy plugin disabled after repeated faults; deploy a fixed version to re-enable the tag");
                }
            }
        }
    }

    /// The admin view.
    pub fn summary(&self) -> PluginSummary {
        PluginSummary {
            tag: self.info.tag.to_string(),
            name: self.info.name.clone(),
            version: self.info.version.to_string(),
            sha256: self.sha256.to_string(),
            loaded_at: self.loaded_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            file: self.file.clone(),
            calls: self.calls(),
            faults: FaultKind::ALL.iter().map(|k| (k.label(), self.faults(*k))).filter(|(_, n)| *n > 0).collect(),
            disabled: self.disabled(),
        }
    }
}
