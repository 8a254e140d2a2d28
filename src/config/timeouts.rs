//! `[limits]`: the request body limit, the upstream answer limit and the timeouts of an upstream exchange, validated into
//! [`ExchangeLimits`]; and where rate limits and budgets are counted (`backend`), validated
//! into [`SharedSettings`].

use serde::Deserialize;

use super::problems::{ms, Env, Problems};
use crate::access::SharedSettings;
use crate::upstream::ExchangeLimits;

/// `[limits]`. Every field is optional and must be > 0 when set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request body. Default 16 MiB.
    pub max_body_bytes: Option<u64>,
    /// TCP + TLS connect to an upstream. Default 2000.
    pub connect_timeout_ms: Option<u64>,
    /// Request sent to response headers. Default 30000.
    pub first_byte_timeout_ms: Option<u64>,
    /// Longest silence between two chunks of a stream. Default 120000.
    pub stream_idle_timeout_ms: Option<u64>,
    /// Whole non-stream response, per deployment tried. Default 600000.
    pub request_timeout_ms: Option<u64>,
    /// Largest non-stream upstream answer. Default 32 MiB.
    pub max_answer_bytes: Option<u64>,
    /// Reading the client's request body. Default 30000.
    pub client_body_timeout_ms: Option<u64>,
    /// Reading one request head (line and headers), from its first byte. Default 10000.
    pub client_header_timeout_ms: Option<u64>,
    /// A client connection with no request on it (new, or keep-alive between requests).
    /// Default 60000.
    pub client_idle_timeout_ms: Option<u64>,
    /// Where rate limits and budgets are counted: `local` (default: each instance alone) or
    /// `redis` (Valkey or Redis, shared by every instance naming the same server).
    pub backend: Option<String>,
    /// The server's URL (`redis://host:6379/0`, `valkey://…`, `unix:///run/valkey.sock`);
    /// prefer `url_env` when it holds a password.
    pub url: Option<String>,
    /// Environment variable holding the URL.
    pub url_env: Option<String>,
    /// Longest wait for one answer of the server; past it the server counts as down. Default 250.
    pub backend_timeout_ms: Option<u64>,
    /// How often charges and spend are sent to the server. Default 100.
    pub sync_interval_ms: Option<u64>,
}

/// Validates the shared-limits part of `[limits]`: `None` for the local backend.
pub(super) fn shared_limits(p: &mut Problems, l: &RawLimits, env: Env<'_>) -> Option<SharedSettings> {
    match l.backend.as_deref().unwrap_or("local") {
        "local" => {
            if l.url.is_some() || l.url_env.is_some() {
                p.add("limits", "url/url_env are for backend = \"redis\"");
            }
            None
        }
        "redis" | "valkey" => {
            p.nonzero("limits", &[("backend_timeout_ms", l.backend_timeout_ms), ("sync_interval_ms", l.sync_interval_ms)]);
            let url = p.url_or_env("limits", &l.url, &l.url_env, env, "set exactly one of url or url_env for backend = \"redis\"")?;
            if redis::Client::open(url.expose().as_str()).is_err() {
                p.add("limits.url", "not a redis://, valkey:// or unix:// URL (TLS, rediss://, is not supported: use a private network or a Unix socket)");
            }
            Some(SharedSettings { url, timeout: ms(l.backend_timeout_ms, 250), sync_interval: ms(l.sync_interval_ms, 100) })
        }
        other => {
            p.add("limits.backend", format!("`{other}` is not one of: local, redis (or its alias valkey)"));
            None
        }
    }
}

/// Validates `[limits]`. A zero is a problem (`must be > 0`); the value is kept as given.
pub(super) fn limits(p: &mut Problems, l: &RawLimits) -> ExchangeLimits {
    let max_body = l.max_body_bytes.unwrap_or(16 * 1024 * 1024);
    if max_body == 0 {
        p.add("limits.max_body_bytes", "must be > 0");
    }
    let max_answer = l.max_answer_bytes.unwrap_or(32 * 1024 * 1024);
    if max_answer == 0 {
        p.add("limits.max_answer_bytes", "must be > 0");
    }
    p.nonzero(
        "limits",
        &[
            ("connect_timeout_ms", l.connect_timeout_ms),
            ("first_byte_timeout_ms", l.first_byte_timeout_ms),
            ("stream_idle_timeout_ms", l.stream_idle_timeout_ms),
            ("request_timeout_ms", l.request_timeout_ms),
            ("client_body_timeout_ms", l.client_body_timeout_ms),
            ("client_header_timeout_ms", l.client_header_timeout_ms),
            ("client_idle_timeout_ms", l.client_idle_timeout_ms),
        ],
    );
    ExchangeLimits {
        max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
        connect_timeout: ms(l.connect_timeout_ms, 2_000),
        first_byte_timeout: ms(l.first_byte_timeout_ms, 30_000),
        stream_idle_timeout: ms(l.stream_idle_timeout_ms, 120_000),
        request_timeout: ms(l.request_timeout_ms, 600_000),
        max_answer_bytes: usize::try_from(max_answer).unwrap_or(usize::MAX),
        client_body_timeout: ms(l.client_body_timeout_ms, 30_000),
        client_header_timeout: ms(l.client_header_timeout_ms, 10_000),
        client_idle_timeout: ms(l.client_idle_timeout_ms, 60_000),
    }
}
