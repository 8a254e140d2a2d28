//! Configuration: the external TOML format (`Raw*`, serde, `deny_unknown_fields`) and its
//! validation into the runtime [`Settings`]. Validation collects *every* problem with its TOML
//! path instead of stopping at the first, and never panics on operator input.
//!
//! This file loads and parses; `problems` holds the problem list and the checks the areas
//! share. Each area has its own file with its `Raw*` section types and the function that turns
//! them into the settings type of the module that owns it:
//!
//! | file | TOML | settings |
//! |---|---|---|
//! | `server` | `[server]`, `[server.tls]`, `[log]` | [`ServerSettings`], [`LogFormat`] |
//! | `timeouts` | `[limits]` | [`ExchangeLimits`] |
//! | `health` | `[telemetry]`, `[health]` | [`TelemetrySettings`], [`HealthSettings`] |
//! | `catalog` | `[[data_centers]]`, `[[providers]]`, `[[models]]` | [`Catalog`] |
//! | `energy` | `[energy]` | [`EnergySettings`] |
//! | `store` | `[store]` | [`StoreSettings`] |
//! | `plugins` | `[plugins]`, `default_strategy` | [`PluginSettings`], [`StrategySet`] |
//! | `keys` | `[[keys]]`, `[admin]` | [`KeyEntry`], the admin token's [`KeyHash`] |
//!
//! Problems are reported section by section in the order `validate` visits them — server,
//! limits, log, telemetry, health, data centers, providers, models, keys, default strategy,
//! energy, store, admin, plugins — and within a section by position in the file.

mod batch;
mod catalog;
mod energy;
mod health;
mod keys;
mod plugins;
mod problems;
pub mod reload;
mod server;
mod store;
mod timeouts;
pub mod tls;

#[cfg(test)]
mod tests;

use std::path::Path;

use serde::Deserialize;

use crate::access::KeyEntry;
use crate::catalog::Catalog;
use crate::pricing::EnergySettings;
use crate::proxy::WorldSettings;
use crate::routing::tags::StrategySet;
use crate::routing::wasm::PluginSettings;
use crate::secret::KeyHash;
use crate::store::StoreSettings;
use crate::telemetry::TelemetrySettings;
use crate::upstream::probe::HealthSettings;
use crate::upstream::ExchangeLimits;

pub use catalog::{RawDataCenter, RawDeployment, RawGpu, RawModel, RawProvider};
pub use energy::{RawEnergy, RawPoll, RawPush, RawReplay};
pub use health::{RawHealth, RawTelemetry};
pub use keys::{RawAdmin, RawKey};
pub use plugins::RawPlugins;
pub use problems::{ConfigError, ConfigProblem};
pub use server::{CertificateSettings, LogFormat, RawCertificate, RawLog, RawServer, RawTls, ServerSettings, TlsSettings};
pub use batch::RawBatch;
pub use store::RawStore;
pub use timeouts::RawLimits;

use problems::{single, Env, Problems};

/// The TOML file as written by an operator. See `config/joule.example.toml`. Every section is
/// optional except a listener in `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub health: RawHealth,
    /// Strategy used when neither the request nor the project names one. Default `price`.
    pub default_strategy: Option<String>,
    #[serde(default)]
    pub data_centers: Vec<RawDataCenter>,
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// Energy prices: sanity range, stale fallback, feeds, price history.
    #[serde(default)]
    pub energy: RawEnergy,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub plugins: RawPlugins,
    /// The batch API (`/v1/files`, `/v1/batches`) and its scheduler.
    #[serde(default)]
    pub batch: RawBatch,
}

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub limits: ExchangeLimits,
    /// `[limits] backend = "redis"`: rate limits and budgets shared through that server.
    pub shared_limits: Option<crate::access::SharedSettings>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub default_strategy: StrategySet,
    pub catalog: Catalog,
    pub keys: Vec<KeyEntry>,
    pub telemetry: TelemetrySettings,
    pub health: HealthSettings,
    pub energy: EnergySettings,
    /// `None`: `backend = "none"` (config keys only, no usage records, no projects).
    pub store: Option<StoreSettings>,
    /// SHA-256 of the admin API token; `None` disables the admin API (but not /metrics).
    pub admin_token: Option<KeyHash>,
    pub plugins: PluginSettings,
    pub batch: crate::batch::BatchSettings,
}

impl Settings {
    /// The part of the settings a request's [`World`](crate::proxy::World) is built from.
    pub fn world(&self) -> WorldSettings {
        WorldSettings {
            catalog: self.catalog.clone(),
            telemetry: self.telemetry.clone(),
            limits: self.limits.clone(),
            default_strategy: self.default_strategy.clone(),
            admin_token: self.admin_token,
        }
    }
}

/// Reads and validates a config file. Relative paths in it resolve against its directory;
/// environment variables come from the process.
///
/// # Errors
/// Unreadable file, TOML syntax or unknown fields, or any validation problem — all listed.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| single("<file>", format!("cannot read {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    parse(&text, base, &|name| std::env::var(name).ok())
}

/// Parses TOML text and validates it. Relative file paths resolve against `base`; `env`
/// looks up environment variables (injected so tests need not mutate the process env).
///
/// # Errors
/// As [`load`]. A TOML error is one problem at `line N` (or `<toml>` without a position).
pub fn parse(
    text: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let msg = e.message().to_string();
        let loc = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_else(|| "<toml>".into());
        single(&loc, msg)
    })?;
    validate(raw, base, env)
}

/// Validates every area in turn, collecting all problems; `Settings` only when there are none.
fn validate(raw: RawConfig, base: &Path, env: Env<'_>) -> Result<Settings, ConfigError> {
    let mut p = Problems::default();
    let server = server::server(&mut p, &raw.server, base);
    let limits = timeouts::limits(&mut p, &raw.limits);
    let shared_limits = timeouts::shared_limits(&mut p, &raw.limits, env);
    let (log_format, log_level) = server::log(&mut p, &raw.log);
    let telemetry = health::telemetry(&mut p, &raw.telemetry, &raw.health);
    let health = health::probes(&mut p, &raw.health);
    let catalog = catalog::catalog(&mut p, &raw.data_centers, &raw.providers, &raw.models, base, env);
    let keys = keys::keys(&mut p, &raw.keys);
    let default_strategy = plugins::default_strategy(&mut p, raw.default_strategy.as_deref());
    let energy = energy::energy(&mut p, &raw.energy, &catalog.data_centers, base, env);
    let store = store::store(&mut p, &raw.store, base, env);
    let admin_token = keys::admin_token(&mut p, &raw.admin, env);
    let plugins = plugins::plugins(&mut p, &raw.plugins, base);
    let mut batch = batch::batch(&mut p, &raw.batch);
    // A site without a forecast is planned at the price the engine would charge there.
    batch.schedule.fallback_usd_per_mwh = energy.stale_fallback_usd_per_mwh;
    p.into_result(|| Settings {
        server,
        limits,
        shared_limits,
        log_format,
        log_level,
        default_strategy,
        catalog,
        keys,
        telemetry,
        health,
        energy,
        store,
        admin_token,
        plugins,
        batch,
    })
}
