//! `joule energy evaluate`: replays a price trace against a synthetic load and compares the
//! cost of price-aware routing with static sites, round robin and the oracle.

use std::path::PathBuf;

use clap::Subcommand;

use super::{load_config, print_json};
use crate::clock::parse_duration;
use crate::routing::evaluate;

/// `joule energy <command>`.
#[derive(Subcommand)]
pub enum EnergyCommand {
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

/// Runs an energy command and prints the comparison as a table or JSON.
///
/// # Errors
/// The config, the load description, a duration or a price file is invalid.
pub fn run(cmd: EnergyCommand) -> anyhow::Result<()> {
    let EnergyCommand::Evaluate { config, prices, model, load, feed_delay, step, json } = cmd;
    let settings = load_config(&config)?;
    let feed_delay = parse_duration(&feed_delay).ok_or_else(|| anyhow::anyhow!("--feed-delay `{feed_delay}` is not a duration like 0, 90s, 5m, 1h"))?;
    let step = parse_duration(&step).ok_or_else(|| anyhow::anyhow!("--step `{step}` is not a duration like 1m"))?;
    let setup = evaluate::Setup { model, load: load.parse()?, feed_delay, step };
    let result = evaluate::evaluate_files(&settings.catalog, &settings.energy, &prices, &setup)?;
    if json {
        print_json(&result)
    } else {
        print!("{}", result.table());
        Ok(())
    }
}
