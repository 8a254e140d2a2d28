//! The admin listener's surface: `GET /metrics` (Prometheus text), `GET /healthz` and, when
//! `[energy.push]` is configured, `POST /admin/energy/prices` (energy price push, see
//! `crate::pricing::feed::push`). Bind it to loopback or a private interface; only the push
//! API can require a token.

use bytes::Bytes;

use crate::api::error::ApiError;
use crate::proxy::{send_error, send_json, Downstream, DownstreamError, Gateway, Record, RequestHead, ResponseHead};

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
        (crate::pricing::feed::push::PATH, &http::Method::POST) => crate::pricing::feed::push::handle(gw, head, io, rec).await,
        _ => {
            io.close_after();
            send_error(io, rec, &ApiError::NotFound { path: head.path.chars().take(200).collect() }).await
        }
    }
}
