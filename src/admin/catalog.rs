//! The catalog with live prices, as the console shows it: `GET /admin/models` (the public
//! model list), `GET /admin/prices?window=…` (the price history of every model with a hosted
//! deployment, one document) and `GET /admin/data-centers` (each site's current energy price).
//! A key viewer sees only its project's models and the data centers that host them.

use serde_json::json;

use super::{Call, Reply};
use crate::api::error::ApiError;
use crate::catalog::DeploymentKind;
use crate::clock::format_rfc3339;
use crate::proxy::models;

/// `GET /admin/models`.
pub(super) fn models(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    c.query(&[])?;
    let world = c.gw.world.load();
    Ok(Reply::Json(200, models::list(&world.catalog, &c.gw.pricing.book(), &|m| c.viewer.may_use(m))))
}

/// `GET /admin/prices`.
pub(super) fn prices(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    c.query(&["window"])?;
    let world = c.gw.world.load();
    let body = models::all_prices(&world.catalog, &c.gw.pricing, c.head.query.as_deref(), &|m| c.viewer.may_use(m))?;
    Ok(Reply::Json(200, body))
}

/// `GET /admin/data-centers`.
pub(super) fn data_centers(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    c.query(&[])?;
    let world = c.gw.world.load();
    let catalog = &world.catalog;
    let book = c.gw.pricing.book();
    let mut data = Vec::new();
    for (i, dc) in catalog.data_centers.iter().enumerate() {
        let hosted: Vec<&str> = catalog
            .models
            .iter()
            .filter(|m| c.viewer.may_use(&m.id))
            .filter(|m| m.deployments.iter().any(|d| matches!(d.kind, DeploymentKind::Hosted { data_center, .. } if data_center == i)))
            .map(|m| m.id.as_str())
            .collect();
        if hosted.is_empty() && !matches!(c.viewer, super::Viewer::Operator) {
            continue;
        }
        let site = book.site(catalog, i);
        data.push(json!({
            "id": dc.id,
            "name": dc.name,
            "price_node": dc.price_node,
            "pue": dc.pue,
            "usd_per_mwh": site.map(|s| s.usd_per_mwh),
            "stale": site.is_none_or(|s| s.stale),
            "interval_start": site.and_then(|s| s.held).map(|h| format_rfc3339(h.interval_start)),
            "interval_minutes": site.and_then(|s| s.held).map(|h| h.interval_minutes),
            "models": hosted,
        }));
    }
    Ok(Reply::json(200, &json!({"object": "list", "data": data})))
}
