//! [`PluginSettings`]: how the gateway runs strategy plugins — where they come from, the
//! sandbox limits and the decision log. Validated from `[plugins]` in the config.

use std::path::PathBuf;

use super::HostConfig;

/// Validated `[plugins]`.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Strategy components directory. Default none: built-in strategies run natively and
    /// operator strategies can only be uploaded through the admin API (kept in memory).
    pub dir: Option<PathBuf>,
    /// Watch `dir` for changes. Default true.
    pub watch: bool,
    /// Sandbox limits: `call_timeout_ms` (default 10, at most 10000), `memory_limit_mib`
    /// (default 16, 1 to 4096), `disable_after` consecutive faults (default 5, at least 1).
    pub host: HostConfig,
    /// JSON-lines decision log. Default none.
    pub decision_log: Option<PathBuf>,
}
