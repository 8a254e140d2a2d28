//! The push feed: a document pushed to `POST /admin/energy/prices` on the admin listener (a
//! JSON document of rows, array or `{"rows": [...]}`, or the CSV format), applied like any
//! feed. The HTTP side (token, body limit, answers) is `crate::admin`'s; this is the part that
//! knows prices.

use super::{parse_any, DocumentError};
use crate::pricing::{Feed, IngestReport, Pricing};

/// Largest accepted push body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Parses a pushed document and applies its rows: the report of what was accepted and every
/// rejected row with its kind.
///
/// # Errors
/// The document itself is unreadable (counted as a `malformed` push).
pub fn ingest(pricing: &Pricing, body: &[u8]) -> Result<IngestReport, DocumentError> {
    match parse_any(body) {
        Ok(rows) => Ok(pricing.ingest(Feed::Push, rows)),
        Err(e) => {
            pricing.count_feed_error(Feed::Push, "malformed");
            tracing::warn!(error = %e, "energy push: unreadable document");
            Err(e)
        }
    }
}
