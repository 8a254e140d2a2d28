//! Which model a request names and how its deployments rank: [`resolve`] parses the model
//! name and its strategy tags against the catalog and the loaded plugins (cheap, no
//! strategy calls), [`rank`] runs the strategies — only for requests already authorized —
//! and logs the decision.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Gateway, World};
use crate::api::chat::ChatRequest;
use crate::api::error::ApiError;
use crate::catalog::Model;
use crate::pricing::PriceBook;
use crate::routing::tags::{self, StrategySet};
use crate::routing::wasm::explain::{DecisionInput, DecisionOutput, LoggedDecision};
use crate::routing::wasm::{self, PluginSet};
use crate::routing::{self, RouteDecision};

/// The model a request resolved to, with the strategies that will rank it and the plugin set
/// they were checked against (a swap meanwhile does not affect this request).
pub struct Target<'w> {
    pub index: usize,
    pub model: &'w Model,
    pub strategies: StrategySet,
    plugins: std::sync::Arc<PluginSet>,
}

/// Parses `model` into base id and tags, finds the model, and checks the tags against the
/// loaded plugins; without tags, `default` applies.
///
/// # Errors
/// 400 `invalid_strategy` for bad or unknown tags (the message lists the strategies), 400
/// `model_not_found` for an empty model name (`""`, `"@price"`), 404 `model_not_found` for an
/// unknown model.
pub fn resolve<'w>(gw: &Gateway, world: &'w World, default: &StrategySet, req: &ChatRequest) -> Result<Target<'w>, ApiError> {
    let invalid = |e: tags::TagError| match e {
        tags::TagError::EmptyModel => ApiError::InvalidRequest {
            message: "You must provide a model name (tags alone name no model). GET /v1/models lists the available models.".into(),
            param: Some("model"),
            code: Some("model_not_found"),
        },
        e => ApiError::InvalidRequest { message: e.to_string(), param: Some("model"), code: Some("invalid_strategy") },
    };
    let (base, strategies) = tags::parse_model(&req.model).map_err(invalid)?;
    let (index, model) = world
        .catalog
        .model_indexed(base)
        .ok_or_else(|| ApiError::ModelNotFound { model: base.chars().take(200).collect() })?;
    let plugins = gw.strategies.current();
    let strategies = match strategies {
        Some(s) => {
            plugins.check(&s).map_err(invalid)?;
            s
        }
        None => default.clone(),
    };
    Ok(Target { index, model, strategies, plugins })
}

/// Ranks the target's deployments with its strategies on the live candidates (prices from
/// `book`, the one the request is charged by), and logs the decision if a log is configured.
pub fn rank(gw: &Gateway, world: &World, book: &PriceBook, target: &Target<'_>) -> RouteDecision {
    let Target { index, model, strategies, plugins } = target;
    let cands = routing::candidates(&world.catalog, book, model, *index, &world.telemetry);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let seed: u64 = rand::random();
    let logged = gw.decision_log.as_ref().map(|log| (log, DecisionInput::capture(model, strategies, &cands, now_ms, seed, plugins)));
    let decision = wasm::rank(plugins, strategies, cands, now_ms, seed, Some(&gw.metrics.strategy));
    if let Some((log, input)) = logged {
        log.record(LoggedDecision { input, output: DecisionOutput::capture(&decision, Some(model)) });
    }
    decision
}
