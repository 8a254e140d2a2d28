//! The admin push API: `POST /admin/energy/prices` on the admin listener, a JSON document of
//! rows (array or `{"rows": [...]}`) or the CSV format, applied like any feed. Answers 200 with
//! what was accepted and every rejected row with its kind; 400 when the document itself is
//! unreadable; 401 when a push token is configured and not presented; 404 when push is off.
//! Pingora-free: it talks to a [`Downstream`]. Parsing and applying rows is `pricing::feed`'s.

use sha2::{Digest, Sha256};

use crate::pricing::feed::parse_any;
use crate::api::error::ApiError;
use crate::proxy::{send_error, send_json, Downstream, DownstreamError, Gateway, Record, RequestHead};
use crate::pricing::Feed;

/// The push endpoint's path.
pub const PATH: &str = "/admin/energy/prices";
/// Largest accepted push body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

fn token_ok(expected: &str, authorization: Option<&[u8]>) -> bool {
    let presented = authorization.and_then(|h| h.strip_prefix(b"Bearer ")).unwrap_or(b"");
    // Equal-length digests compared in full: no early exit on the first differing byte.
    let (a, b) = (Sha256::digest(expected.as_bytes()), Sha256::digest(presented));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves a push.
///
/// # Errors
/// Only downstream I/O failures.
pub async fn handle(gw: &Gateway, head: &RequestHead, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    let pricing = &gw.pricing;
    let Some(push) = pricing.push_settings() else {
        io.close_after();
        return send_error(io, rec, &ApiError::NotFound { path: head.path.clone() }).await;
    };
    if let Some(token) = &push.token {
        if !token_ok(token.expose(), head.authorization.as_deref()) {
            io.close_after();
            let e = ApiError::InvalidApiKey(crate::api::bearer::AuthError::Unknown);
            return send_error(io, rec, &e).await;
        }
    }
    if head.content_length.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        io.close_after();
        return send_error(io, rec, &ApiError::BodyTooLarge { limit: MAX_BODY_BYTES }).await;
    }
    let mut body = Vec::new();
    loop {
        match io.read_body().await? {
            None => break,
            Some(chunk) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    io.close_after();
                    return send_error(io, rec, &ApiError::BodyTooLarge { limit: MAX_BODY_BYTES }).await;
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
    let rows = match parse_any(&body) {
        Ok(rows) => rows,
        Err(e) => {
            pricing.count_feed_error(Feed::Push, "malformed");
            tracing::warn!(error = %e, "energy push: unreadable document");
            return send_error(io, rec, &ApiError::invalid(format!("Unreadable price document: {e}"), None)).await;
        }
    };
    let report = pricing.ingest(Feed::Push, rows);
    let body = serde_json::to_vec(&report).unwrap_or_default();
    send_json(io, rec, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_check() {
        assert!(token_ok("s3cret", Some(b"Bearer s3cret")));
        assert!(!token_ok("s3cret", Some(b"Bearer s3cre")));
        assert!(!token_ok("s3cret", Some(b"s3cret")));
        assert!(!token_ok("s3cret", None));
    }
}
