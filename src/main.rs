//! The `joule` command: serve, demo, mock backends, key hashing, config checks and the energy
//! routing evaluation.

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
        /// Replay speed of the bundled energy prices (trace seconds per second).
        #[arg(long, default_value_t = joule::demo::DEFAULT_SPEED)]
        energy_speed: f64,
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
    /// Energy prices: evaluate price-aware routing on a real price trace.
    Energy {
        #[command(subcommand)]
        command: EnergyCommand,
    },
}

#[derive(Subcommand)]
enum EnergyCommand {
    /// Replay a price trace against a synthetic load and compare the cost of static sites,
    /// round robin, joule's `price` routing (with the feed delay) and the oracle.
    Evaluate {
        /// A joule config: its data centers, GPU profiles and base prices.
        #[arg(long, short)]
        config: PathBuf,
        /// Price trace CSV files (the format of shared/data/energy/).
        #[arg(long, num_args = 1.., required = true)]
        prices: Vec<PathBuf>,
        /// Model to evaluate (default: the first hosted model with two or more priced sites).
        #[arg(long)]
        model: Option<String>,
        /// rate=REQ/S,shape=flat|diurnal,amplitude=A,peak=HOUR,mix=IN:OUT:W+...,capacity=REQ/S
        #[arg(long, default_value = "")]
        load: String,
        /// How long after an interval starts its price reaches joule (e.g. 0, 90s, 5m, 1h).
        #[arg(long, default_value = "5m")]
        feed_delay: String,
        /// Simulation step.
        #[arg(long, default_value = "1m")]
        step: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
        Command::Demo { listen, admin_listen, print_config, energy_speed } => {
            if print_config {
                print!("{}", joule::demo::config_text(listen, admin_listen, &[]));
                return Ok(());
            }
            let settings = joule::demo::prepare(listen, admin_listen, energy_speed)?;
            init_logging(&settings);
            println!("joule demo");
            println!("  base URL:  http://{listen}/v1");
            println!("  API key:   {}", joule::demo::DEMO_KEY);
            println!("  metrics:   http://{admin_listen}/metrics");
            println!("  models:    llama-3.1-8b-instruct (hosted), llama-3.2-1b-instruct (free), gpt-4o-mini (third-party)");
            println!("  energy:    July 2023 real-time prices (CAISO SP-15, ERCOT Houston, PJM Chicago Hub) replayed at {energy_speed}x");
            println!("  prices:    http://{listen}/v1/models/llama-3.1-8b-instruct/prices?window=4h");
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
        Command::Energy { command: EnergyCommand::Evaluate { config, prices, model, load, feed_delay, step, json } } => {
            use joule::pricing::{clock::parse_duration, evaluate};
            let settings = joule::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let feed_delay = parse_duration(&feed_delay).ok_or_else(|| anyhow::anyhow!("--feed-delay `{feed_delay}` is not a duration like 0, 90s, 5m, 1h"))?;
            let step = parse_duration(&step).ok_or_else(|| anyhow::anyhow!("--step `{step}` is not a duration like 1m"))?;
            let setup = evaluate::Setup { model, load: load.parse()?, feed_delay, step };
            let result = evaluate::evaluate_files(&settings.catalog, &settings.energy, &prices, &setup)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                print!("{}", result.table());
            }
        }
    }
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
