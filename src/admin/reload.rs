//! `POST /admin/reload`: re-read the config file now (as `SIGHUP` does). 200 with the report
//! (`applied`, `problems`, `restart_required`) when the new config is in force; 400
//! `invalid_config` with every problem when it is refused (the running config stays); 404
//! when the gateway runs without a config file (the demo).

use serde_json::json;

use super::Reply;
use crate::api::error::ApiError;
use crate::proxy::Gateway;

/// Runs a reload off the request workers and answers its report.
pub(super) async fn reload(gw: &Gateway) -> Result<Reply, ApiError> {
    let Some(reloader) = gw.reloader.get().cloned() else {
        return Err(ApiError::ResourceNotFound { message: "This gateway runs without a config file; there is nothing to reload.".into() });
    };
    let report = tokio::task::spawn_blocking(move || reloader.reload()).await.map_err(|_| ApiError::Internal)?;
    if report.applied {
        Ok(Reply::json(200, &json!(report)))
    } else {
        Err(ApiError::InvalidRequest {
            message: format!("The new config was refused; the running config stays in force: {}", report.problems.join("; ")),
            param: None,
            code: Some("invalid_config"),
        })
    }
}
