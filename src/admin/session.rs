//! `GET /admin/session`: who the credential is — the operator (admin token) or a key's
//! read-only project view — with the public API's base URL and the store kind, so the console
//! knows what to show.

use serde_json::{json, Value};

use super::{projects, store_error, Call, Reply, Viewer};
use crate::api::error::ApiError;
use crate::store::StoreError;

/// `GET /admin/session`.
pub(super) async fn session(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    c.query(&[])?;
    let store = c.gw.store.as_ref().map(|s| s.kind());
    let body = match &c.viewer {
        Viewer::Operator => json!({"role": "operator", "api_base": c.gw.api_base, "store": store}),
        Viewer::Key(p) => {
            let project = match (&p.project, &c.gw.store) {
                (Some(policy), Some(s)) => match s.project(&policy.name).await {
                    Ok(found) => projects::view(c.gw, &found),
                    // Deleted since the snapshot was taken: the key no longer has a project.
                    Err(StoreError::NotFound(_)) => Value::Null,
                    Err(e) => return Err(store_error(e)),
                },
                (Some(policy), None) => json!({"id": &*policy.id, "name": &*policy.name}),
                (None, _) => Value::Null,
            };
            json!({
                "role": "project",
                "api_base": c.gw.api_base,
                "store": store,
                "key": {"id": &*p.key_id, "name": &*p.key_name},
                "project": project,
            })
        }
    };
    Ok(Reply::json(200, &body))
}
