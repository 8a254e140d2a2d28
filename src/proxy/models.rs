//! `GET /v1/models`, `GET /v1/models/{id}`: the OpenAI model object (`id`, `object`,
//! `created`, `owned_by`) extended with joule's category, the model's best current price and
//! every deployment's price from the price book. `GET /v1/models/{id}/prices?window=4h|24h|7d`:
//! the price history per data center (and provider route) and the model's best price; the
//! same for every hosted model at once ([`all_prices`], the console's charts).

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::catalog::{Catalog, DeploymentKind, Model, Quote};
use crate::clock::format_rfc3339;
use crate::pricing::history::{self, Window};
use crate::pricing::{PriceBook, Pricing};

/// $/Mtok to a nano-dollar, so documents carry no float noise.
fn r9(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

fn price_json(q: &Quote) -> Value {
    json!({
        "input": r9(q.price.input),
        "output": r9(q.price.output),
        "energy": {"input": r9(q.energy.input), "output": r9(q.energy.output)},
        "routing_fee": {"input": r9(q.fee.input), "output": r9(q.fee.output)},
        "currency": "USD",
        "unit": "per_million_tokens",
    })
}

fn model_json(catalog: &Catalog, book: &PriceBook, m: &Model) -> Value {
    let deployments: Vec<Value> = m
        .deployments
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let q = book.quote(catalog, m, i);
            let (kind, dc, provider) = match &d.kind {
                DeploymentKind::Hosted { .. } => ("hosted", catalog.data_center_of(d).map(|x| x.id.clone()), None),
                DeploymentKind::Provider { .. } => ("provider", None, catalog.provider_of(d).map(|p| p.id.clone())),
            };
            let mut v = json!({"id": d.id, "kind": kind, "data_center": dc, "provider": provider, "price": price_json(&q)});
            if let DeploymentKind::Hosted { data_center, .. } = &d.kind {
                if let Some(site) = book.site(catalog, *data_center) {
                    v["energy"] = json!({
                        "usd_per_mwh": site.usd_per_mwh,
                        "stale": site.stale,
                        "interval_start": site.held.map(|h| format_rfc3339(h.interval_start)),
                        "interval_minutes": site.held.map(|h| h.interval_minutes),
                        "last_usd_per_mwh": site.held.map(|h| h.usd_per_mwh),
                    });
                }
            }
            v
        })
        .collect();
    let best = book.best(catalog, m);
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "category": m.category.as_str(),
        "price": best.map(|(_, q)| price_json(&q)),
        "best_deployment": best.and_then(|(i, _)| m.deployments.get(i)).map(|d| d.id.clone()),
        "deployments": deployments,
    })
}

/// The model list document: the models `visible` admits (the key's project allow-list).
pub fn list(catalog: &Catalog, book: &PriceBook, visible: &dyn Fn(&str) -> bool) -> Vec<u8> {
    let data: Vec<Value> = catalog.models.iter().filter(|m| visible(&m.id)).map(|m| model_json(catalog, book, m)).collect();
    json!({"object": "list", "data": data}).to_string().into_bytes()
}

/// The model `id` if it exists and `visible` admits it; a model the key may not use is
/// answered exactly like an unknown one, so keys cannot probe other projects' catalogs.
fn find<'c>(catalog: &'c Catalog, id: &str, visible: &dyn Fn(&str) -> bool) -> Result<&'c Model, ApiError> {
    catalog.model(id).filter(|m| visible(&m.id)).ok_or_else(|| ApiError::ModelNotFound { model: id.chars().take(200).collect() })
}

/// One model, by public id (tags are not part of a model id).
///
/// # Errors
/// 404 `model_not_found` (also for a model `visible` refuses).
pub fn one(catalog: &Catalog, book: &PriceBook, id: &str, visible: &dyn Fn(&str) -> bool) -> Result<Vec<u8>, ApiError> {
    find(catalog, id, visible).map(|m| model_json(catalog, book, m).to_string().into_bytes())
}

/// The `window` parameter of a query string (default `24h`).
///
/// # Errors
/// 400 for a window other than `4h`, `24h`, `7d`.
pub fn window_of(query: Option<&str>) -> Result<Window, ApiError> {
    let requested = query.unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("window=")).unwrap_or("24h");
    Window::parse(requested).ok_or_else(|| {
        ApiError::invalid(format!("Invalid 'window': expected one of 4h, 24h, 7d, got '{}'.", requested.chars().take(20).collect::<String>()), Some("window"))
    })
}

/// The price history of a model over a window (default `24h`).
///
/// # Errors
/// 404 `model_not_found` (also for a model `visible` refuses); 400 for a window other than
/// `4h`, `24h`, `7d`.
pub fn prices(catalog: &Catalog, pricing: &Pricing, id: &str, query: Option<&str>, visible: &dyn Fn(&str) -> bool) -> Result<Vec<u8>, ApiError> {
    let m = find(catalog, id, visible)?;
    let window = window_of(query)?;
    Ok(prices_json(catalog, &pricing.history().frames(), m, window, pricing.clock().now()).to_string().into_bytes())
}

/// The price history of every model with a hosted deployment that `visible` admits, in one
/// document (`data`: one [`prices`] document per model) — what the console's charts poll.
///
/// # Errors
/// 400 for a window other than `4h`, `24h`, `7d`.
pub fn all_prices(catalog: &Catalog, pricing: &Pricing, query: Option<&str>, visible: &dyn Fn(&str) -> bool) -> Result<Vec<u8>, ApiError> {
    let window = window_of(query)?;
    let frames = pricing.history().frames();
    let now = pricing.clock().now();
    let data: Vec<Value> = catalog
        .models
        .iter()
        .filter(|m| visible(&m.id) && m.deployments.iter().any(|d| matches!(d.kind, DeploymentKind::Hosted { .. })))
        .map(|m| prices_json(catalog, &frames, m, window, now))
        .collect();
    Ok(json!({
        "object": "list",
        "window": window.label(),
        "step_seconds": window.step(),
        "now": format_rfc3339(now),
        "data": data,
    })
    .to_string()
    .into_bytes())
}

fn prices_json(catalog: &Catalog, frames: &[std::sync::Arc<history::Frame>], m: &Model, window: Window, now: i64) -> Value {
    let ids: Vec<&str> = m.deployments.iter().map(|d| d.id.as_str()).collect();
    let (series, best) = history::series(frames, &ids, window, now);
    let point = |p: &history::SeriesPoint| {
        let mwh = p.usd_per_mwh.map(|x| (x * 1e6).round() / 1e6);
        json!({"t": format_rfc3339(p.t), "input": r9(p.input), "output": r9(p.output), "usd_per_mwh": mwh, "stale": p.stale})
    };
    let mut data_centers = Vec::new();
    let mut providers = Vec::new();
    for (d, points) in m.deployments.iter().zip(&series) {
        let points: Vec<Value> = points.iter().map(point).collect();
        match (catalog.data_center_of(d), catalog.provider_of(d)) {
            (Some(dc), _) => data_centers.push(json!({"data_center": dc.id, "deployment": d.id, "points": points})),
            (None, Some(p)) => providers.push(json!({"provider": p.id, "deployment": d.id, "points": points})),
            (None, None) => {}
        }
    }
    let best: Vec<Value> = best
        .iter()
        .map(|b| json!({"t": format_rfc3339(b.t), "input": r9(b.input), "output": r9(b.output), "deployment": b.deployment}))
        .collect();
    json!({
        "object": "model.prices",
        "model": m.id,
        "window": window.label(),
        "step_seconds": window.step(),
        "now": format_rfc3339(now),
        "currency": "USD",
        "unit": "per_million_tokens",
        "data_centers": data_centers,
        "providers": providers,
        "best": best,
    })
}
