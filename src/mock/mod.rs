//! An in-process mock of an OpenAI- or Anthropic-compatible GPU backend, for integration
//! tests, benchmarks and the demo (`joule mock`, `--api openai|anthropic`).
//!
//! The server speaks HTTP/1.1 directly on tokio TCP (optionally under rustls) with `httparse`,
//! so every byte on the wire — including broken ones — is under the test's control. With
//! [`MockApi::OpenAi`] (the default):
//!
//! - `POST /v1/chat/completions`: a `chat.completion`, or with `"stream": true` an SSE stream
//!   of `chat.completion.chunk` events (role chunk, one chunk per token, finish chunk, usage
//!   chunk if `stream_options.include_usage`, `[DONE]`), timed by [`MockConfig::ttft_ms`] and
//!   [`MockConfig::tokens_per_s`]; a call of the first function instead of text
//!   (`finish_reason: tool_calls`, the arguments streamed in pieces) when the request forces a
//!   tool (or [`MockConfig::tool_use`]);
//! - `GET /v1/models`: the list of [`MockConfig::models`];
//! - anything else: an OpenAI-shaped 404.
//!
//! With [`MockApi::Anthropic`]:
//!
//! - `POST /v1/messages` (`x-api-key` checked like the bearer above, `anthropic-version` and
//!   `max_tokens` required): a `message` with one text block of the same tokens, cut at
//!   `max_tokens` (`stop_reason` `max_tokens`), or a `tool_use` block when the request forces
//!   a tool (or [`MockConfig::tool_use`]); with `"stream": true` the named events
//!   `message_start`, `content_block_start`, `ping`, one `content_block_delta` per token paced
//!   as above (`input_json_delta` pieces for a tool call), `content_block_stop`,
//!   `message_delta`, `message_stop`;
//! - `GET /v1/models`: Anthropic's model list; anything else: a 404 `not_found_error`.
//!
//! [`Failure`] injects refused connections, error statuses (500, 429, Anthropic's 529
//! overloaded), slow headers, streams dropped mid-way, garbage events, and unusable answers
//! (HTML, empty, truncated, headers then silence), with error bodies in the API's shape. Every request is recorded ([`MockServer::last_request`]) so tests
//! can check byte-exact bodies and the credentials a gateway injected. [`TestCa`] issues
//! certificates for upstreams over TLS.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use joule::mock::{Failure, MockConfig, MockServer};
//!
//! let server = MockServer::start(MockConfig { tokens: 4, ..MockConfig::default() }).await?;
//! let base_url = server.base_url(); // http://127.0.0.1:PORT/v1
//! // ... point a client at base_url ...
//! server.set_config(MockConfig { failure: Failure::Status500, ..MockConfig::default() });
//! # Ok(()) }
//! ```

mod anthropic;
mod config;
mod error;
mod generate;
mod http;
mod openai;
mod server;
mod tls;

pub use config::{parse_failure, Failure, MockApi, MockConfig, SseFraming};
pub use server::{MockServer, RecordedRequest};
pub use tls::{TestCa, TlsError, TlsIdentity};
