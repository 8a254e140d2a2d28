//! The `joule` command: serve, demo, mock backends, key hashing and config checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use joule::config::{LogFormat, Settings};

#[derive(Parser)]
#[command(name = "joule", version, about = "Energy-smart, OpenAI-compatible LLM gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a TOML config.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the gateway with simulated GPU backends and a demo catalog (offline).
    Demo {
        /// API listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener (/metrics, /healthz).
        #[arg(long, default_value = "127.0.0.1:8081")]
        admin_listen: SocketAddr,
        /// Print the generated config and exit.
        #[arg(long)]
        print_config: bool,
        /// Strategy plugins directory to load and watch (scripts/demo passes the built-ins,
        /// target/plugins/built-in). Without it the built-in strategies rank natively.
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
    /// Run one simulated OpenAI-compatible GPU backend (for tests and benchmarks).
    Mock {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 20)]
        ttft_ms: u64,
        #[arg(long, default_value_t = 200.0)]
        tokens_per_s: f64,
        #[arg(long, default_value_t = 16)]
        tokens: u32,
        /// none | refuse | 500 | 429[:secs] | slow-headers:MS | drop:N | garbage:N
        #[arg(long, default_value = "none")]
        failure: String,
        /// Require `Authorization: Bearer <this>`.
        #[arg(long)]
        require_bearer: Option<String>,
    },
    /// Print the SHA-256 to put in `[[keys]] sha256` for an API key.
    HashKey { key: String },
    /// Validate a config file and list every problem.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Build and check strategy plugins (Wasm components).
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Work with logged route decisions.
    Strategy {
        #[command(subcommand)]
        command: StrategyCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Build strategy crates (a crate or a workspace directory) into components
    /// (wasm32-unknown-unknown + componentise); writes OUT/<package>.wasm.
    Build {
        /// Crate or workspace directory.
        dir: PathBuf,
        /// Output directory.
        #[arg(long, short)]
        out: PathBuf,
        /// Packages to build (default: the crate at DIR, or every cdylib of a workspace).
        #[arg(long = "package", short = 'p')]
        packages: Vec<String>,
        /// Require an up-to-date Cargo.lock.
        #[arg(long)]
        locked: bool,
    },
    /// Validate a component against the strategy world and run the conformance checks;
    /// exit status 0 when every check passes, 1 otherwise.
    Check {
        file: PathBuf,
        /// Fuel budget per call.
        #[arg(long, default_value_t = joule::routing::wasm::CheckOptions::default().fuel)]
        fuel: u64,
    },
}

#[derive(Subcommand)]
enum StrategyCommand {
    /// Re-run logged decisions (JSON lines from `[plugins] decision_log`) and compare rankings;
    /// exit status 0 when every replay ranks the same, 1 otherwise.
    Replay {
        file: PathBuf,
        /// Plugins directory to load (default: none, built-in tags rank natively).
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
}

fn init_logging(s: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&s.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match s.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // One process-wide TLS provider, chosen explicitly so no dependency's feature set decides.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve { config } => {
            let settings = joule::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            init_logging(&settings);
            joule::server::run(settings)?;
        }
        Command::Demo { listen, admin_listen, print_config, plugins } => {
            if print_config {
                print!("{}", joule::demo::config_text(listen, admin_listen, &[]));
                return Ok(());
            }
            let mut settings = joule::demo::prepare(listen, admin_listen)?;
            if let Some(dir) = plugins {
                anyhow::ensure!(dir.is_dir(), "--plugins {}: not a directory (run scripts/build-plugins)", dir.display());
                settings.plugins.dir = Some(dir);
            }
            init_logging(&settings);
            println!("joule demo");
            println!("  base URL:  http://{listen}/v1");
            println!("  API key:   {}", joule::demo::DEMO_KEY);
            println!("  metrics:   http://{admin_listen}/metrics   plugins: http://{admin_listen}/admin/plugins");
            println!("  models:    llama-3.1-8b-instruct (hosted), llama-3.2-1b-instruct (free), gpt-4o-mini (third-party)");
            joule::server::run(settings)?;
        }
        Command::Mock { listen, ttft_ms, tokens_per_s, tokens, failure, require_bearer } => {
            let failure = joule::mock::parse_failure(&failure).map_err(|e| anyhow::anyhow!(e))?;
            let cfg = joule::mock::MockConfig { ttft_ms, tokens_per_s, tokens, failure, require_bearer, ..Default::default() };
            let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
            rt.block_on(async move {
                let server = joule::mock::MockServer::bind(listen, cfg).await.context("binding mock")?;
                println!("mock listening on {}", server.base_url());
                use std::io::Write;
                let _ = std::io::stdout().flush();
                tokio::signal::ctrl_c().await.context("signal")?;
                anyhow::Ok(())
            })?;
        }
        Command::HashKey { key } => println!("{}", joule::auth::KeyHash::of(&key).to_hex()),
        Command::CheckConfig { config } => {
            joule::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}: ok", config.display());
        }
        Command::Plugin { command } => plugin_command(command)?,
        Command::Strategy { command: StrategyCommand::Replay { file, plugins } } => replay(&file, plugins)?,
    }
    Ok(())
}

fn plugin_command(command: PluginCommand) -> anyhow::Result<()> {
    use joule::routing::wasm::{check, toolchain, CheckOptions};
    match command {
        PluginCommand::Build { dir, out, packages, locked } => {
            let req = toolchain::BuildRequest { manifest_dir: dir, packages, out_dir: out, locked, quiet: false };
            for b in toolchain::build(&req)? {
                println!("{}: {}", b.package, b.path.display());
            }
        }
        PluginCommand::Check { file, fuel } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let report = check(&bytes, &CheckOptions { fuel, ..CheckOptions::default() });
            println!("{}", file.display());
            print!("{}", report.render());
            if !report.passed() {
                anyhow::bail!("{} failed the plugin checks", file.display());
            }
        }
    }
    Ok(())
}

fn replay(file: &std::path::Path, plugins: Option<PathBuf>) -> anyhow::Result<()> {
    use joule::routing::wasm::{explain, Host, HostConfig, PluginRegistry};
    let host = Host::new(HostConfig::default())?;
    let registry = PluginRegistry::new(host, plugins, None);
    for (name, outcome) in registry.scan().files {
        if let joule::routing::wasm::FileOutcome::Rejected { message } = outcome {
            eprintln!("warning: {name} not loaded: {message}");
        }
    }
    let reader = std::io::BufReader::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?);
    let results = explain::replay(reader, &registry.current())?;
    let ranking = |o: &explain::DecisionOutput| {
        o.ranked.iter().map(|r| format!("{} ({:.4})", r.id, r.score)).collect::<Vec<_>>().join(", ")
    };
    let mut differ = 0;
    for (i, r) in results.iter().enumerate() {
        let input = &r.logged.input;
        println!("decision {}: {}@{} now_ms={} seed={}", i + 1, input.model, input.tags.join("@"), input.now_ms, input.seed);
        println!("  logged:   {}", ranking(&r.logged.output));
        println!("  replayed: {}", ranking(&r.replayed));
        if let Some(f) = &r.replayed.fallback {
            println!("  fallback: {f}");
        }
        for (tag, logged, now) in &r.version_mismatches {
            println!("  note: {tag} was {logged} when logged, {now} now");
        }
        if r.same_ranking() {
            println!("  same ranking");
        } else {
            differ += 1;
            println!("  DIFFERENT ranking");
        }
    }
    if differ > 0 {
        anyhow::bail!("{differ} of {} decision(s) ranked differently on replay", results.len());
    }
    println!("{} decision(s) replayed, all rankings identical", results.len());
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
