//! `joule energy evaluate`: replays a price trace against a synthetic load and compares the
//! cost of price-aware routing with static sites, round robin and the oracle.
//! `joule energy evaluate-batch`: the batch scheduler on a simulated clock against a price
//! trace, compared with running each batch at submission and with the hindsight oracle.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{load_config, print_json};
use crate::clock::parse_duration;
use crate::batch::evaluate as batch_eval;
use crate::batch::schedule::ScheduleSettings;
use crate::routing::evaluate;

/// What both evaluations replay.
#[derive(Args)]
pub struct TraceArgs {
    /// A joule config: its data centers, GPU profiles and base prices.
    #[arg(long, short)]
    config: PathBuf,
    /// Price trace CSV files (the format of shared/data/energy/; rows of market `DA` are
    /// day-ahead prices).
    #[arg(long, num_args = 1.., required = true)]
    prices: Vec<PathBuf>,
    /// Model to evaluate (default: the first hosted model with two or more priced sites).
    #[arg(long)]
    model: Option<String>,
}

/// `joule energy <command>`.
#[derive(Subcommand)]
pub enum EnergyCommand {
    /// Replay a price trace against a synthetic load and compare the cost of static sites,
    /// round robin, joule's `price` routing (with the feed delay) and the oracle.
    Evaluate {
        #[command(flatten)]
        trace: TraceArgs,
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
    /// Replay a price trace against a synthetic stream of batches and compare running each at
    /// submission, joule's batch scheduler (forecast from history; perfect day-ahead prices;
    /// perfect foresight) and the hindsight oracle.
    EvaluateBatch {
        #[command(flatten)]
        trace: TraceArgs,
        /// count=N,size=LO..HI,window=DUR,mix=IN:OUT:W+...,arrivals=poisson|even,capacity=REQ/S,start=DUR,seed=N
        #[arg(long, default_value = "")]
        batches: String,
        /// days=N,bucket=DUR,stat=median|mean,decay=DUR,blend=deviation|level
        #[arg(long, default_value = "")]
        forecast: String,
        /// The scheduler's slot (and the simulation's tick).
        #[arg(long, default_value = "5m")]
        slot: String,
        /// Safety margin before each deadline, as a share of the window (at least one slot).
        #[arg(long, default_value_t = 0.1)]
        margin: f64,
        /// How long after an interval starts its real-time price reaches joule.
        #[arg(long, default_value = "5m")]
        feed_delay: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an energy command and prints the comparison as a table or JSON.
///
/// # Errors
/// The config, the load description, a duration or a price file is invalid.
pub fn run(cmd: EnergyCommand) -> anyhow::Result<()> {
    match cmd {
        EnergyCommand::Evaluate { trace: TraceArgs { config, prices, model }, load, feed_delay, step, json } => {
            let settings = load_config(&config)?;
            let feed_delay = duration("--feed-delay", &feed_delay)?;
            let step = duration("--step", &step)?;
            let setup = evaluate::Setup { model, load: load.parse()?, feed_delay, step };
            let result = evaluate::evaluate_files(&settings.catalog, &settings.energy, &prices, &setup)?;
            show(&result, json, || result.table())
        }
        EnergyCommand::EvaluateBatch { trace: TraceArgs { config, prices, model }, batches, forecast, slot, margin, feed_delay, json } => {
            let settings = load_config(&config)?;
            let schedule = ScheduleSettings {
                slot_s: duration("--slot", &slot)?,
                margin_share: margin,
                forecast: forecast.parse()?,
                ..ScheduleSettings::default()
            };
            let setup = batch_eval::Setup { model, batches: batches.parse()?, schedule, feed_delay: duration("--feed-delay", &feed_delay)? };
            let result = batch_eval::evaluate_files(&settings.catalog, &settings.energy, &prices, &setup)?;
            show(&result, json, || result.table())
        }
    }
}

fn duration(flag: &str, v: &str) -> anyhow::Result<i64> {
    parse_duration(v).ok_or_else(|| anyhow::anyhow!("{flag} `{v}` is not a duration like 0, 90s, 5m, 1h"))
}

fn show<T: serde::Serialize>(result: &T, json: bool, table: impl FnOnce() -> String) -> anyhow::Result<()> {
    if json {
        print_json(result)
    } else {
        print!("{}", table());
        Ok(())
    }
}
