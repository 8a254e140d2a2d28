//! The admin listener's surface: `GET /metrics` (Prometheus text), `GET /healthz`,
//! `GET /admin/deployments` (live telemetry and breaker state of every deployment) and, when
//! `[energy.push]` is configured, `POST /admin/energy/prices` (energy price push, see
//! `crate::pricing::feed::push`). Bind it to loopback or a private interface; only the push
//! API can require a token.

use bytes::Bytes;
use serde_json::json;

use crate::catalog::Catalog;
use crate::telemetry::Telemetry;

use crate::api::error::ApiError;
use crate::proxy::{send_error, send_json, Downstream, DownstreamError, Gateway, Record, RequestHead, ResponseHead};

/// Serves one admin request.
///
/// # Errors
/// Only downstream I/O failures.
pub async fn handle(gw: &Gateway, head: &RequestHead, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    match (head.path.as_str(), &head.method) {
        ("/metrics", &http::Method::GET) => {
            let world = gw.world.load();
            gw.metrics.export_deployments(&world.catalog, &world.telemetry);
            let body = gw.metrics.render();
            rec.status = 200;
            let headers = vec![("content-type", "text/plain; version=0.0.4".to_string())];
            io.send_head(ResponseHead { status: 200, headers, content_length: Some(body.len()) }).await?;
            io.send_body(Bytes::from(body), true).await
        }
        ("/healthz", &http::Method::GET) => send_json(io, rec, br#"{"status":"ok"}"#.to_vec()).await,
        ("/admin/deployments", &http::Method::GET) => {
            let world = gw.world.load();
            send_json(io, rec, deployments_json(&world.catalog, &world.telemetry)).await
        }
        (crate::pricing::feed::push::PATH, &http::Method::POST) => crate::pricing::feed::push::handle(gw, head, io, rec).await,
        _ => {
            io.close_after();
            send_error(io, rec, &ApiError::NotFound { path: head.path.chars().take(200).collect() }).await
        }
    }
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
