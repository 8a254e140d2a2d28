//! [`Record`]: what happened to one request — who sent it, where it went, what it cost, how
//! it ended. The pipeline fills it in as the request moves along; at the end it becomes the
//! access log line, the request metrics and (for authenticated requests) a usage record.

use std::sync::Arc;
use std::time::Instant;

use crate::access::Principal;
use crate::catalog::Quote;
use crate::pricing::cost::Cost;

/// What happened to a request, for the access log and metrics.
#[derive(Debug, Clone)]
pub struct Record {
    pub request_id: String,
    pub started: Instant,
    pub status: u16,
    pub key_name: Option<Arc<str>>,
    pub model: Option<String>,
    pub deployment: Option<String>,
    pub strategy: Option<String>,
    pub error: Option<&'static str>,
    pub ttft: Option<std::time::Duration>,
    /// When the first content token was forwarded (streams).
    pub first_token_at: Option<Instant>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub stream: bool,
    /// What the request cost the client (`usage.cost`).
    pub cost: Option<Cost>,
    /// The authenticated key (and project), for limits and the usage record.
    pub principal: Option<Principal>,
    /// The data center of the deployment that answered (hosted deployments).
    pub data_center: Option<String>,
    /// The answering deployment's token prices at decision time.
    pub quote: Option<Quote>,
}

impl Record {
    /// A fresh record with a random request id.
    pub fn new() -> Self {
        Record {
            request_id: request_id(),
            started: Instant::now(),
            status: 0,
            key_name: None,
            model: None,
            deployment: None,
            strategy: None,
            error: None,
            ttft: None,
            first_token_at: None,
            prompt_tokens: None,
            completion_tokens: None,
            stream: false,
            cost: None,
            principal: None,
            data_center: None,
            quote: None,
        }
    }
}

/// `req_` and 24 hex digits: the wall clock's milliseconds (48 bits), then 48 random bits.
/// Time-ordered, so the stores' primary-key index on usage records grows at its right edge
/// (each batch dirties a few pages instead of one page per record, as random ids did);
/// unique, as two requests in one millisecond would need 48 equal random bits. Built in one
/// allocation.
fn request_id() -> String {
    let ms = u64::try_from(crate::clock::now_ms()).unwrap_or(0).to_be_bytes();
    let random = rand::random::<[u8; 6]>();
    let mut raw = [0u8; 12];
    raw[..6].copy_from_slice(&ms[2..]);
    raw[6..].copy_from_slice(&random);
    let mut id = *b"req_000000000000000000000000";
    // 12 bytes always fit the 24 digits after the prefix.
    let _ = hex::encode_to_slice(raw, &mut id[4..]);
    String::from_utf8_lossy(&id).into_owned()
}

impl Default for Record {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_unique_and_ordered_by_time() {
        let ids: Vec<String> = (0..10_000).map(|_| super::request_id()).collect();
        assert!(ids.iter().all(|id| id.len() == 28 && id.starts_with("req_") && id[4..].bytes().all(|b| b.is_ascii_hexdigit())));
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        // The time part (12 digits) never goes back.
        assert!(ids.windows(2).all(|w| w[0][4..16] <= w[1][4..16]), "time-ordered");
    }
}
