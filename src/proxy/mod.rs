//! The request phases, independent of pingora: dispatch by path, authenticate, and hand off
//! to the chat or models handlers. The server adapter (`crate::server::adapter`) implements
//! [`Downstream`] over a pingora session; tests could implement it over anything.
//!
//! Each request takes one `load()` of the [`World`] snapshot and uses it throughout, so it
//! sees one consistent catalog and client pool even while a reload swaps them; keys and
//! projects come from the [`Registry`]'s own snapshot (one more `load()`), which changes
//! whenever a key or project does.

mod authorize;
pub mod batch;
pub mod body;
pub mod chat;
pub mod finish;
pub mod messages;
pub mod models;
pub mod responses;
mod observe;
mod relay;
mod route;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;


use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;

use crate::api::error::ApiError;
use crate::access::Principal;
use crate::secret::KeyHash;
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::pricing::Pricing;
use crate::access::Registry;
use crate::store::Store;
use crate::routing::tags::StrategySet;
use crate::telemetry::{Telemetry, TelemetrySettings};
use crate::routing::wasm::explain::DecisionLog;
use crate::routing::wasm::PluginRegistry;
use crate::upstream::client::{ClientError, Clients};
use crate::upstream::ExchangeLimits;
use crate::usage::UsageSink;
pub use crate::usage::Record;

/// Everything a request reads, swapped whole on reload.
pub struct World {
    pub catalog: Catalog,
    /// Live deployment numbers; carried over from the previous world on reload.
    pub telemetry: Arc<Telemetry>,
    pub clients: Clients,
    pub default_strategy: StrategySet,
    pub limits: ExchangeLimits,
    /// SHA-256 of the admin API token; `None` disables the admin API.
    pub admin_token: Option<KeyHash>,
}

/// What a [`World`] is built from; the config turns its file into this (and a reload builds
/// a new world from a new one).
#[derive(Debug, Clone)]
pub struct WorldSettings {
    pub catalog: Catalog,
    pub telemetry: TelemetrySettings,
    pub limits: ExchangeLimits,
    /// Strategy for requests without tags whose project names none.
    pub default_strategy: StrategySet,
    /// SHA-256 of the admin API token; `None` disables the admin API.
    pub admin_token: Option<KeyHash>,
}

impl World {
    /// Builds a world from validated settings, carrying live telemetry over from `previous`
    /// by deployment id.
    ///
    /// # Errors
    /// Upstream client construction (e.g. an unreadable provider CA).
    pub fn new(s: &WorldSettings, previous: Option<&World>) -> Result<Self, ClientError> {
        Ok(World {
            telemetry: Arc::new(Telemetry::new(&s.catalog, s.telemetry.clone(), previous.map(|w| &*w.telemetry))),
            clients: Clients::new(&s.catalog, &s.limits)?,
            catalog: s.catalog.clone(),
            default_strategy: s.default_strategy.clone(),
            limits: s.limits.clone(),
            admin_token: s.admin_token,
        })
    }
}

/// Shared gateway state.
pub struct Gateway {
    pub world: ArcSwap<World>,
    pub metrics: Metrics,
    /// Energy prices and the price book (its own `ArcSwap`s; changes far more often than the world).
    pub pricing: Arc<Pricing>,
    /// API keys and projects (snapshot + store).
    pub registry: Arc<Registry>,
    /// The durable store, if one is configured (the admin API manages projects, keys and
    /// usage through it).
    pub store: Option<Store>,
    /// Where finished requests' usage records go.
    pub usage: UsageSink,
    /// The strategy plugins (their own `ArcSwap`ped set, independent of config reloads).
    pub strategies: Arc<PluginRegistry>,
    /// Where route decisions are logged, if configured.
    pub decision_log: Option<DecisionLog>,
    /// How long Responses API responses are kept in the store; `None`: not kept.
    pub response_retention: Option<std::time::Duration>,
    /// The public API's base URL (`http://127.0.0.1:8080/v1`), for the console's snippets.
    pub api_base: String,
    /// Where rate limits and budgets are shared with other instances (`[limits] backend`).
    pub shared_limits: Option<Arc<crate::access::SharedLimits>>,
    /// The batch API (`None` without a store).
    pub batches: Option<Arc<batch::BatchService>>,
    /// Re-reads the config file and swaps the world (set by the server when there is a file).
    pub reloader: std::sync::OnceLock<Arc<dyn Reload>>,
    in_flight: AtomicUsize,
    /// Set when a shutdown or upgrade signal arrives: answers close their connections.
    draining: std::sync::atomic::AtomicBool,
}

/// A config reload, as the admin API and signal handlers trigger it; the server implements
/// it (it knows the config file and format, which this layer must not).
pub trait Reload: Send + Sync {
    /// Re-reads, validates and (if valid and allowed) applies the config. Blocking: reads
    /// files; call it off the request workers.
    fn reload(&self) -> ReloadReport;
}

/// What a reload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// The new config is in force.
    pub applied: bool,
    /// Why it was refused: every problem of the new file, or the restart-only fields it
    /// changes. Empty when applied.
    pub problems: Vec<String>,
    /// Sections that changed but take effect only at the next start (applied reloads).
    pub restart_required: Vec<String>,
}

/// Everything a [`Gateway`] is made of.
pub struct GatewayParts {
    pub world: World,
    pub metrics: Metrics,
    pub pricing: Arc<Pricing>,
    pub registry: Arc<Registry>,
    pub store: Option<Store>,
    pub usage: UsageSink,
    pub strategies: Arc<PluginRegistry>,
    pub decision_log: Option<DecisionLog>,
    pub response_retention: Option<std::time::Duration>,
    pub api_base: String,
    pub shared_limits: Option<Arc<crate::access::SharedLimits>>,
    pub batches: Option<Arc<batch::BatchService>>,
}

impl Gateway {
    /// Assembles the gateway state.
    pub fn from_parts(parts: GatewayParts) -> Arc<Self> {
        let GatewayParts { world, metrics, pricing, registry, store, usage, strategies, decision_log, response_retention, api_base, shared_limits, batches } = parts;
        Arc::new(Gateway {
            world: ArcSwap::from_pointee(world),
            metrics,
            pricing,
            registry,
            store,
            usage,
            strategies,
            decision_log,
            response_retention,
            api_base,
            shared_limits,
            batches,
            reloader: std::sync::OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// From now on every answer closes its connection (`Connection: close` on HTTP/1.1), so
    /// kept-alive clients move to new connections — to the new process after an upgrade —
    /// before this one stops reading from them.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether [`Gateway::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Requests being served now (graceful shutdown waits for 0).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Marks a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.metrics.in_flight.inc();
        InFlight(self.clone())
    }
}

/// Guard counting one in-flight request.
pub struct InFlight(Arc<Gateway>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.in_flight.dec();
    }
}

/// Which surface a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The public OpenAI-compatible API.
    Api,
    /// `/metrics`, `/healthz` and the admin API for operators.
    Admin,
}

/// What the handlers need of the request line and headers.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: http::Method,
    /// Path without the query string.
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    pub authorization: Option<Vec<u8>>,
    /// `x-api-key` (how Anthropic clients send a key; read on `/v1/messages` only).
    pub api_key: Option<Vec<u8>>,
    /// `If-None-Match` (the console's files revalidate by `ETag`).
    pub if_none_match: Option<String>,
    pub content_length: Option<u64>,
    /// `Content-Type` (file uploads are `multipart/form-data`).
    pub content_type: Option<String>,
    /// `x-joule-explain: 1`: answer with the route decision in `x-joule-explain`.
    pub explain: bool,
    /// `anthropic-beta`, passed on to Anthropic providers.
    pub anthropic_beta: Option<String>,
}

/// A response status line and headers.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// Set for fixed-size bodies; `None` streams (chunked on HTTP/1.1).
    pub content_length: Option<usize>,
}

/// The client connection went away or misbehaved.
#[derive(Debug, thiserror::Error)]
#[error("downstream I/O: {0}")]
pub struct DownstreamError(pub String);

/// The client side of one exchange, as the handlers see it.
#[async_trait]
pub trait Downstream: Send {
    /// Next chunk of the request body; `None` at its end.
    async fn read_body(&mut self) -> Result<Option<Bytes>, DownstreamError>;
    /// Sends the status and headers.
    async fn send_head(&mut self, head: ResponseHead) -> Result<(), DownstreamError>;
    /// Sends a body chunk (written and flushed at once); `end` finishes the body.
    async fn send_body(&mut self, chunk: Bytes, end: bool) -> Result<(), DownstreamError>;
    /// Starts an answer whose body follows later (a stream): the status and headers, and the
    /// body's first bytes if there are any yet, which an HTTP/1.1 connection writes with the
    /// head in one system call. Default: `send_head`, then `send_body` for non-empty `first`.
    async fn send_start(&mut self, head: ResponseHead, first: Bytes) -> Result<(), DownstreamError> {
        self.send_head(head).await?;
        match first.is_empty() {
            true => Ok(()),
            false => self.send_body(first, false).await,
        }
    }
    /// Sends a whole answer: the status, the headers and `body`, which is all of it
    /// (`Content-Length` is its length). An HTTP/1.1 connection writes head and body in one
    /// system call (one loopback round through the kernel, one wake-up of the client) where
    /// `send_head` then `send_body` make two. Default: exactly that pair.
    async fn send_whole(&mut self, status: u16, headers: Vec<(&'static str, String)>, body: Bytes) -> Result<(), DownstreamError> {
        self.send_head(ResponseHead { status, headers, content_length: Some(body.len()) }).await?;
        self.send_body(body, true).await
    }
    /// The connection must not be reused after this response (unread body left behind).
    fn close_after(&mut self);
    /// The handler is about to read the body: a client that sent `Expect: 100-continue` and
    /// is waiting gets `100 Continue` now. Called only once the checks that need no body
    /// (path, method, authentication, declared length) have passed; a request refused by
    /// them is answered with its final status without it. Default: nothing to send.
    async fn accept_body(&mut self) -> Result<(), DownstreamError> {
        Ok(())
    }
    /// Resolves when the client has gone away (closed or reset its connection, reset its h2
    /// stream) while an answer is being sent; called only once the request body was read. A
    /// stream then stops at once instead of at its next event, which may be seconds away,
    /// holding two descriptors and the upstream's generation meanwhile. Cancel-safe. Default:
    /// never (a client that cannot leave).
    async fn closed(&mut self) {
        std::future::pending::<()>().await;
    }
}

/// The API a client spoke, which its answers and errors are given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientApi {
    /// OpenAI chat completions (`/v1/chat/completions`).
    OpenAi,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// OpenAI Responses (`/v1/responses`); errors are OpenAI-shaped.
    Responses,
}

impl ClientApi {
    /// The error body in this API.
    pub fn error_body(self, err: &ApiError) -> Vec<u8> {
        match self {
            ClientApi::OpenAi | ClientApi::Responses => err.body(),
            ClientApi::Anthropic => {
                let message = match err {
                    ApiError::InvalidApiKey(e) => {
                        format!("Invalid API key ({e}). Pass a joule key as `x-api-key: <key>` or `Authorization: Bearer <key>`.")
                    }
                    _ => err.message(),
                };
                crate::translate::anthropic::inbound::error_body(err.status(), &message)
            }
        }
    }
}

/// Writes an OpenAI-shaped error response.
///
/// # Errors
/// The client went away.
pub async fn send_error(io: &mut dyn Downstream, rec: &mut Record, err: &ApiError) -> Result<(), DownstreamError> {
    send_error_as(ClientApi::OpenAi, io, rec, err).await
}

/// Writes an error response in the client's API.
///
/// # Errors
/// The client went away.
pub async fn send_error_as(api: ClientApi, io: &mut dyn Downstream, rec: &mut Record, err: &ApiError) -> Result<(), DownstreamError> {
    let body = api.error_body(err);
    let mut headers = vec![("content-type", "application/json".to_string()), ("x-request-id", rec.request_id.clone())];
    if let Some(s) = err.retry_after() {
        headers.push(("retry-after", s.to_string()));
    }
    if let Some(a) = err.allow() {
        headers.push(("allow", a.to_string()));
    }
    rec.status = err.status();
    rec.error = Some(err.label());
    io.send_whole(err.status(), headers, Bytes::from(body)).await
}

/// Sends a JSON document with status 200.
///
/// # Errors
/// The client went away.
pub async fn send_json(io: &mut dyn Downstream, rec: &mut Record, body: Vec<u8>) -> Result<(), DownstreamError> {
    rec.status = 200;
    let headers = vec![("content-type", "application/json".to_string()), ("x-request-id", rec.request_id.clone())];
    io.send_whole(200, headers, Bytes::from(body)).await
}

fn authenticate(gw: &Gateway, head: &RequestHead, rec: &mut Record) -> Result<Principal, ApiError> {
    authenticate_header(gw, head.authorization.as_deref(), rec)
}

/// The principal of an `Authorization` header value.
fn authenticate_header(gw: &Gateway, authorization: Option<&[u8]>, rec: &mut Record) -> Result<Principal, ApiError> {
    let p = gw.registry.load().keys.authenticate(authorization).map_err(ApiError::InvalidApiKey)?;
    rec.key_name = Some(p.key_name.clone());
    Ok(p)
}

/// Authentication as Anthropic clients send it: `x-api-key`, or a bearer token when there is
/// no `x-api-key` (as with `ANTHROPIC_AUTH_TOKEN`).
fn authenticate_anthropic(gw: &Gateway, head: &RequestHead, rec: &mut Record) -> Result<Principal, ApiError> {
    let Some(key) = &head.api_key else { return authenticate(gw, head, rec) };
    authenticate_header(gw, Some(&[&b"Bearer "[..], key].concat()), rec)
}

/// Serves one request of the public API. Routes other than chat completions run boxed: the
/// future of this function lives as long as an answer streams, and sized for the largest
/// route it would make every chat stream carry the Responses and batch routes' state.
///
/// # Errors
/// Only downstream I/O failures; every other outcome is a response.
pub async fn handle(gw: &Gateway, head: &RequestHead, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    let world = gw.world.load_full();
    let path = head.path.trim_end_matches('/');
    use http::Method;
    let result = match (path, &head.method) {
        ("/healthz", &Method::GET) => return send_json(io, rec, br#"{"status":"ok"}"#.to_vec()).await,
        ("/v1/chat/completions", &Method::POST) => match authenticate(gw, head, rec) {
            Ok(p) => return chat::handle(gw, &world, &p, head, io, rec).await,
            Err(e) => Err(e),
        },
        ("/v1/messages", &Method::POST) => match authenticate_anthropic(gw, head, rec) {
            Ok(p) => return Box::pin(messages::handle(gw, &world, &p, head, io, rec)).await,
            Err(e) => return refuse(ClientApi::Anthropic, head, io, rec, &e).await,
        },
        ("/v1/responses", &Method::POST) => match authenticate(gw, head, rec) {
            Ok(p) => return Box::pin(responses::create(gw, &world, &p, head, io, rec)).await,
            Err(e) => Err(e),
        },
        (p, m @ (&Method::GET | &Method::DELETE)) if p.starts_with("/v1/responses/") => match authenticate(gw, head, rec) {
            Ok(key) => return Box::pin(responses::kept(gw, &key, &p["/v1/responses/".len()..], m == Method::DELETE, io, rec)).await,
            Err(e) => Err(e),
        },
        ("/v1/messages/count_tokens", &Method::POST) => match authenticate_anthropic(gw, head, rec) {
            Ok(p) => return Box::pin(messages::count_tokens(&world, &p, head, io, rec)).await,
            Err(e) => return refuse(ClientApi::Anthropic, head, io, rec, &e).await,
        },
        ("/v1/messages" | "/v1/messages/count_tokens", m) => {
            let e = ApiError::MethodNotAllowed { method: m.to_string(), path: head.path.clone(), allow: "POST".into() };
            return refuse(ClientApi::Anthropic, head, io, rec, &e).await;
        }
        ("/v1/models", &Method::GET) => {
            authenticate(gw, head, rec).map(|p| models::list(&world.catalog, &gw.pricing.book(), &|m| p.may_use(m)))
        }
        (p, _) if batch::is_batch_path(p) => match authenticate(gw, head, rec) {
            Ok(key) => return Box::pin(batch::handle(gw, &world, &key, head, io, rec)).await,
            Err(e) => Err(e),
        },
        (p, &Method::GET) if p.starts_with("/v1/models/") && p.ends_with("/prices") => authenticate(gw, head, rec)
            .and_then(|key| {
                let id = &p["/v1/models/".len()..p.len() - "/prices".len()];
                models::prices(&world.catalog, &gw.pricing, id, head.query.as_deref(), &|m| key.may_use(m))
            }),
        (p, &Method::GET) if p.starts_with("/v1/models/") => authenticate(gw, head, rec)
            .and_then(|key| models::one(&world.catalog, &gw.pricing.book(), &p["/v1/models/".len()..], &|m| key.may_use(m))),
        (p @ ("/healthz" | "/v1/chat/completions" | "/v1/models" | "/v1/responses"), m) => {
            let allow = if matches!(p, "/v1/chat/completions" | "/v1/responses") { "POST" } else { "GET" };
            Err(ApiError::MethodNotAllowed { method: m.to_string(), path: head.path.clone(), allow: allow.into() })
        }
        (p, m) if p.starts_with("/v1/models/") => {
            Err(ApiError::MethodNotAllowed { method: m.to_string(), path: head.path.clone(), allow: "GET".into() })
        }
        (p, m) if p.starts_with("/v1/responses/") => {
            Err(ApiError::MethodNotAllowed { method: m.to_string(), path: head.path.clone(), allow: "GET, DELETE".into() })
        }
        _ => Err(ApiError::NotFound { path: head.path.chars().take(200).collect() }),
    };
    match result {
        Ok(body) => send_json(io, rec, body).await,
        Err(e) => refuse(ClientApi::OpenAi, head, io, rec, &e).await,
    }
}

/// Answers a request refused before its body was read.
async fn refuse(api: ClientApi, head: &RequestHead, io: &mut dyn Downstream, rec: &mut Record, e: &ApiError) -> Result<(), DownstreamError> {
    // Whatever body the client sent to a refused endpoint is left unread.
    if head.content_length.unwrap_or(0) > 0 {
        io.close_after();
    }
    send_error_as(api, io, rec, e).await
}
