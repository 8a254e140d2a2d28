//! `GET /admin/deployments`: every deployment with its live telemetry (TTFT, latency, token
//! rate, error rate, in-flight, sample counts, the catalog's priors) and breaker state.

use serde_json::json;

use super::Reply;
use crate::catalog::Catalog;
use crate::proxy::Gateway;
use crate::telemetry::Telemetry;

/// The endpoint, on the current world.
pub(super) fn list(gw: &Gateway) -> Reply {
    let world = gw.world.load();
    Reply::Json(200, deployments_json(&world.catalog, &world.telemetry))
}

/// Every deployment with its live numbers and breaker state.
pub fn deployments_json(catalog: &Catalog, telemetry: &Telemetry) -> Vec<u8> {
    let mut out = Vec::new();
    for (mi, m) in catalog.models.iter().enumerate() {
        for (di, d) in m.deployments.iter().enumerate() {
            let Some(s) = telemetry.get(mi, di).map(|st| st.snapshot()) else { continue };
            out.push(json!({
                "id": d.id,
                "model": m.id,
                "data_center": catalog.data_center_of(d).map(|x| x.id.clone()),
                "provider": catalog.provider_of(d).map(|x| x.id.clone()),
                "breaker": s.breaker.as_str(),
                "open_for_ms": s.open_for.map(|t| t.as_millis() as u64),
                "ttft_ms": s.ttft_ms,
                "latency_ms": s.latency_ms,
                "tokens_per_s": s.tokens_per_s,
                "error_rate": s.error_rate,
                "in_flight": s.in_flight,
                "requests": s.requests,
                "failures": s.failures,
                "samples": {"ttft": s.ttft_samples, "tokens_per_s": s.tokens_per_s_samples},
                "prior": {"ttft_ms": d.prior.ttft_ms, "tokens_per_s": d.prior.tokens_per_s},
            }));
        }
    }
    json!({"object": "list", "data": out}).to_string().into_bytes()
}
