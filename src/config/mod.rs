//! Configuration: the external TOML format (`Raw*`, serde, `deny_unknown_fields`) and its
//! validation into the runtime [`Settings`]. Validation collects *every* problem with its TOML
//! path instead of stopping at the first, and never panics on operator input.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod tls;
use serde::Deserialize;

use crate::access::KeyEntry;
use crate::secret::KeyHash;
use crate::catalog::{
    Catalog, Category, DataCenter, Deployment, DeploymentKind, GpuProfile, Model, Prior, Provider, TokenPrice,
};
use crate::pricing::{
    EnergySettings, FeedFormat, HistorySettings, PollSettings, PushSettings, ReplaySettings, ReplaySource,
    ReplayStart,
};
use crate::routing::tags::StrategySet;
use crate::clock;
use crate::secret::Secret;
use crate::upstream::probe::HealthSettings;
use crate::upstream::ExchangeLimits;
use crate::proxy::WorldSettings;
use crate::telemetry::TelemetrySettings;
use crate::routing::wasm::PluginSettings;
use crate::store::{StoreLocation, StoreSettings};
use crate::usage::UsageSettings;

/// One problem found in a config, with the TOML path it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

/// Everything wrong with a config. Its `Display` lists one problem per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- external format

/// The TOML file as written by an operator. See `config/joule.example.toml`.
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `sqlite` (default), `postgres` or `none`.
    pub backend: Option<String>,
    /// SQLite file. Default `joule.db` beside the config file.
    pub path: Option<String>,
    /// PostgreSQL connection string; prefer `url_env` when it holds a password.
    pub url: Option<String>,
    /// Environment variable holding the PostgreSQL connection string.
    pub url_env: Option<String>,
    /// Where usage records wait while the store is unavailable.
    pub spill_path: Option<String>,
    pub queue_capacity: Option<usize>,
    pub batch_size: Option<usize>,
    pub flush_interval_ms: Option<u64>,
    pub retry_interval_ms: Option<u64>,
    pub budget_sync_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Environment variable holding the admin token.
    pub token_env: Option<String>,
    /// Hex SHA-256 of the admin token (`joule hash-key TOKEN`).
    pub token_sha256: Option<String>,
}

/// `[plugins]`: the Wasm strategy host.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugins {
    /// Directory of strategy components (`*.wasm`), loaded at start and watched.
    pub dir: Option<String>,
    /// Watch `dir` and swap plugins as files change. Default true.
    pub watch: Option<bool>,
    pub call_timeout_ms: Option<u64>,
    pub memory_limit_mib: Option<u64>,
    pub disable_after: Option<u32>,
    /// Append every route decision (inputs and result) as JSON lines to this file.
    pub decision_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default)]
    pub listen: Vec<String>,
    pub tls: Option<RawTls>,
    pub admin_listen: Option<String>,
    pub threads: Option<usize>,
    pub grace_period_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub listen: Vec<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub stream_idle_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub client_body_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub enabled: Option<bool>,
    pub alpha: Option<f64>,
    pub prior_weight: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub failure_threshold: Option<u32>,
    pub open_base_ms: Option<u64>,
    pub open_max_ms: Option<u64>,
    pub probe_interval_ms: Option<u64>,
    pub probe_timeout_ms: Option<u64>,
    pub probe_third_party: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataCenter {
    pub id: String,
    pub name: Option<String>,
    pub price_node: Option<String>,
    pub pue: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub id: String,
    pub base_url: String,
    pub api_key_env: Option<String>,
    pub ca_file: Option<String>,
    pub routing_fee: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub id: String,
    pub category: String,
    pub owned_by: Option<String>,
    pub created: Option<u64>,
    pub ttft_timeout_ms: Option<u64>,
    #[serde(default)]
    pub deployments: Vec<RawDeployment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    pub id: String,
    pub data_center: Option<String>,
    pub url: Option<String>,
    pub api_key_env: Option<String>,
    pub provider: Option<String>,
    pub upstream_model: Option<String>,
    pub base_price_input: Option<f64>,
    pub base_price_output: Option<f64>,
    pub list_price_input: Option<f64>,
    pub list_price_output: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// GPU profile of a hosted deployment (energy part of its token price).
    pub gpu: Option<RawGpu>,
    pub floor_price_input: Option<f64>,
    pub floor_price_output: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpu {
    pub node_kw: Option<f64>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnergy {
    pub min_usd_per_mwh: Option<f64>,
    pub max_usd_per_mwh: Option<f64>,
    pub stale_fallback_usd_per_mwh: Option<f64>,
    pub refresh_s: Option<u64>,
    pub data_dir: Option<String>,
    pub history_days: Option<u64>,
    pub replay: Option<RawReplay>,
    #[serde(default)]
    pub poll: Vec<RawPoll>,
    pub push: Option<RawPush>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplay {
    #[serde(default)]
    pub files: Vec<String>,
    pub speed: Option<f64>,
    pub start: Option<String>,
    pub repeat: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    pub url: String,
    pub format: Option<String>,
    pub interval_s: Option<u64>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPush {
    pub token_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: String,
    /// Hex SHA-256 of the key (`joule hash-key KEY` prints it).
    pub sha256: String,
    /// Project (by name) the key belongs to; default none.
    pub project: Option<String>,
}

// ---------------------------------------------------------------- runtime settings

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated listener settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Cleartext listeners (may be empty when TLS is configured).
    pub listen: Vec<SocketAddr>,
    pub tls: Option<TlsSettings>,
    /// Admin listener (`/metrics`, `/healthz`); none disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Worker threads for the API service. Default: number of CPUs.
    pub threads: usize,
    /// How long in-flight requests may run after SIGTERM. Default 30 s.
    pub grace_period: Duration,
}

/// TLS listener settings; files are checked to exist and parse at validation time.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub limits: ExchangeLimits,
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
}

impl Settings {
    /// The part of the settings a request's [`World`] is built from.
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

/// Reads and validates a config file.
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
/// As [`load`].
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

fn single(path: &str, message: String) -> ConfigError {
    ConfigError { problems: vec![ConfigProblem { path: path.into(), message }] }
}

struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem { path: path.into(), message: message.into() });
    }

    fn addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.add(path, format!("`{s}` is not an address like 127.0.0.1:8080"));
                None
            }
        }
    }

    fn positive(&mut self, path: &str, v: Option<f64>, default: f64) -> f64 {
        match v {
            None => default,
            Some(x) if x.is_finite() && x > 0.0 => x,
            Some(x) => {
                self.add(path, format!("must be a finite number > 0, got {x}"));
                default
            }
        }
    }

    fn required_positive(&mut self, path: &str, v: Option<f64>) -> f64 {
        if v.is_none() {
            self.add(path, "missing");
            return 1.0;
        }
        self.positive(path, v, 1.0)
    }

    fn optional_price(&mut self, path: &str, v: Option<f64>) -> f64 {
        match v {
            None => 0.0,
            some => self.price(path, some),
        }
    }

    fn price(&mut self, path: &str, v: Option<f64>) -> f64 {
        match v {
            None => {
                self.add(path, "missing ($ per million tokens)");
                0.0
            }
            Some(x) if x.is_finite() && x >= 0.0 => x,
            Some(x) => {
                self.add(path, format!("must be a finite number >= 0, got {x}"));
                0.0
            }
        }
    }

    fn secret_env(
        &mut self,
        path: &str,
        name: &Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Secret<String>> {
        let name = name.as_ref()?;
        match env(name) {
            Some(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                self.add(path, format!("environment variable `{name}` is not set"));
                None
            }
        }
    }
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// Checks that `url` is an absolute http(s) URL with a host.
fn check_url(problems: &mut Problems, path: &str, url: &str) -> Option<String> {
    match reqwest::Url::parse(url) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
            Some(url.trim_end_matches('/').to_string())
        }
        Ok(_) => {
            problems.add(path, format!("`{url}` must be an http:// or https:// URL with a host"));
            None
        }
        Err(e) => {
            problems.add(path, format!("`{url}` is not a URL: {e}"));
            None
        }
    }
}

fn validate(
    raw: RawConfig,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let mut p = Problems(Vec::new());

    // server
    let listen: Vec<SocketAddr> = raw
        .server
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, s)| p.addr(&format!("server.listen[{i}]"), s))
        .collect();
    let tls = raw.server.tls.as_ref().and_then(|t| {
        let listen: Vec<SocketAddr> = t
            .listen
            .iter()
            .enumerate()
            .filter_map(|(i, s)| p.addr(&format!("server.tls.listen[{i}]"), s))
            .collect();
        if t.listen.is_empty() {
            p.add("server.tls.listen", "at least one address is required when [server.tls] is present");
        }
        let cert = match &t.cert_file {
            Some(c) => Some(resolve(base, c)),
            None => {
                p.add("server.tls.cert_file", "missing");
                None
            }
        };
        let key = match &t.key_file {
            Some(k) => Some(resolve(base, k)),
            None => {
                p.add("server.tls.key_file", "missing");
                None
            }
        };
        if let (Some(c), Some(k)) = (&cert, &key) {
            if let Err(e) = tls::check_identity(c, k) {
                p.add("server.tls", e.to_string());
            }
        }
        Some(TlsSettings { listen, cert_file: cert?, key_file: key? })
    });
    if raw.server.listen.is_empty() && raw.server.tls.is_none() {
        p.add("server.listen", "no listener configured: set server.listen and/or [server.tls]");
    }
    let admin_listen = raw.server.admin_listen.as_deref().and_then(|s| p.addr("server.admin_listen", s));
    let threads = match raw.server.threads {
        Some(0) => {
            p.add("server.threads", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
    };
    let server = ServerSettings {
        listen,
        tls,
        admin_listen,
        threads,
        grace_period: Duration::from_secs(raw.server.grace_period_s.unwrap_or(30)),
    };

    // limits
    let l = &raw.limits;
    let max_body = l.max_body_bytes.unwrap_or(16 * 1024 * 1024);
    if max_body == 0 {
        p.add("limits.max_body_bytes", "must be > 0");
    }
    let limits = ExchangeLimits {
        max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
        connect_timeout: ms(l.connect_timeout_ms, 2_000),
        first_byte_timeout: ms(l.first_byte_timeout_ms, 30_000),
        stream_idle_timeout: ms(l.stream_idle_timeout_ms, 120_000),
        request_timeout: ms(l.request_timeout_ms, 600_000),
        client_body_timeout: ms(l.client_body_timeout_ms, 30_000),
    };
    for (name, v) in [
        ("connect_timeout_ms", l.connect_timeout_ms),
        ("first_byte_timeout_ms", l.first_byte_timeout_ms),
        ("stream_idle_timeout_ms", l.stream_idle_timeout_ms),
        ("request_timeout_ms", l.request_timeout_ms),
        ("client_body_timeout_ms", l.client_body_timeout_ms),
    ] {
        if v == Some(0) {
            p.add(format!("limits.{name}"), "must be > 0");
        }
    }

    // log
    let log_format = match raw.log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.add("log.format", format!("`{other}` is not one of: text, json"));
            LogFormat::Text
        }
    };
    let log_level = raw.log.level.clone().unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        p.add("log.level", format!("`{log_level}` is not a level or filter (e.g. info, debug, joule=debug)"));
    }

    // telemetry and health
    let t = &raw.telemetry;
    let h = &raw.health;
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
    let health = HealthSettings {
        probe_interval: match h.probe_interval_ms {
            Some(0) => None,
            v => Some(ms(v, 5_000)),
        },
        probe_timeout: ms(h.probe_timeout_ms, 2_000),
        probe_third_party: h.probe_third_party.unwrap_or(false),
    };
    if h.probe_timeout_ms == Some(0) {
        p.add("health.probe_timeout_ms", "must be > 0");
    }

    // data centers
    let mut data_centers = Vec::new();
    let mut seen = HashSet::new();
    for (i, dc) in raw.data_centers.iter().enumerate() {
        let path = format!("data_centers[{i}]");
        if !seen.insert(dc.id.clone()) {
            p.add(format!("{path}.id"), format!("duplicate data center id `{}`", dc.id));
        }
        if dc.id.is_empty() {
            p.add(format!("{path}.id"), "must not be empty");
        }
        let pue = p.positive(&format!("{path}.pue"), dc.pue, 1.2);
        if let Some(node) = &dc.price_node {
            if node.split_once('/').is_none_or(|(iso, loc)| iso.is_empty() || loc.is_empty()) {
                p.add(format!("{path}.price_node"), format!("`{node}` must be `ISO/location`, e.g. `CAISO/SP-15`"));
            }
        }
        data_centers.push(DataCenter {
            id: dc.id.clone(),
            name: dc.name.clone().unwrap_or_else(|| dc.id.clone()),
            price_node: dc.price_node.clone(),
            pue,
        });
    }

    // providers
    let mut providers = Vec::new();
    let mut seen = HashSet::new();
    for (i, pr) in raw.providers.iter().enumerate() {
        let path = format!("providers[{i}]");
        if !seen.insert(pr.id.clone()) {
            p.add(format!("{path}.id"), format!("duplicate provider id `{}`", pr.id));
        }
        let base_url = check_url(&mut p, &format!("{path}.base_url"), &pr.base_url).unwrap_or_default();
        let api_key = p.secret_env(&format!("{path}.api_key_env"), &pr.api_key_env, env);
        let ca_file = pr.ca_file.as_ref().map(|c| resolve(base, c));
        if let Some(ca) = &ca_file {
            if let Err(e) = crate::upstream::client::read_ca(ca) {
                p.add(format!("{path}.ca_file"), e.to_string());
            }
        }
        let fee = pr.routing_fee.unwrap_or(0.05);
        if !(fee.is_finite() && (0.0..=1.0).contains(&fee)) {
            p.add(format!("{path}.routing_fee"), format!("must be between 0 and 1, got {fee}"));
        }
        providers.push(Provider { id: pr.id.clone(), base_url, api_key, ca_file, routing_fee: fee });
    }

    // models
    let mut models = Vec::new();
    let mut seen_models = HashSet::new();
    let mut seen_deployments = HashSet::new();
    for (i, m) in raw.models.iter().enumerate() {
        let path = format!("models[{i}]");
        if !seen_models.insert(m.id.clone()) {
            p.add(format!("{path}.id"), format!("duplicate model id `{}`", m.id));
        }
        if m.id.is_empty() || m.id.contains('@') || m.id.chars().any(char::is_whitespace) {
            p.add(format!("{path}.id"), format!("`{}` must be non-empty without `@` or spaces", m.id));
        }
        let category = match m.category.as_str() {
            "free" => Category::Free,
            "hosted" => Category::Hosted,
            "third-party" => Category::ThirdParty,
            other => {
                p.add(format!("{path}.category"), format!("`{other}` is not one of: free, hosted, third-party"));
                Category::Hosted
            }
        };
        if m.deployments.is_empty() {
            p.add(format!("{path}.deployments"), "a model needs at least one deployment");
        }
        let mut deployments = Vec::new();
        for (j, d) in m.deployments.iter().enumerate() {
            let dpath = format!("{path}.deployments[{j}]");
            if !seen_deployments.insert(d.id.clone()) {
                p.add(format!("{dpath}.id"), format!("duplicate deployment id `{}`", d.id));
            }
            let prior = Prior {
                ttft_ms: p.positive(&format!("{dpath}.ttft_ms"), d.ttft_ms, 500.0),
                tokens_per_s: p.positive(&format!("{dpath}.tokens_per_s"), d.tokens_per_s, 50.0),
            };
            let upstream_model = d.upstream_model.clone().unwrap_or_else(|| m.id.clone());
            let kind = match (&d.data_center, &d.provider) {
                (Some(dc), None) => {
                    let dc_index = data_centers.iter().position(|x| &x.id == dc);
                    if dc_index.is_none() {
                        p.add(format!("{dpath}.data_center"), format!("unknown data center `{dc}`"));
                    }
                    let url = match &d.url {
                        Some(u) => check_url(&mut p, &format!("{dpath}.url"), u),
                        None => {
                            p.add(format!("{dpath}.url"), "a hosted deployment needs the backend url");
                            None
                        }
                    };
                    if d.list_price_input.is_some() || d.list_price_output.is_some() {
                        p.add(dpath.to_string(), "list_price_* is for provider routes; hosted deployments use base_price_*");
                    }
                    let base = TokenPrice {
                        input: p.price(&format!("{dpath}.base_price_input"), d.base_price_input),
                        output: p.price(&format!("{dpath}.base_price_output"), d.base_price_output),
                    };
                    let gpu = d.gpu.as_ref().map(|g| GpuProfile {
                        node_kw: p.required_positive(&format!("{dpath}.gpu.node_kw"), g.node_kw),
                        prefill_tokens_per_s: p.required_positive(&format!("{dpath}.gpu.prefill_tokens_per_s"), g.prefill_tokens_per_s),
                        decode_tokens_per_s: p.required_positive(&format!("{dpath}.gpu.decode_tokens_per_s"), g.decode_tokens_per_s),
                    });
                    let priced = dc_index.and_then(|i| data_centers.get(i)).is_some_and(|x| x.price_node.is_some());
                    if priced && gpu.is_none() {
                        p.add(
                            format!("{dpath}.gpu"),
                            "the data center has a price_node: set gpu = { node_kw, prefill_tokens_per_s, decode_tokens_per_s }",
                        );
                    }
                    let floor = TokenPrice {
                        input: p.optional_price(&format!("{dpath}.floor_price_input"), d.floor_price_input),
                        output: p.optional_price(&format!("{dpath}.floor_price_output"), d.floor_price_output),
                    };
                    DeploymentKind::Hosted {
                        data_center: dc_index.unwrap_or(0),
                        base_url: url.unwrap_or_default(),
                        api_key: p.secret_env(&format!("{dpath}.api_key_env"), &d.api_key_env, env),
                        base_price: base,
                        gpu,
                        floor,
                    }
                }
                (None, Some(pr)) => {
                    let idx = providers.iter().position(|x: &Provider| &x.id == pr);
                    if idx.is_none() {
                        p.add(format!("{dpath}.provider"), format!("unknown provider `{pr}`"));
                    }
                    if d.url.is_some() || d.api_key_env.is_some() {
                        p.add(dpath.to_string(), "url/api_key_env belong to the provider for provider routes");
                    }
                    if d.gpu.is_some() || d.floor_price_input.is_some() || d.floor_price_output.is_some() {
                        p.add(dpath.clone(), "gpu and floor_price_* are for hosted deployments");
                    }
                    let list = TokenPrice {
                        input: p.price(&format!("{dpath}.list_price_input"), d.list_price_input),
                        output: p.price(&format!("{dpath}.list_price_output"), d.list_price_output),
                    };
                    DeploymentKind::Provider { provider: idx.unwrap_or(0), list_price: list }
                }
                (Some(_), Some(_)) => {
                    p.add(dpath.clone(), "set either data_center (hosted) or provider (third-party), not both");
                    continue;
                }
                (None, None) => {
                    p.add(dpath.clone(), "set data_center (hosted) or provider (third-party)");
                    continue;
                }
            };
            match (&category, &kind) {
                (Category::ThirdParty, DeploymentKind::Hosted { .. }) => {
                    p.add(dpath.clone(), "a third-party model is served by provider routes only")
                }
                (Category::Hosted | Category::Free, DeploymentKind::Provider { .. }) => {}
                _ => {}
            }
            deployments.push(Deployment { id: d.id.clone(), upstream_model, prior, kind });
        }
        models.push(Model {
            id: m.id.clone(),
            category,
            owned_by: m.owned_by.clone().unwrap_or_else(|| "joule".into()),
            created: m.created.unwrap_or(1_730_000_000),
            ttft_timeout: match m.ttft_timeout_ms {
                Some(0) => {
                    p.add(format!("{path}.ttft_timeout_ms"), "must be > 0");
                    None
                }
                v => v.map(Duration::from_millis),
            },
            deployments,
        });
    }

    // keys
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for (i, k) in raw.keys.iter().enumerate() {
        let path = format!("keys[{i}]");
        match KeyHash::from_hex(&k.sha256) {
            Some(h) => {
                if !seen.insert(h) {
                    p.add(format!("{path}.sha256"), "duplicate key hash");
                }
                if let Some(pname) = &k.project {
                    if let Err(e) = crate::store::check_name("project", pname) {
                        p.add(format!("{path}.project"), e.to_string());
                    }
                }
                keys.push(KeyEntry { name: k.name.clone(), hash: h, project: k.project.clone() });
            }
            None => p.add(format!("{path}.sha256"), "must be 64 hex characters (see `joule hash-key`)"),
        }
    }

    let default_strategy = match raw.default_strategy.as_deref() {
        None => StrategySet::default_price(),
        Some(s) => match StrategySet::parse_list(s) {
            Ok(set) => set,
            Err(e) => {
                p.add("default_strategy", e.to_string());
                StrategySet::default_price()
            }
        },
    };

    let energy = validate_energy(&mut p, &raw.energy, &data_centers, base, env);
    let store = store_settings(&mut p, &raw.store, base, env);
    let admin_token = admin_token(&mut p, &raw.admin, env);
    let plugins = validate_plugins(&mut p, &raw.plugins, base);

    if !p.0.is_empty() {
        return Err(ConfigError { problems: p.0 });
    }
    Ok(Settings {
        server,
        limits,
        log_format,
        log_level,
        default_strategy,
        catalog: Catalog::new(models, data_centers, providers),
        keys,
        telemetry,
        health,
        energy,
        store,
        admin_token,
        plugins,
    })
}

fn validate_energy(
    p: &mut Problems,
    raw: &RawEnergy,
    data_centers: &[DataCenter],
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> EnergySettings {
    let d = EnergySettings::default();
    let finite = |p: &mut Problems, path: &str, v: Option<f64>, default: f64| match v {
        Some(x) if !x.is_finite() => {
            p.add(path, format!("must be a finite number, got {x}"));
            default
        }
        Some(x) => x,
        None => default,
    };
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
        None => d.history.retention_days,
    };
    let history = HistorySettings { data_dir: raw.data_dir.as_ref().map(|x| resolve(base, x)), retention_days };

    let replay = raw.replay.as_ref().map(|r| {
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
    });

    let polls: Vec<PollSettings> = raw
        .poll
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("energy.poll[{i}]");
            let url = check_url(p, &format!("{path}.url"), &r.url).unwrap_or_default();
            let format = match r.format.as_deref() {
                None | Some("json") => FeedFormat::Json,
                Some("csv") => FeedFormat::Csv,
                Some(other) => {
                    p.add(format!("{path}.format"), format!("`{other}` is not one of: json, csv"));
                    FeedFormat::Json
                }
            };
            for (name, v) in [("interval_s", r.interval_s), ("timeout_ms", r.timeout_ms)] {
                if v == Some(0) {
                    p.add(format!("{path}.{name}"), "must be > 0");
                }
            }
            PollSettings {
                url,
                format,
                interval: Duration::from_secs(r.interval_s.unwrap_or(60).max(1)),
                timeout: Duration::from_millis(r.timeout_ms.unwrap_or(5_000).max(1)),
            }
        })
        .collect();

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

fn store_settings(
    p: &mut Problems,
    raw: &RawStore,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<StoreSettings> {
    let backend = raw.backend.as_deref().unwrap_or("sqlite");
    let location = match backend {
        "none" => return None,
        "sqlite" => {
            if raw.url.is_some() || raw.url_env.is_some() {
                p.add("store", "url/url_env are for backend = \"postgres\"");
            }
            StoreLocation::Sqlite(resolve(base, raw.path.as_deref().unwrap_or("joule.db")))
        }
        "postgres" => {
            if raw.path.is_some() {
                p.add("store.path", "path is for backend = \"sqlite\"");
            }
            let url = match (&raw.url, &raw.url_env) {
                (Some(u), None) => Some(Secret::new(u.clone())),
                (None, Some(_)) => p.secret_env("store.url_env", &raw.url_env, env),
                _ => {
                    p.add("store.url", "set exactly one of url or url_env for backend = \"postgres\"");
                    None
                }
            };
            if let Some(u) = &url {
                if u.expose().parse::<tokio_postgres::Config>().is_err() {
                    p.add("store.url", "not a PostgreSQL connection string (postgres://user@host/db or host=… dbname=…)");
                }
            }
            StoreLocation::Postgres(url.unwrap_or_default())
        }
        other => {
            p.add("store.backend", format!("`{other}` is not one of: sqlite, postgres, none"));
            return None;
        }
    };
    let spill_default = match &location {
        StoreLocation::Sqlite(db) => {
            let mut s = db.clone().into_os_string();
            s.push(".usage-spill.jsonl");
            PathBuf::from(s)
        }
        StoreLocation::Postgres(_) => base.join("joule.usage-spill.jsonl"),
    };
    let mut count = |field: &str, v: Option<usize>, default: usize, max: usize| match v {
        None => default,
        Some(n) if (1..=max).contains(&n) => n,
        Some(n) => {
            p.add(format!("store.{field}"), format!("must be between 1 and {max}, got {n}"));
            default
        }
    };
    let queue_capacity = count("queue_capacity", raw.queue_capacity, 65_536, 10_000_000);
    let batch_size = count("batch_size", raw.batch_size, 500, 10_000);
    for (name, v) in [
        ("flush_interval_ms", raw.flush_interval_ms),
        ("retry_interval_ms", raw.retry_interval_ms),
        ("budget_sync_interval_ms", raw.budget_sync_interval_ms),
    ] {
        if v == Some(0) {
            p.add(format!("store.{name}"), "must be > 0");
        }
    }
    Some(StoreSettings {
        location,
        usage: UsageSettings {
            queue_capacity,
            batch_size,
            flush_interval: ms(raw.flush_interval_ms, 200),
            retry_interval: ms(raw.retry_interval_ms, 1_000),
            spill_path: raw.spill_path.as_deref().map_or(spill_default, |s| resolve(base, s)),
        },
        budget_sync: ms(raw.budget_sync_interval_ms, 2_000),
    })
}

fn admin_token(p: &mut Problems, raw: &RawAdmin, env: &dyn Fn(&str) -> Option<String>) -> Option<KeyHash> {
    match (&raw.token_env, &raw.token_sha256) {
        (None, None) => None,
        (Some(_), None) => p.secret_env("admin.token_env", &raw.token_env, env).map(|t| KeyHash::of(t.expose())),
        (None, Some(h)) => {
            let hash = KeyHash::from_hex(h);
            if hash.is_none() {
                p.add("admin.token_sha256", "must be 64 hex characters (see `joule hash-key`)");
            }
            hash
        }
        (Some(_), Some(_)) => {
            p.add("admin", "set token_env or token_sha256, not both");
            None
        }
    }
}

fn validate_plugins(p: &mut Problems, raw: &RawPlugins, base: &Path) -> PluginSettings {
    let dir = raw.dir.as_ref().map(|d| resolve(base, d));
    if let Some(d) = &dir {
        if !d.is_dir() {
            p.add("plugins.dir", format!("`{}` is not a directory", d.display()));
        }
    }
    let mut host = crate::routing::wasm::HostConfig::default();
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
