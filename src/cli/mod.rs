//! The `joule` command line: the clap definitions, the dispatch and the helpers the commands
//! share. One file per command group; `src/main.rs` only parses and calls [`run`].
//!
//! - [`serve`]: `serve`, `demo`, `mock`, `hash-key`, `check-config`.
//! - [`energy`]: `energy evaluate`.
//! - [`projects`], [`keys`], [`usage`]: management commands on the configured store.
//! - [`plugin`]: `plugin build | check`, with [`toolchain`] (guest builds) and
//!   [`plugin_check`] (the conformance checks).
//! - [`strategy`]: `strategy replay`.
//!
//! This is the top layer (wiring): it may use every other module, and no other module uses it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{LogFormat, Settings};
use crate::store::Store;

pub mod energy;
pub mod keys;
pub mod plugin;
pub mod plugin_check;
pub mod projects;
pub mod serve;
pub mod strategy;
pub mod toolchain;
pub mod usage;

/// The command line.
#[derive(Parser)]
#[command(name = "joule", version, about = "Energy-smart, OpenAI-compatible LLM gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Every top-level command.
// Doc comments on fields here and in the command files become `--help` text, so fields that
// had no help text have plain comments at most: the help output is part of the interface.
#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway with a TOML config.
    Serve(serve::ServeArgs),
    /// Run the gateway with simulated GPU backends and a demo catalog (offline).
    Demo(serve::DemoArgs),
    /// Run one simulated OpenAI- or Anthropic-compatible GPU backend (for tests and benchmarks).
    Mock(serve::MockArgs),
    /// Print the SHA-256 to put in `[[keys]] sha256` for an API key.
    HashKey(serve::HashKeyArgs),
    /// Validate a config file and list every problem.
    CheckConfig(serve::CheckConfigArgs),
    /// Energy prices: evaluate price-aware routing on a real price trace.
    Energy {
        #[command(subcommand)]
        command: energy::EnergyCommand,
    },
    /// Manage projects in the configured store.
    Projects {
        #[arg(long, short, env = "JOULE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: projects::ProjectsCmd,
    },
    /// Manage API keys in the configured store.
    Keys {
        #[arg(long, short, env = "JOULE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: keys::KeysCmd,
    },
    /// Query usage records in the configured store.
    Usage {
        #[arg(long, short, env = "JOULE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: usage::UsageCmd,
    },
    /// Build and check strategy plugins (Wasm components).
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Work with logged route decisions.
    Strategy {
        #[command(subcommand)]
        command: strategy::StrategyCommand,
    },
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command reports; `main` prints it as `error: …` and exits with status 1.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // One process-wide TLS provider, chosen explicitly so no dependency's feature set decides.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Demo(args) => serve::demo(args),
        Command::Mock(args) => serve::mock(args),
        Command::HashKey(args) => serve::hash_key(args),
        Command::CheckConfig(args) => serve::check_config(args),
        Command::Energy { command } => energy::run(command),
        Command::Projects { config, command } => projects::run(config, command),
        Command::Keys { config, command } => keys::run(config, command),
        Command::Usage { config, command } => usage::run(config, command),
        Command::Plugin { command } => plugin::run(command),
        Command::Strategy { command } => strategy::run(command),
    }
}

/// Loads and validates a config file (provider credentials and all).
///
/// # Errors
/// The file cannot be read or the config has problems (all of them listed).
pub fn load_config(path: &Path) -> anyhow::Result<Settings> {
    crate::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Sets up logging to stderr as the config says (`RUST_LOG` wins over `log_level`).
pub fn init_logging(s: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&s.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match s.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Loads the config and opens its store. Provider credentials are not needed to manage the
/// store, so variables named by `*_env` fields that are unset get a placeholder here
/// (`store.url_env` must still be set for PostgreSQL: the placeholder is no connection string).
///
/// # Errors
/// No config given, the config is invalid or has no store, or the store cannot be opened.
pub fn open_store(config: Option<PathBuf>) -> anyhow::Result<(Settings, Store)> {
    let config = config.context("--config (or JOULE_CONFIG) is required")?;
    let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
    let base = config.parent().unwrap_or_else(|| Path::new("."));
    let env = |name: &str| std::env::var(name).ok().or_else(|| Some("unset-for-cli".to_string()));
    let settings = crate::config::parse(&text, base, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let location = settings.store.as_ref().map(|s| s.location.clone()).context("the config has [store] backend = \"none\"")?;
    let store = Store::open(&location)?;
    Ok((settings, store))
}

/// Prints `v` as pretty JSON on stdout.
///
/// # Errors
/// `v` cannot be serialised.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
