//! HTTP poller: fetches a JSON or CSV document of price rows every `interval` (each fetch
//! bounded by `timeout`) and ingests it. A failed fetch (connection, timeout, non-2xx status,
//! oversized or unreadable body) is counted as a `fetch` feed error and logged; the table keeps
//! its last good prices.

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;

use super::{parse_csv, parse_json};
use crate::pricing::energy::ParsedRow;
use crate::pricing::{Feed, FeedFormat, Pricing, PollSettings};

/// Largest document accepted from a price endpoint.
pub const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out")]
    Timeout,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("unreadable document: {0}")]
    Document(String),
}

impl PollError {
    /// Closed-set metric label.
    pub fn label(&self) -> &'static str {
        match self {
            PollError::Document(_) => "malformed",
            _ => "fetch",
        }
    }
}

/// A client for price endpoints: no ambient proxies, no redirects.
///
/// # Errors
/// TLS backend initialisation.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build()
}

/// Fetches and parses one document.
///
/// # Errors
/// See [`PollError`].
pub async fn poll_once(client: &reqwest::Client, s: &PollSettings) -> Result<Vec<ParsedRow>, PollError> {
    let fetch = async {
        let resp = client.get(&s.url).send().await.map_err(|e| PollError::Request(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(PollError::Status(resp.status().as_u16()));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| PollError::Request(e.without_url().to_string()))?;
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(PollError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = tokio::time::timeout(s.timeout, fetch).await.map_err(|_| PollError::Timeout)??;
    match s.format {
        FeedFormat::Json => parse_json(&body).map_err(|e| PollError::Document(e.0)),
        FeedFormat::Csv => {
            let text = std::str::from_utf8(&body).map_err(|_| PollError::Document("CSV is not UTF-8".into()))?;
            parse_csv(text).map_err(|e| PollError::Document(e.0))
        }
    }
}

/// Polls until `shutdown` resolves; the first poll happens at once.
pub async fn run(settings: PollSettings, client: reqwest::Client, pricing: Arc<Pricing>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        match poll_once(&client, &settings).await {
            Ok(rows) => {
                pricing.ingest(Feed::Poll, rows);
            }
            Err(e) => {
                pricing.count_feed_error(Feed::Poll, e.label());
                // The URL may carry a token in its query: log the host only.
                let host = reqwest::Url::parse(&settings.url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
                tracing::warn!(host = %host, error = %e, "energy poll failed; keeping the last good prices");
            }
        }
    }
}
