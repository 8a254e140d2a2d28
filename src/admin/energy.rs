//! `POST /admin/energy/prices`: the energy price push ([`crate::pricing::feed::push`]). Not
//! behind the admin token but its own optional one (`[energy.push] token_env`): 401
//! `invalid_api_key` when one is configured and not presented; 404 when push is off; 413 over
//! [`MAX_BODY_BYTES`]; 400 when the document is unreadable; else 200 with what was accepted
//! and every rejected row with its kind.

use super::{Call, Reply};
use crate::api::error::ApiError;
use crate::api::bearer::{verify_bearer, AuthError};
use crate::secret::KeyHash;
use crate::pricing::feed::push::{self, MAX_BODY_BYTES};

/// Serves a push.
pub(super) async fn push(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    let (gw, head) = (c.gw, c.head);
    let pricing = &gw.pricing;
    let Some(settings) = pricing.push_settings() else {
        return Err(ApiError::NotFound { path: head.path.clone() });
    };
    if let Some(token) = &settings.token {
        if !verify_bearer(&KeyHash::of(token.expose()), head.authorization.as_deref()) {
            return Err(ApiError::InvalidApiKey(AuthError::Unknown));
        }
    }
    let timeout = gw.world.load().limits.client_body_timeout;
    let body = c.body(MAX_BODY_BYTES, timeout).await?;
    match push::ingest(pricing, &body) {
        Ok(report) => Ok(Reply::Json(200, serde_json::to_vec(&report).unwrap_or_default())),
        Err(e) => Err(ApiError::invalid(format!("Unreadable price document: {e}"), None)),
    }
}
