//! Strategy plugins: `GET /admin/plugins` lists the loaded plugins (tag, name, version, sha256,
//! loaded-at, calls, faults by kind, disabled), the files refused with the reason and the
//! available tags; `POST /admin/plugins` takes a component as the body, validates it, stores it
//! in the plugins directory and swaps it in (400 `invalid_plugin` with the reason if refused;
//! the old version stays); `POST /admin/plugins/{tag}/rollback` puts the previous version back
//! (400 `no_earlier_version` if there is none).

use serde_json::json;

use super::{Call, Reply};
use crate::api::error::ApiError;
use crate::proxy::Gateway;
use crate::routing::wasm::{PluginSummary, RegistryError};

/// Largest plugin upload. The strategy components built from `plugins/` (Rust,
/// `wasm32-unknown-unknown`, no WASI) weigh 13–16 KiB; this leaves room for far larger guests,
/// above the 16 MiB default of the chat body limit that uploads used to borrow, while bounding
/// what one upload holds in memory.
pub(super) const MAX_PLUGIN_BYTES: usize = 32 * 1024 * 1024;

/// `GET /admin/plugins`.
pub(super) fn list(gw: &Gateway) -> Reply {
    let r = &gw.strategies;
    let body = json!({
        "plugins": r.list(),
        "rejected": r.rejected(),
        "available": r.current().available(),
    });
    Reply::json(200, &body)
}

/// `POST /admin/plugins`: the body is the component.
pub(super) async fn upload(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    let timeout = c.gw.world.load().limits.client_body_timeout;
    let bytes = c.body(MAX_PLUGIN_BYTES, timeout).await?;
    // Compiling takes milliseconds of CPU: keep it off the async workers.
    let registry = c.gw.strategies.clone();
    summary(tokio::task::spawn_blocking(move || registry.upload(&bytes)).await)
}

/// `POST /admin/plugins/{tag}/rollback`.
pub(super) async fn rollback(gw: &Gateway, tag: &str) -> Result<Reply, ApiError> {
    let registry = gw.strategies.clone();
    let tag = tag.to_string();
    summary(tokio::task::spawn_blocking(move || registry.rollback(&tag)).await)
}

fn summary(result: Result<Result<PluginSummary, RegistryError>, tokio::task::JoinError>) -> Result<Reply, ApiError> {
    match result {
        Ok(Ok(summary)) => Ok(Reply::Json(200, serde_json::to_vec(&summary).unwrap_or_default())),
        Ok(Err(RegistryError::Io(m))) => {
            tracing::error!(error = %m, "cannot store a strategy plugin");
            Err(ApiError::Internal)
        }
        Ok(Err(e @ RegistryError::NoHistory(_))) => Err(ApiError::InvalidRequest { message: e.to_string(), param: None, code: Some("no_earlier_version") }),
        Ok(Err(e)) => Err(ApiError::InvalidRequest { message: e.to_string(), param: None, code: Some("invalid_plugin") }),
        Err(_) => Err(ApiError::Internal),
    }
}
