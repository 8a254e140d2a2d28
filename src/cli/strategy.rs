//! `joule strategy replay`: re-runs logged route decisions with the plugins at hand and
//! compares the rankings.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use crate::routing::wasm::{explain, FileOutcome, Host, HostConfig, PluginRegistry};

/// `joule strategy <command>`.
#[derive(Subcommand)]
pub enum StrategyCommand {
    /// Re-run logged decisions (JSON lines from `[plugins] decision_log`) and compare rankings;
    /// exit status 0 when every replay ranks the same, 1 otherwise.
    Replay {
        file: PathBuf,
        /// Plugins directory to load (default: none, built-in tags rank natively).
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
}

/// Runs a strategy command.
///
/// # Errors
/// See [`replay`].
pub fn run(cmd: StrategyCommand) -> anyhow::Result<()> {
    let StrategyCommand::Replay { file, plugins } = cmd;
    replay(&file, plugins)
}

/// Replays every decision in `file` with the plugins of `plugins` (files that do not load are
/// warned about on stderr) and prints both rankings of each.
///
/// # Errors
/// The engine cannot start, the file cannot be read or parsed, or a replay ranked differently.
pub fn replay(file: &Path, plugins: Option<PathBuf>) -> anyhow::Result<()> {
    let host = Host::new(HostConfig::default())?;
    let registry = PluginRegistry::new(host, plugins, None);
    for (name, outcome) in registry.scan().files {
        if let FileOutcome::Rejected { message } = outcome {
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
