//! Running things: `serve` (the gateway on a config), `demo` (the gateway on simulated
//! backends), `mock` (one simulated backend), and the config helpers `hash-key` and
//! `check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use super::{init_logging, load_config};
use crate::demo::{self, DemoStore};
use crate::store::StoreLocation;

/// `joule serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long, short)]
    config: PathBuf,
    /// Take over the listening sockets of the running joule (zero-downtime upgrade): start the
    /// new binary with this flag, then send the old process SIGQUIT within 5 s; it hands its
    /// sockets over through `server.upgrade_sock` and drains. See README "Zero-downtime upgrade".
    #[arg(long, short)]
    upgrade: bool,
}

/// `joule demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// API listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listener (/metrics, /healthz).
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// Print the generated config and exit.
    #[arg(long)]
    print_config: bool,
    /// Replay speed of the bundled energy prices (trace seconds per second).
    #[arg(long, default_value_t = demo::DEFAULT_SPEED)]
    energy_speed: f64,
    /// SQLite file for projects, keys and usage (default: a new temporary directory).
    #[arg(long, conflicts_with = "database_url")]
    store_path: Option<PathBuf>,
    /// PostgreSQL connection string instead of SQLite.
    #[arg(long, env = "JOULE_DEMO_DATABASE_URL")]
    database_url: Option<String>,
    /// Admin API token (default `joule-demo-admin`, allowed on loopback only).
    #[arg(long, env = "JOULE_DEMO_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Strategy plugins directory to load and watch (scripts/demo passes the built-ins,
    /// target/plugins/built-in). Without it the built-in strategies rank natively.
    #[arg(long)]
    plugins: Option<PathBuf>,
}

/// `joule mock`.
#[derive(clap::Args)]
pub struct MockArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 20)]
    ttft_ms: u64,
    #[arg(long, default_value_t = 200.0)]
    tokens_per_s: f64,
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// none | refuse | 500 | 429[:secs] | 529 | slow-headers:MS | drop:N | garbage:N | html |
    /// empty | truncate:N | silent-body | endless-event:N
    #[arg(long, default_value = "none")]
    failure: String,
    /// Require this key: `Authorization: Bearer <key>` (openai) or `x-api-key: <key>`
    /// (anthropic).
    #[arg(long)]
    require_bearer: Option<String>,
    /// The API to speak: openai (`POST /v1/chat/completions`) or anthropic
    /// (`POST /v1/messages`).
    #[arg(long, default_value = "openai")]
    api: crate::mock::MockApi,
    /// Answer with a call of the first tool whenever the request offers tools (OpenAI
    /// `tool_calls`, Anthropic `tool_use`), unless `tool_choice` is `none`.
    #[arg(long)]
    tool_use: bool,
}

impl MockArgs {
    /// The mock configuration these flags describe.
    ///
    /// # Errors
    /// The failure mode does not parse.
    pub fn config(self) -> anyhow::Result<crate::mock::MockConfig> {
        let MockArgs { listen: _, ttft_ms, tokens_per_s, tokens, failure, require_bearer, api, tool_use } = self;
        let failure = crate::mock::parse_failure(&failure).map_err(|e| anyhow::anyhow!(e))?;
        Ok(crate::mock::MockConfig { api, ttft_ms, tokens_per_s, tokens, failure, require_bearer, tool_use, ..Default::default() })
    }
}

/// `joule hash-key`.
#[derive(clap::Args)]
pub struct HashKeyArgs {
    key: String,
}

/// `joule check-config`.
#[derive(clap::Args)]
pub struct CheckConfigArgs {
    #[arg(long, short)]
    config: PathBuf,
}

/// Runs the gateway until it is told to stop.
///
/// # Errors
/// The config is invalid or the server cannot start.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = load_config(&args.config)?;
    init_logging(&settings);
    crate::server::run(settings, Some(args.config), args.upgrade)?;
    Ok(())
}

/// Runs the gateway on the demo catalog and simulated backends, or prints its config.
///
/// # Errors
/// The demo cannot be prepared (store, plugins directory) or the server cannot start.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs { listen, admin_listen, print_config, energy_speed, store_path, database_url, admin_token, plugins } = args;
    let store = DemoStore { sqlite_path: store_path, database_url, admin_token };
    if print_config {
        let tmp = DemoStore { sqlite_path: Some("joule-demo.db".into()), ..store };
        print!("{}{}", demo::config_text(listen, admin_listen, &[]), demo::store_text(admin_listen, &tmp)?);
        return Ok(());
    }
    let mut settings = demo::prepare(listen, admin_listen, &store, energy_speed)?;
    if let Some(dir) = plugins {
        anyhow::ensure!(dir.is_dir(), "--plugins {}: not a directory (run scripts/build-plugins)", dir.display());
        settings.plugins.dir = Some(dir);
    }
    init_logging(&settings);
    println!("joule demo");
    println!("  base URL:  http://{listen}/v1");
    println!("  API key:   {}", demo::DEMO_KEY);
    println!("  metrics:   http://{admin_listen}/metrics   plugins: http://{admin_listen}/admin/plugins");
    match &settings.store.as_ref().map(|s| &s.location) {
        Some(StoreLocation::Sqlite(p)) => println!("  store:     {}", p.display()),
        Some(StoreLocation::Postgres(_)) => println!("  store:     PostgreSQL"),
        None => {}
    }
    println!(
        "  admin API: http://{admin_listen}/admin/projects (token: {})",
        if store.admin_token.is_some() { "as given" } else { demo::DEMO_ADMIN_TOKEN }
    );
    let models: Vec<String> = settings.catalog.models.iter().map(|m| format!("{} ({})", m.id, m.category.as_str())).collect();
    println!("  models:    {}", models.join(", "));
    println!("  APIs:      /v1/chat/completions, /v1/responses, /v1/messages (Anthropic), /v1/models,");
    println!("             /v1/files + /v1/batches (batches wait for cheap energy; a 1h window passes in {:.0} s)", 3600.0 / energy_speed);
    println!("  energy:    July 2023 real-time prices (CAISO SP-15, ERCOT Houston, PJM Chicago Hub) replayed at {energy_speed}x");
    println!("  prices:    http://{listen}/v1/models/llama-3.1-8b-instruct/prices?window=4h");
    println!("  console:   http://{admin_listen}/console/ (sign in with the admin token, or an API key for its project's view)");
    crate::server::run(settings, None, false)?;
    Ok(())
}

/// Runs one mock backend until Ctrl-C, after printing `mock listening on <base URL>`.
///
/// # Errors
/// The failure mode does not parse or the listener cannot bind.
pub fn mock(args: MockArgs) -> anyhow::Result<()> {
    let listen = args.listen;
    let cfg = args.config()?;
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    rt.block_on(async move {
        let server = crate::mock::MockServer::bind(listen, cfg).await.context("binding mock")?;
        println!("mock listening on {}", server.base_url());
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::signal::ctrl_c().await.context("signal")?;
        anyhow::Ok(())
    })
}

/// Prints the hex SHA-256 of an API key.
///
/// # Errors
/// None; the signature matches the other commands.
pub fn hash_key(args: HashKeyArgs) -> anyhow::Result<()> {
    println!("{}", crate::secret::KeyHash::of(&args.key).to_hex());
    Ok(())
}

/// Validates a config file and prints `<file>: ok`.
///
/// # Errors
/// The config has problems (all of them listed).
pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    load_config(&args.config)?;
    println!("{}: ok", args.config.display());
    Ok(())
}
