//! The `joule` command: serve, demo, mock backends, key hashing, config checks, the energy
//! routing evaluation, and the management commands (`projects`, `keys`, `usage`) that work on
//! the configured store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use joule::config::{LogFormat, Settings};
use joule::store::{BudgetPeriod, ProjectChanges, Store, StoreError, UsageFilter};

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
    /// Manage projects in the configured store.
    Projects {
        #[arg(long, short, env = "JOULE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ProjectsCmd,
    },
    /// Manage API keys in the configured store.
    Keys {
        #[arg(long, short, env = "JOULE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Query usage records in the configured store.
    Usage {
        #[arg(long, short, env = "JOULE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: UsageCmd,
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

#[derive(clap::Args)]
struct ProjectArgs {
    /// Allowed models, comma-separated (default: all models).
    #[arg(long, value_delimiter = ',', conflicts_with = "all_models")]
    models: Option<Vec<String>>,
    /// Allow every model.
    #[arg(long)]
    all_models: bool,
    /// Default strategy, e.g. `price` or `latency@price`.
    #[arg(long)]
    strategy: Option<String>,
    /// Requests per minute (0: no limit).
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute (0: no limit).
    #[arg(long)]
    tpm: Option<u32>,
    /// Budget in USD per period (negative: no budget).
    #[arg(long, allow_hyphen_values = true)]
    budget: Option<f64>,
    /// Budget period: day or month.
    #[arg(long)]
    budget_period: Option<String>,
}

#[derive(Subcommand)]
enum ProjectsCmd {
    /// Create a project.
    Create {
        name: String,
        #[command(flatten)]
        args: ProjectArgs,
    },
    /// List projects.
    List,
    /// Show one project.
    Show { name: String },
    /// Change a project (only the given options change).
    Update {
        name: String,
        /// New name.
        #[arg(long)]
        rename: Option<String>,
        /// Remove the default strategy (use the config default).
        #[arg(long, conflicts_with = "strategy")]
        no_strategy: bool,
        #[command(flatten)]
        args: ProjectArgs,
    },
    /// Delete a project without active keys.
    Delete { name: String },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key; it is printed once and never stored.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        project: Option<String>,
        /// Requests per minute for this key.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute for this key.
        #[arg(long)]
        tpm: Option<u32>,
    },
    /// List keys (never the keys themselves).
    List {
        #[arg(long)]
        project: Option<String>,
    },
    /// Revoke a key by id or name.
    Revoke { key: String },
}

#[derive(clap::Args)]
struct UsageArgs {
    #[arg(long)]
    project: Option<String>,
    /// Key id.
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    status: Option<u16>,
    /// From (unix ms, inclusive).
    #[arg(long)]
    since: Option<i64>,
    /// Until (unix ms, exclusive).
    #[arg(long)]
    until: Option<i64>,
}

#[derive(Subcommand)]
enum UsageCmd {
    /// Usage records, newest first.
    List {
        #[command(flatten)]
        filter: UsageArgs,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after a previous page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
        /// CSV instead of JSON.
        #[arg(long)]
        csv: bool,
    },
    /// Request count, tokens and cost.
    Summary {
        #[command(flatten)]
        filter: UsageArgs,
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
        Command::Demo { listen, admin_listen, print_config, energy_speed, store_path, database_url, admin_token, plugins } => {
            let store = joule::demo::DemoStore { sqlite_path: store_path, database_url, admin_token };
            if print_config {
                let tmp = joule::demo::DemoStore { sqlite_path: Some("joule-demo.db".into()), ..store };
                print!("{}{}", joule::demo::config_text(listen, admin_listen, &[]), joule::demo::store_text(admin_listen, &tmp)?);
                return Ok(());
            }
            let mut settings = joule::demo::prepare(listen, admin_listen, &store, energy_speed)?;
            if let Some(dir) = plugins {
                anyhow::ensure!(dir.is_dir(), "--plugins {}: not a directory (run scripts/build-plugins)", dir.display());
                settings.plugins.dir = Some(dir);
            }
            init_logging(&settings);
            println!("joule demo");
            println!("  base URL:  http://{listen}/v1");
            println!("  API key:   {}", joule::demo::DEMO_KEY);
            println!("  metrics:   http://{admin_listen}/metrics   plugins: http://{admin_listen}/admin/plugins");
            match &settings.store.as_ref().map(|s| &s.location) {
                Some(joule::store::StoreLocation::Sqlite(p)) => println!("  store:     {}", p.display()),
                Some(joule::store::StoreLocation::Postgres(_)) => println!("  store:     PostgreSQL"),
                None => {}
            }
            println!(
                "  admin API: http://{admin_listen}/admin/projects (token: {})",
                if store.admin_token.is_some() { "as given" } else { joule::demo::DEMO_ADMIN_TOKEN }
            );
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
        Command::HashKey { key } => println!("{}", joule::secret::KeyHash::of(&key).to_hex()),
        Command::CheckConfig { config } => {
            joule::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}: ok", config.display());
        }
        Command::Energy { command: EnergyCommand::Evaluate { config, prices, model, load, feed_delay, step, json } } => {
            use joule::clock::parse_duration;
            use joule::routing::evaluate;
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
        Command::Projects { config, command } => {
            let (settings, store) = open_store(config)?;
            projects(&settings, &store, command)?;
        }
        Command::Keys { config, command } => {
            let (_, store) = open_store(config)?;
            keys(&store, command)?;
        }
        Command::Usage { config, command } => {
            let (_, store) = open_store(config)?;
            usage(&store, command)?;
        }
        Command::Plugin { command } => plugin_command(command)?,
        Command::Strategy { command: StrategyCommand::Replay { file, plugins } } => replay(&file, plugins)?,
    }
    Ok(())
}

/// Loads the config and opens its store. Provider credentials are not needed to manage the
/// store, so variables named by `*_env` fields that are unset get a placeholder here
/// (`store.url_env` must still be set for PostgreSQL: the placeholder is no connection string).
fn open_store(config: Option<PathBuf>) -> anyhow::Result<(Settings, Store)> {
    let config = config.context("--config (or JOULE_CONFIG) is required")?;
    let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
    let base = config.parent().unwrap_or_else(|| std::path::Path::new("."));
    let env = |name: &str| std::env::var(name).ok().or_else(|| Some("unset-for-cli".to_string()));
    let settings = joule::config::parse(&text, base, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let location = settings.store.as_ref().map(|s| s.location.clone()).context("the config has [store] backend = \"none\"")?;
    let store = Store::open(&location)?;
    Ok((settings, store))
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn changes(args: ProjectArgs, clear_strategy: bool) -> anyhow::Result<ProjectChanges> {
    let limit = |v: Option<u32>| v.map(|n| (n > 0).then_some(n));
    Ok(ProjectChanges {
        name: None,
        allowed_models: if args.all_models { Some(None) } else { args.models.map(Some) },
        default_strategy: if clear_strategy { Some(None) } else { args.strategy.map(Some) },
        rpm: limit(args.rpm),
        tpm: limit(args.tpm),
        budget_usd: args.budget.map(|b| (b >= 0.0).then_some(b)),
        budget_period: args.budget_period.as_deref().map(BudgetPeriod::parse).transpose()?,
    })
}

fn projects(settings: &Settings, store: &Store, cmd: ProjectsCmd) -> anyhow::Result<()> {
    let checked = |c: ProjectChanges| -> Result<ProjectChanges, StoreError> {
        c.validate()?;
        joule::access::check_models(&settings.catalog, &c)?;
        Ok(c)
    };
    match cmd {
        ProjectsCmd::Create { name, args } => {
            let c = checked(changes(args, false)?)?;
            print_json(&store.wait(store.create_project(&name, c))?)
        }
        ProjectsCmd::List => print_json(&store.wait(store.projects())?),
        ProjectsCmd::Show { name } => print_json(&store.wait(store.project(&name))?),
        ProjectsCmd::Update { name, rename, no_strategy, args } => {
            let c = checked(ProjectChanges { name: rename, ..changes(args, no_strategy)? })?;
            print_json(&store.wait(store.update_project(&name, c))?)
        }
        ProjectsCmd::Delete { name } => {
            store.wait(store.delete_project(&name))?;
            println!("deleted project {name}");
            Ok(())
        }
    }
}

fn keys(store: &Store, cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Create { name, project, rpm, tpm } => {
            let (key, secret) = store.wait(store.create_key(joule::store::NewKey { name, project, rpm, tpm }))?;
            print_json(&key)?;
            eprintln!("This key is shown once; only its hash is stored:");
            println!("{}", secret.expose());
            Ok(())
        }
        KeysCmd::List { project } => print_json(&store.wait(store.keys(project.as_deref()))?),
        KeysCmd::Revoke { key } => print_json(&store.wait(store.revoke_key(&key))?),
    }
}

fn usage_filter(store: &Store, a: UsageArgs, limit: u32, cursor: Option<String>) -> anyhow::Result<UsageFilter> {
    let project_id = match a.project {
        Some(p) => Some(store.wait(store.project(&p))?.id),
        None => None,
    };
    Ok(UsageFilter {
        project_id,
        key_id: a.key,
        model: a.model,
        status: a.status,
        since_ms: a.since,
        until_ms: a.until,
        after: cursor.as_deref().map(joule::store::Cursor::decode).transpose()?,
        limit,
    })
}

fn usage(store: &Store, cmd: UsageCmd) -> anyhow::Result<()> {
    match cmd {
        UsageCmd::List { filter, limit, cursor, csv } => {
            let page = store.wait(store.usage(usage_filter(store, filter, limit, cursor)?))?;
            if csv {
                print!("{}", String::from_utf8_lossy(&joule::admin::to_csv(&page.records)));
                if let Some(c) = page.next_cursor {
                    eprintln!("next page: --cursor {c}");
                }
                Ok(())
            } else {
                print_json(&page)
            }
        }
        UsageCmd::Summary { filter } => print_json(&store.wait(store.usage_summary(usage_filter(store, filter, 1, None)?))?),
    }
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
