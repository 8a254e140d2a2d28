//! The admin listener's surface: `GET /metrics` (Prometheus text), `GET /healthz`, and the
//! strategy plugins API:
//!
//! - `GET /admin/plugins`: loaded plugins (tag, name, version, sha256, loaded-at, calls,
//!   faults by kind, disabled), files refused with the reason, and the available tags;
//! - `POST /admin/plugins` with a component as the body: validate, store in the plugins
//!   directory, swap in (400 with the reason if refused; the old version stays);
//! - `POST /admin/plugins/{tag}/rollback`: put the previous version back.
//!
//! Bind it to loopback or a private interface; it carries no authentication yet.

use bytes::Bytes;

use crate::api::error::ApiError;
use crate::proxy::{send_error, send_json, Downstream, DownstreamError, Gateway, Record, RequestHead, ResponseHead};
use crate::routing::wasm::RegistryError;

/// Serves one admin request.
///
/// # Errors
/// Only downstream I/O failures.
pub async fn handle(gw: &Gateway, head: &RequestHead, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    match (head.path.as_str(), &head.method) {
        ("/metrics", &http::Method::GET) => {
            let body = gw.metrics.render();
            rec.status = 200;
            let headers = vec![("content-type", "text/plain; version=0.0.4".to_string())];
            io.send_head(ResponseHead { status: 200, headers, content_length: Some(body.len()) }).await?;
            io.send_body(Bytes::from(body), true).await
        }
        ("/healthz", &http::Method::GET) => send_json(io, rec, br#"{"status":"ok"}"#.to_vec()).await,
        ("/admin/plugins", &http::Method::GET) => {
            let r = &gw.strategies;
            let body = serde_json::json!({
                "plugins": r.list(),
                "rejected": r.rejected(),
                "available": r.current().available(),
            });
            send_json(io, rec, body.to_string().into_bytes()).await
        }
        ("/admin/plugins", &http::Method::POST) => {
            let world = gw.world.load();
            let bytes = match crate::proxy::chat::read_body(io, head, &world).await {
                Ok(b) => b,
                Err(e) => {
                    io.close_after();
                    return send_error(io, rec, &e).await;
                }
            };
            // Compiling takes milliseconds of CPU: keep it off the async workers.
            let registry = gw.strategies.clone();
            let result = tokio::task::spawn_blocking(move || registry.upload(&bytes)).await;
            plugin_result(io, rec, result).await
        }
        (path, &http::Method::POST) if path.starts_with("/admin/plugins/") && path.ends_with("/rollback") => {
            let tag = path["/admin/plugins/".len()..path.len() - "/rollback".len()].to_string();
            let registry = gw.strategies.clone();
            let result = tokio::task::spawn_blocking(move || registry.rollback(&tag)).await;
            plugin_result(io, rec, result).await
        }
        _ => {
            io.close_after();
            send_error(io, rec, &ApiError::NotFound { path: head.path.chars().take(200).collect() }).await
        }
    }
}

async fn plugin_result(
    io: &mut dyn Downstream,
    rec: &mut Record,
    result: Result<Result<crate::routing::wasm::PluginSummary, RegistryError>, tokio::task::JoinError>,
) -> Result<(), DownstreamError> {
    let err = match result {
        Ok(Ok(summary)) => return send_json(io, rec, serde_json::to_vec(&summary).unwrap_or_default()).await,
        Ok(Err(RegistryError::Io(m))) => {
            tracing::error!(error = %m, "cannot store a strategy plugin");
            ApiError::Internal
        }
        Ok(Err(e @ RegistryError::NoHistory(_))) => ApiError::InvalidRequest { message: e.to_string(), param: None, code: Some("no_earlier_version") },
        Ok(Err(e)) => ApiError::InvalidRequest { message: e.to_string(), param: None, code: Some("invalid_plugin") },
        Err(_) => ApiError::Internal,
    };
    send_error(io, rec, &err).await
}
