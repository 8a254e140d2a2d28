//! `GET /v1/models` and `GET /v1/models/{id}`: the OpenAI model object (`id`, `object`,
//! `created`, `owned_by`) extended with joule's category, deployments and current prices.

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::catalog::{Catalog, DeploymentKind, Model};

fn model_json(catalog: &Catalog, m: &Model) -> Value {
    let mut best: Option<(f64, Value)> = None;
    let deployments: Vec<Value> = m
        .deployments
        .iter()
        .map(|d| {
            let q = catalog.quote(m, d);
            let price = json!({"input": q.price.input, "output": q.price.output, "currency": "USD", "unit": "per_million_tokens"});
            let blended = q.price.input + q.price.output;
            if best.as_ref().is_none_or(|(b, _)| blended < *b) {
                best = Some((blended, price.clone()));
            }
            let (kind, dc, provider) = match &d.kind {
                DeploymentKind::Hosted { .. } => ("hosted", catalog.data_center_of(d).map(|x| x.id.clone()), None),
                DeploymentKind::Provider { .. } => ("provider", None, catalog.provider_of(d).map(|p| p.id.clone())),
            };
            json!({"id": d.id, "kind": kind, "data_center": dc, "provider": provider, "price": price})
        })
        .collect();
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "category": m.category.as_str(),
        "price": best.map(|(_, p)| p),
        "deployments": deployments,
    })
}

/// The model list document.
pub fn list(catalog: &Catalog) -> Vec<u8> {
    let data: Vec<Value> = catalog.models.iter().map(|m| model_json(catalog, m)).collect();
    json!({"object": "list", "data": data}).to_string().into_bytes()
}

/// One model, by public id (tags are not part of a model id).
///
/// # Errors
/// 404 `model_not_found`.
pub fn one(catalog: &Catalog, id: &str) -> Result<Vec<u8>, ApiError> {
    catalog
        .model(id)
        .map(|m| model_json(catalog, m).to_string().into_bytes())
        .ok_or_else(|| ApiError::ModelNotFound { model: id.chars().take(200).collect() })
}
