//! Explainable, replayable decisions: the serialisable [`DecisionInput`] (everything a
//! decision depends on) and [`DecisionOutput`] (what it produced), the JSON explain payload for
//! `x-joule-explain: 1`, a background JSON-lines [`DecisionLog`], and [`replay`].

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::rank::rank;
use super::registry::PluginSet;
use crate::catalog::{Model, Quote, TokenPrice};
use crate::metrics::StrategyMetrics;
use crate::routing::tags::StrategySet;
use crate::routing::{Candidate, Engine, RouteDecision};

/// A candidate as logged: the deployment plus exactly the scalars strategies see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedCandidate {
    /// Index into the model's deployments.
    pub deployment: usize,
    /// The deployment's id (for people; replay uses the index).
    pub id: String,
    pub price_input: f64,
    pub price_output: f64,
    pub energy_price: Option<f64>,
    pub ttft_ms: f64,
    pub latency_ms: f64,
    pub tokens_per_s: f64,
    pub in_flight: u32,
    pub health: f64,
    pub data_center: Option<u32>,
}

/// A plugin version a decision used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedPlugin {
    pub tag: String,
    pub version: String,
    pub sha256: String,
}

/// Everything a decision depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionInput {
    pub model: String,
    /// Canonical (sorted, deduplicated) tags.
    pub tags: Vec<String>,
    pub now_ms: u64,
    pub seed: u64,
    pub candidates: Vec<LoggedCandidate>,
    /// The plugins loaded for the tags at decision time (built-in tags without one ran natively).
    pub plugins: Vec<LoggedPlugin>,
}

/// One strategy's scores in a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRun {
    pub tag: String,
    /// Plugin version, or `native`.
    pub version: String,
    /// Raw scores in candidate order (`null`: excluded).
    pub scores: Vec<Option<f64>>,
}

/// A ranked candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRank {
    pub deployment: usize,
    pub id: String,
    /// Combined score (0 best).
    pub score: f64,
}

/// What a decision produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionOutput {
    pub ranked: Vec<LoggedRank>,
    /// Deployment ids some strategy excluded.
    pub excluded: Vec<String>,
    pub runs: Vec<LoggedRun>,
    /// Why the native ranking answered instead of the plugins, if it did.
    pub fallback: Option<String>,
}

/// One line of a decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedDecision {
    pub input: DecisionInput,
    pub output: DecisionOutput,
}

fn dep_id(model: Option<&Model>, i: usize) -> String {
    model.and_then(|m| m.deployments.get(i)).map_or_else(|| format!("#{i}"), |d| d.id.clone())
}

impl DecisionInput {
    /// Captures a decision's inputs (`cands` as given to [`rank`]).
    pub fn capture(model: &Model, strategies: &StrategySet, cands: &[Candidate], now_ms: u64, seed: u64, set: &PluginSet) -> Self {
        DecisionInput {
            model: model.id.clone(),
            tags: strategies.tags().iter().map(|t| t.to_string()).collect(),
            now_ms,
            seed,
            candidates: cands
                .iter()
                .map(|c| LoggedCandidate {
                    deployment: c.deployment,
                    id: dep_id(Some(model), c.deployment),
                    price_input: c.quote.cost.input,
                    price_output: c.quote.cost.output,
                    energy_price: c.energy_price,
                    ttft_ms: c.ttft_ms,
                    latency_ms: c.latency_ms,
                    tokens_per_s: c.tokens_per_s,
                    in_flight: c.in_flight,
                    health: c.health,
                    data_center: c.data_center,
                })
                .collect(),
            plugins: strategies
                .tags()
                .iter()
                .filter_map(|t| set.get(t))
                .map(|p| LoggedPlugin { tag: p.info.tag.to_string(), version: p.info.version.to_string(), sha256: p.sha256.to_string() })
                .collect(),
        }
    }

    /// The candidates as the strategies saw them. The client price is not logged (strategies
    /// never see it); it is set to the cost here.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.candidates
            .iter()
            .map(|c| {
                let p = TokenPrice { input: c.price_input, output: c.price_output };
                Candidate {
                    deployment: c.deployment,
                    quote: Quote { price: p, cost: p, ..Quote::default() },
                    ttft_ms: c.ttft_ms,
                    tokens_per_s: c.tokens_per_s,
                    latency_ms: c.latency_ms,
                    in_flight: c.in_flight,
                    health: c.health,
                    error_rate: (1.0 - c.health).clamp(0.0, 1.0),
                    breaker: crate::telemetry::BreakerState::Closed,
                    energy_price: c.energy_price,
                    data_center: c.data_center,
                }
            })
            .collect()
    }

    /// The strategy set.
    ///
    /// # Errors
    /// A malformed or empty tag list.
    pub fn strategies(&self) -> Result<StrategySet, crate::routing::tags::TagError> {
        StrategySet::parse_list(&self.tags.join("@"))
    }
}

impl DecisionOutput {
    /// Captures a decision's result; `model` names the deployments (ids `#i` without it).
    pub fn capture(d: &RouteDecision, model: Option<&Model>) -> Self {
        DecisionOutput {
            ranked: d.ranked.iter().map(|(c, s)| LoggedRank { deployment: c.deployment, id: dep_id(model, c.deployment), score: *s }).collect(),
            excluded: d.excluded.iter().map(|c| dep_id(model, c.deployment)).collect(),
            runs: d
                .runs
                .iter()
                .map(|r| LoggedRun {
                    tag: r.tag.to_string(),
                    version: match &r.engine {
                        Engine::Wasm { version, .. } => version.to_string(),
                        Engine::Native => "native".into(),
                    },
                    scores: r.scores.clone(),
                })
                .collect(),
            fallback: d.fallback.as_ref().map(ToString::to_string),
        }
    }
}

#[derive(Serialize)]
struct ExplainRank<'a> {
    deployment: &'a str,
    score: f64,
    /// Raw score per strategy tag.
    scores: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Explain<'a> {
    strategy: String,
    ranked: Vec<ExplainRank<'a>>,
    excluded: Vec<&'a str>,
    fallback: Option<String>,
}

/// The explain payload for `x-joule-explain: 1`: one line of JSON (safe as a header value:
/// deployment ids and tags are ASCII) with the ranked candidates, their combined and
/// per-strategy raw scores, the excluded deployments and any fallback:
///
/// `{"strategy":"latency@1.0.0+price@1.0.0","ranked":[{"deployment":"a","score":0.0,"scores":{"latency":120.0,"price":1.2}}],"excluded":[],"fallback":null}`
pub fn explain_json(d: &RouteDecision, model: &Model) -> String {
    let id = |i: usize| model.deployments.get(i).map_or("?", |d| d.id.as_str());
    let score_of = |i: usize| {
        d.runs
            .iter()
            .map(|r| {
                let v = r.scores.get(i).copied().flatten().map_or(serde_json::Value::Null, serde_json::Value::from);
                (r.tag.to_string(), v)
            })
            .collect()
    };
    // Runs hold scores in candidate order, and candidates are built in catalog order, so a
    // candidate's position is its rank among the deployment indices.
    let mut order: Vec<usize> = d.ranked.iter().map(|(c, _)| c).chain(&d.excluded).map(|c| c.deployment).collect();
    order.sort_unstable();
    let pos = |dep: usize| order.binary_search(&dep).unwrap_or(0);
    let e = Explain {
        strategy: d.strategy_header(),
        ranked: d.ranked.iter().map(|(c, s)| ExplainRank { deployment: id(c.deployment), score: *s, scores: score_of(pos(c.deployment)) }).collect(),
        excluded: d.excluded.iter().map(|c| id(c.deployment)).collect(),
        fallback: d.fallback.as_ref().map(ToString::to_string),
    };
    serde_json::to_string(&e).unwrap_or_else(|_| "{}".into())
}

/// Lines buffered before the log drops decisions (and counts them) rather than block a request.
const LOG_QUEUE: usize = 4096;

/// Appends decisions as JSON lines to a file from a background thread; the request path only
/// does a non-blocking channel send.
#[derive(Clone)]
pub struct DecisionLog {
    tx: SyncSender<LoggedDecision>,
    metrics: Option<StrategyMetrics>,
}

impl DecisionLog {
    /// Opens (appends to) `path` and starts the writer thread, which ends when every handle
    /// is dropped.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path, metrics: Option<StrategyMetrics>) -> std::io::Result<DecisionLog> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::sync_channel::<LoggedDecision>(LOG_QUEUE);
        let shown = path.display().to_string();
        std::thread::Builder::new().name("joule-decision-log".into()).spawn(move || {
            let mut out = std::io::BufWriter::new(file);
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let mut ok = true;
                for d in batch {
                    ok &= serde_json::to_writer(&mut out, &d).is_ok() && out.write_all(b"\n").is_ok();
                }
                if !(ok && out.flush().is_ok()) {
                    tracing::warn!(path = %shown, "cannot write the decision log");
                }
            }
        })?;
        Ok(DecisionLog { tx, metrics })
    }

    /// Queues one decision; drops it (counted) when the writer is behind.
    pub fn record(&self, d: LoggedDecision) {
        match self.tx.try_send(d) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                if let Some(m) = &self.metrics {
                    m.decision_log_dropped.inc();
                }
            }
        }
    }
}

/// One replayed decision.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub logged: LoggedDecision,
    pub replayed: DecisionOutput,
    /// Plugins whose loaded version differs from the logged one: (tag, logged, now).
    pub version_mismatches: Vec<(String, String, String)>,
}

impl Replayed {
    /// True when the replay ranked the same deployments in the same order with the same
    /// exclusions and the same fallback.
    pub fn same_ranking(&self) -> bool {
        let order = |o: &DecisionOutput| o.ranked.iter().map(|r| r.deployment).collect::<Vec<_>>();
        order(&self.logged.output) == order(&self.replayed)
            && self.logged.output.excluded == self.replayed.excluded
            && self.logged.output.fallback == self.replayed.fallback
    }
}

/// Why a log could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {0}")]
    Io(String),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
}

/// Re-runs every decision of a JSON-lines log against `set` (load the logged plugin versions
/// into it first).
///
/// # Errors
/// Unreadable file or a line that is not a logged decision.
pub fn replay(reader: impl BufRead, set: &Arc<PluginSet>) -> Result<Vec<Replayed>, ReplayError> {
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| ReplayError::Io(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let logged: LoggedDecision = serde_json::from_str(&line).map_err(|e| ReplayError::Line { line: i + 1, message: e.to_string() })?;
        let strategies = logged.input.strategies().map_err(|e| ReplayError::Line { line: i + 1, message: e.to_string() })?;
        let cands = logged.input.candidates();
        let d = rank(set, &strategies, cands, logged.input.now_ms, logged.input.seed, None);
        let mut replayed = DecisionOutput::capture(&d, None);
        // Ids are for people; the log's own names are kept.
        let names: std::collections::HashMap<usize, &str> = logged.input.candidates.iter().map(|c| (c.deployment, c.id.as_str())).collect();
        let name = |i: usize, fallback: &str| names.get(&i).map_or_else(|| fallback.to_string(), |s| s.to_string());
        for r in &mut replayed.ranked {
            r.id = name(r.deployment, &r.id);
        }
        replayed.excluded = d.excluded.iter().map(|c| name(c.deployment, "?")).collect();
        let version_mismatches = logged
            .input
            .plugins
            .iter()
            .filter_map(|lp| {
                let now = set.get(&lp.tag).map_or_else(|| "native".to_string(), |p| format!("{} ({})", p.info.version, &p.sha256[..12]));
                let same = set.get(&lp.tag).is_some_and(|p| *p.sha256 == lp.sha256);
                (!same).then(|| (lp.tag.clone(), format!("{} ({})", lp.version, lp.sha256.get(..12).unwrap_or(&lp.sha256)), now))
            })
            .collect();
        out.push(Replayed { logged, replayed, version_mismatches });
    }
    Ok(out)
}
