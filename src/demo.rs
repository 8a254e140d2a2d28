//! `joule demo`: the gateway plus simulated GPU backends in one process, offline. Three data
//! centers serve `llama-3.1-8b-instruct` at different speeds and prices, a free model runs in
//! two of them, `gpt-4o-mini` goes through a simulated third-party provider and
//! `claude-sonnet-4` through a simulated Anthropic-API provider (translated both ways). Energy prices
//! come from a replay of four real days (July 2023, `data/energy-demo/`, compiled in),
//! accelerated so token prices move while you watch.
//!
//! The mock backends run on their own tokio runtime in a background thread, because a
//! pingora `Server` must start outside any runtime.
//!
//! Projects, keys and usage records go to an SQLite file in a fresh temporary directory
//! unless `--store-path` or `--database-url` says otherwise, and the admin API's token is
//! [`DEMO_ADMIN_TOKEN`] unless `--admin-token` overrides it. The well-known default token is
//! refused on an admin listener that is not loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;

use crate::config::{self, ConfigError, Settings};
use crate::mock::{MockApi, MockConfig, MockServer};
use crate::pricing::{ReplaySettings, ReplaySource, ReplayStart};

/// The bundled energy price excerpt (see `data/energy-demo/README.md`).
pub const ENERGY_TRACE: [ReplaySource; 3] = [
    ReplaySource::Embedded {
        name: "CAISO_RT_2023-07-11_2023-07-14.csv",
        text: include_str!("../data/energy-demo/CAISO_RT_2023-07-11_2023-07-14.csv"),
    },
    ReplaySource::Embedded {
        name: "ERCOT_RT_2023-07-11_2023-07-14.csv",
        text: include_str!("../data/energy-demo/ERCOT_RT_2023-07-11_2023-07-14.csv"),
    },
    ReplaySource::Embedded {
        name: "PJM_RT_2023-07-11_2023-07-14.csv",
        text: include_str!("../data/energy-demo/PJM_RT_2023-07-11_2023-07-14.csv"),
    },
];

/// Default replay speed of the demo: one trace minute per second.
pub const DEFAULT_SPEED: f64 = 60.0;

/// The API key the demo accepts.
pub const DEMO_KEY: &str = "sk-joule-demo";
/// The demo's default admin token (loopback admin listeners only).
pub const DEMO_ADMIN_TOKEN: &str = "joule-demo-admin";

/// Where the demo keeps its state, and its admin token.
#[derive(Debug, Clone, Default)]
pub struct DemoStore {
    /// SQLite file; default: `joule-demo.db` in a new temporary directory.
    pub sqlite_path: Option<std::path::PathBuf>,
    /// PostgreSQL connection string instead of SQLite.
    pub database_url: Option<String>,
    /// Admin token; default [`DEMO_ADMIN_TOKEN`].
    pub admin_token: Option<String>,
}
/// The credential the simulated provider requires (never shown to clients).
const PROVIDER_KEY: &str = "sk-sim-provider-secret";
const PROVIDER_KEY_ENV: &str = "JOULE_DEMO_PROVIDER_KEY";

struct Backend {
    name: &'static str,
    ttft_ms: u64,
    tokens_per_s: f64,
    bearer: Option<&'static str>,
    /// The API it speaks.
    api: MockApi,
}

const BACKENDS: [Backend; 7] = [
    Backend { name: "llama8b-caiso", ttft_ms: 120, tokens_per_s: 60.0, bearer: None, api: MockApi::OpenAi },
    Backend { name: "llama8b-ercot", ttft_ms: 60, tokens_per_s: 120.0, bearer: None, api: MockApi::OpenAi },
    Backend { name: "llama8b-pjm", ttft_ms: 200, tokens_per_s: 40.0, bearer: None, api: MockApi::OpenAi },
    Backend { name: "llama1b-caiso", ttft_ms: 40, tokens_per_s: 150.0, bearer: None, api: MockApi::OpenAi },
    Backend { name: "llama1b-ercot", ttft_ms: 30, tokens_per_s: 200.0, bearer: None, api: MockApi::OpenAi },
    Backend { name: "provider-sim", ttft_ms: 250, tokens_per_s: 80.0, bearer: Some(PROVIDER_KEY), api: MockApi::OpenAi },
    Backend { name: "anthropic-sim", ttft_ms: 300, tokens_per_s: 70.0, bearer: Some(PROVIDER_KEY), api: MockApi::Anthropic },
];

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting simulated backends: {0}")]
    Backends(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the default admin token `{DEMO_ADMIN_TOKEN}` is only allowed on a loopback admin listener; pass --admin-token")]
    PublicAdmin,
    #[error("creating the demo's temporary directory: {0}")]
    TempDir(std::io::Error),
}

/// Starts the simulated backends on loopback ephemeral ports; returns their base URLs in
/// [`BACKENDS`] order. They live until the process exits.
fn start_backends() -> Result<Vec<String>, DemoError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("joule-demo-backends".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let mut servers = Vec::new();
                for b in &BACKENDS {
                    let cfg = MockConfig {
                        ttft_ms: b.ttft_ms,
                        tokens_per_s: b.tokens_per_s,
                        tokens: 24,
                        require_bearer: b.bearer.map(str::to_string),
                        api: b.api,
                        ..MockConfig::default()
                    };
                    match MockServer::start(cfg).await {
                        Ok(s) => servers.push(s),
                        Err(e) => {
                            let _ = tx.send(Err(format!("{}: {e}", b.name)));
                            return;
                        }
                    }
                }
                let _ = tx.send(Ok(servers.iter().map(MockServer::base_url).collect::<Vec<_>>()));
                std::future::pending::<()>().await;
            });
        })
        .map_err(|e| DemoError::Backends(e.to_string()))?;
    rx.recv().map_err(|e| DemoError::Backends(e.to_string()))?.map_err(DemoError::Backends)
}

/// The demo config, as TOML, for the given backend URLs.
pub fn config_text(listen: SocketAddr, admin: SocketAddr, urls: &[String]) -> String {
    let u = |i: usize| urls.get(i).cloned().unwrap_or_default();
    format!(
        r#"# joule demo configuration (generated by `joule demo`)
default_strategy = "price"

[server]
listen = ["{listen}"]
admin_listen = "{admin}"
threads = 2
grace_period_s = 5

[log]
format = "text"
level = "info"

# `joule demo` adds a replay of the bundled July-2023 excerpt (data/energy-demo/, compiled in),
# starting one day in so the 24h price history is already filled, accelerated and repeating.
[energy]
stale_fallback_usd_per_mwh = 150

[[data_centers]]
id = "caiso-sp15"
name = "Los Angeles (CAISO SP-15)"
price_node = "CAISO/SP-15"
pue = 1.2

[[data_centers]]
id = "ercot-houston"
name = "Houston (ERCOT)"
price_node = "ERCOT/Houston"
pue = 1.3

[[data_centers]]
id = "pjm-chicago"
name = "Chicago (PJM)"
price_node = "PJM/Chicago Hub"
pue = 1.25

[[providers]]
id = "sim-openai"
base_url = "{p}"
api_key_env = "{PROVIDER_KEY_ENV}"
routing_fee = 0.05

[[providers]]
id = "sim-anthropic"
base_url = "{a}"
api = "anthropic"
api_key_env = "{PROVIDER_KEY_ENV}"
routing_fee = 0.05

[[models]]
id = "llama-3.1-8b-instruct"
category = "hosted"
owned_by = "meta"

[[models.deployments]]
id = "llama8b-caiso"
data_center = "caiso-sp15"
url = "{d0}"
upstream_model = "meta-llama/Llama-3.1-8B-Instruct"
base_price_input = 0.05
base_price_output = 0.10
ttft_ms = 120
tokens_per_s = 60
gpu = {{ node_kw = 10.2, prefill_tokens_per_s = 40000, decode_tokens_per_s = 4000 }}

[[models.deployments]]
id = "llama8b-ercot"
data_center = "ercot-houston"
url = "{d1}"
upstream_model = "meta-llama/Llama-3.1-8B-Instruct"
base_price_input = 0.06
base_price_output = 0.12
ttft_ms = 60
tokens_per_s = 120
gpu = {{ node_kw = 10.2, prefill_tokens_per_s = 40000, decode_tokens_per_s = 4000 }}

[[models.deployments]]
id = "llama8b-pjm"
data_center = "pjm-chicago"
url = "{d2}"
upstream_model = "meta-llama/Llama-3.1-8B-Instruct"
base_price_input = 0.04
base_price_output = 0.09
ttft_ms = 200
tokens_per_s = 40
gpu = {{ node_kw = 10.2, prefill_tokens_per_s = 40000, decode_tokens_per_s = 4000 }}

[[models]]
id = "llama-3.2-1b-instruct"
category = "free"
owned_by = "meta"

[[models.deployments]]
id = "llama1b-caiso"
data_center = "caiso-sp15"
url = "{d3}"
upstream_model = "meta-llama/Llama-3.2-1B-Instruct"
base_price_input = 0.01
base_price_output = 0.02
ttft_ms = 40
tokens_per_s = 150
gpu = {{ node_kw = 10.2, prefill_tokens_per_s = 200000, decode_tokens_per_s = 20000 }}

[[models.deployments]]
id = "llama1b-ercot"
data_center = "ercot-houston"
url = "{d4}"
upstream_model = "meta-llama/Llama-3.2-1B-Instruct"
base_price_input = 0.012
base_price_output = 0.022
ttft_ms = 30
tokens_per_s = 200
gpu = {{ node_kw = 10.2, prefill_tokens_per_s = 200000, decode_tokens_per_s = 20000 }}

[[models]]
id = "gpt-4o-mini"
category = "third-party"
owned_by = "openai"

[[models.deployments]]
id = "gpt-4o-mini-sim"
provider = "sim-openai"
upstream_model = "gpt-4o-mini-2024-07-18"
list_price_input = 0.15
list_price_output = 0.60
ttft_ms = 250
tokens_per_s = 80

[[models]]
id = "claude-sonnet-4"
category = "third-party"
owned_by = "anthropic"

[[models.deployments]]
id = "claude-sonnet-4-sim"
provider = "sim-anthropic"
upstream_model = "claude-sonnet-4-20250514"
list_price_input = 3.0
list_price_output = 15.0
list_price_cache_read = 0.30
list_price_cache_write = 3.75
max_tokens = 4096
ttft_ms = 300
tokens_per_s = 70

[[keys]]
name = "demo"
sha256 = "{key}"
"#,
        p = u(5),
        a = u(6),
        d0 = u(0),
        d1 = u(1),
        d2 = u(2),
        d3 = u(3),
        d4 = u(4),
        key = crate::secret::KeyHash::of(DEMO_KEY).to_hex(),
    )
}

/// The `[store]` and `[admin]` sections of the demo config. Creates the temporary directory
/// when no location is given.
///
/// # Errors
/// The default token on a public admin listener, or the directory cannot be created.
pub fn store_text(admin: SocketAddr, store: &DemoStore) -> Result<String, DemoError> {
    if store.admin_token.is_none() && !admin.ip().is_loopback() {
        return Err(DemoError::PublicAdmin);
    }
    let token = store.admin_token.as_deref().unwrap_or(DEMO_ADMIN_TOKEN);
    // TOML basic strings: escape what could end or break them.
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let backend = match (&store.database_url, &store.sqlite_path) {
        (Some(url), _) => format!("backend = \"postgres\"\nurl = \"{}\"", quote(url)),
        (None, Some(path)) => format!("backend = \"sqlite\"\npath = \"{}\"", quote(&path.to_string_lossy())),
        (None, None) => {
            let dir = std::env::temp_dir().join(format!("joule-demo-{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 4]>())));
            std::fs::create_dir_all(&dir).map_err(DemoError::TempDir)?;
            format!("backend = \"sqlite\"\npath = \"{}\"", quote(&dir.join("joule-demo.db").to_string_lossy()))
        }
    };
    Ok(format!(
        "\n[store]\n{backend}\n\n[admin]\n# SHA-256 of the admin token\ntoken_sha256 = \"{}\"\n",
        crate::secret::KeyHash::of(token).to_hex()
    ))
}

/// Starts the backends and returns validated settings for the demo gateway, with the
/// bundled energy trace replayed at `speed`× real time.
///
/// # Errors
/// See [`DemoError`].
pub fn prepare(listen: SocketAddr, admin: SocketAddr, store: &DemoStore, speed: f64) -> Result<Settings, DemoError> {
    let store_section = store_text(admin, store)?;
    let urls = start_backends()?;
    let text = config_text(listen, admin, &urls) + &store_section;
    let env = |name: &str| (name == PROVIDER_KEY_ENV).then(|| PROVIDER_KEY.to_string()).or_else(|| std::env::var(name).ok());
    let mut settings = config::parse(&text, Path::new("."), &env)?;
    settings.energy.replay = Some(ReplaySettings {
        sources: ENERGY_TRACE.to_vec(),
        speed: if speed.is_finite() && speed > 0.0 { speed } else { DEFAULT_SPEED },
        start: ReplayStart::Offset(86_400),
        repeat: true,
    });
    Ok(settings)
}
