//! The mock server's lifecycle and shared state: binding, the accept loop (which owns every
//! connection task, so dropping the server stops them all), the connection loop with what every
//! request goes through whichever API is spoken (recording, counting, refusal, the key check),
//! the live configuration, the request counter and the last recorded request.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use tokio::io::{AsyncRead, AsyncWrite};

use super::config::{Failure, MockApi, MockConfig};
use super::error::{ApiError, CONTENT_TYPE_JSON};
use super::generate::Next;
use super::http::{self, Conn, Request};
use super::tls::TlsIdentity;
use super::{anthropic, openai};

/// Both APIs list their models here (in their own shapes).
const MODELS_PATH: &str = "/v1/models";
/// `GET` answers `{"requests": N}`, the generation requests counted so far (tests in other
/// processes count upstream calls with it).
pub const STATS_PATH: &str = "/_mock/stats";
/// How long a TLS client may take to complete its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// A request as the mock received it, for assertions on byte-exact bodies and on the
/// credentials a gateway injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Request target as sent, including any query string, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers in arrival order, names as sent; values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body exactly as received (after de-chunking, if it was sent chunked).
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        http::header(&self.headers, name)
    }
}

impl From<&Request> for RecordedRequest {
    fn from(req: &Request) -> Self {
        Self {
            method: req.method.clone(),
            path: req.target.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
        }
    }
}

/// State shared between the [`MockServer`] handle and its connection tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    config: ArcSwap<MockConfig>,
    requests: AtomicU64,
    last_request: Mutex<Option<RecordedRequest>>,
}

impl Shared {
    fn new(cfg: MockConfig) -> Self {
        Self {
            config: ArcSwap::from_pointee(cfg),
            requests: AtomicU64::new(0),
            last_request: Mutex::new(None),
        }
    }

    /// The configuration in force right now.
    pub(crate) fn config(&self) -> Arc<MockConfig> {
        self.config.load_full()
    }

    /// Counts one generation request (or one refused connection).
    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers `req` as the last request received.
    pub(crate) fn record(&self, req: &Request) {
        let recorded = RecordedRequest::from(req);
        *self
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(recorded);
    }
}

/// An in-process OpenAI- or Anthropic-compatible upstream listening on a local port. Dropping it (or calling
/// [`shutdown`](Self::shutdown)) stops the listener and every open connection.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl MockServer {
    /// Starts a plain-HTTP mock on `127.0.0.1` and an ephemeral port.
    pub async fn start(cfg: MockConfig) -> io::Result<Self> {
        Self::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), cfg).await
    }

    /// Starts an HTTPS mock on `127.0.0.1` and an ephemeral port, serving `identity`.
    pub async fn start_tls(cfg: MockConfig, identity: TlsIdentity) -> io::Result<Self> {
        Self::bind_tls(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), cfg, identity).await
    }

    /// Starts a plain-HTTP mock on `addr` (for `joule mock` and demos).
    pub async fn bind(addr: SocketAddr, cfg: MockConfig) -> io::Result<Self> {
        Self::spawn(addr, cfg, None).await
    }

    /// Starts an HTTPS mock on `addr`, serving `identity`.
    pub async fn bind_tls(
        addr: SocketAddr,
        cfg: MockConfig,
        identity: TlsIdentity,
    ) -> io::Result<Self> {
        let acceptor = TlsAcceptor::from(Arc::new(identity.server_config()?));
        Self::spawn(addr, cfg, Some(acceptor)).await
    }

    async fn spawn(
        addr: SocketAddr,
        cfg: MockConfig,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(cfg));
        let is_tls = tls.is_some();
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), tls));
        Ok(Self {
            addr,
            tls: is_tls,
            shared,
            accept_task,
        })
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL: `http://127.0.0.1:PORT/v1`, or `https://localhost:PORT/v1` for TLS
    /// (matching the names [`TestCa::issue_localhost`](super::TestCa::issue_localhost) covers).
    /// Both APIs live under it: `{base_url}/chat/completions`, or `{base_url}/messages` with
    /// [`MockApi::Anthropic`].
    pub fn base_url(&self) -> String {
        let port = self.addr.port();
        if self.tls {
            return format!("https://localhost:{port}/v1");
        }
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}/v1", SocketAddr::new(ip, port))
    }

    /// Replaces the configuration; it applies from the next request (or connection) on.
    pub fn set_config(&self, cfg: MockConfig) {
        self.shared.config.store(Arc::new(cfg));
    }

    /// The configuration in force.
    pub fn config(&self) -> MockConfig {
        MockConfig::clone(&self.shared.config())
    }

    /// Number of generation requests received (`POST /v1/chat/completions`, or
    /// `POST /v1/messages` with [`MockApi::Anthropic`]), including those answered with a failure;
    /// with [`Failure::Refuse`], every refused connection counts as one.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The last request received on any route (refused connections record nothing).
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the listener and closes every open connection. Same as dropping the server.
    pub fn shutdown(self) {}
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if shared.config().failure == Failure::Refuse {
                        shared.count_request();
                        tracing::debug!(%peer, "mock upstream: refusing connection");
                        drop(stream);
                        continue;
                    }
                    connections.spawn(serve(stream, Arc::clone(&shared), tls.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mock upstream: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    // Events are small and must leave at once; Nagle would hold them back.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "mock upstream: set_nodelay failed");
    }
    match tls {
        None => serve_connection(stream, &shared).await,
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, &shared).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "mock upstream: TLS handshake failed"),
                Err(_) => tracing::debug!("mock upstream: TLS handshake timed out"),
            }
        }
    }
}

/// Serves HTTP/1.1 requests on one connection until the client leaves, a response requires
/// closing, or the transport fails. The API is read from the configuration at each request, so
/// [`MockServer::set_config`] may switch it between requests.
async fn serve_connection<S>(io: S, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn::new(io);
    loop {
        let request = match conn.read_request().await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "mock upstream: unreadable request");
                if let Some(status) = e.status() {
                    let error = ApiError::invalid_request(status, e.to_string());
                    let api = shared.config().api;
                    if error.send(&mut conn, api, &[], false).await.is_ok() {
                        close(&mut conn).await;
                    }
                }
                return;
            }
        };
        let cfg = shared.config();
        match respond(&mut conn, &request, &cfg, shared).await {
            Ok(Next::KeepAlive) if request.keep_alive => {}
            Ok(Next::KeepAlive | Next::Close) => return close(&mut conn).await,
            Ok(Next::Abort) => return,
            Err(e) => {
                tracing::debug!(error = %e, "mock upstream: connection failed");
                return;
            }
        }
    }
}

async fn close<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) {
    if let Err(e) = conn.shutdown().await {
        tracing::debug!(error = %e, "mock upstream: shutdown failed");
    }
}

/// Records and counts the request, applies [`Failure::Refuse`] and the key check, then routes
/// it: the configured API's generation path, `GET /v1/models`, or a 404 in the API's shape.
async fn respond<S>(
    conn: &mut Conn<S>,
    request: &Request,
    cfg: &MockConfig,
    shared: &Shared,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let generation_path = match cfg.api {
        MockApi::OpenAi => openai::CHAT_PATH,
        MockApi::Anthropic => anthropic::MESSAGES_PATH,
    };
    if request.method == "POST" && request.path() == generation_path {
        shared.count_request();
    }
    if request.method == "GET" && request.path() == STATS_PATH {
        let body = format!("{{\"requests\":{}}}", shared.requests.load(Ordering::Relaxed));
        conn.write(&http::full_response(200, &[CONTENT_TYPE_JSON], body.as_bytes(), request.keep_alive)).await?;
        return Ok(Next::KeepAlive);
    }
    shared.record(request);
    if cfg.failure == Failure::Refuse {
        return Ok(Next::Abort);
    }
    if let Some(expected) = &cfg.require_bearer {
        let key = match cfg.api {
            MockApi::OpenAi => openai::credential(request),
            MockApi::Anthropic => anthropic::credential(request),
        };
        if key != Some(expected.as_str()) {
            ApiError::authentication(cfg.api)
                .send(conn, cfg.api, &[], request.keep_alive)
                .await?;
            return Ok(Next::KeepAlive);
        }
    }
    let keep_alive = request.keep_alive;
    match (request.method.as_str(), request.path()) {
        ("POST", path) if path == generation_path => match cfg.api {
            MockApi::OpenAi => openai::chat(conn, request, cfg).await,
            MockApi::Anthropic => anthropic::messages(conn, request, cfg).await,
        },
        ("POST", anthropic::COUNT_TOKENS_PATH) if cfg.api == MockApi::Anthropic => {
            if request.header("anthropic-version").is_none() {
                ApiError::invalid_request(400, "anthropic-version: header is required".to_owned()).send(conn, cfg.api, &[], keep_alive).await?;
                return Ok(Next::KeepAlive);
            }
            let body = anthropic::count_tokens(request).to_string();
            let response = http::full_response(200, &[CONTENT_TYPE_JSON], body.as_bytes(), keep_alive);
            conn.write(&response).await?;
            Ok(Next::KeepAlive)
        }
        // No `anthropic-version` check on the listing: health probes list models with whatever
        // headers they were given, and the listing does not depend on the version.
        ("GET", MODELS_PATH) => {
            let models = match cfg.api {
                MockApi::OpenAi => openai::models(cfg),
                MockApi::Anthropic => anthropic::models(cfg),
            };
            let body = models.to_string();
            let response = http::full_response(200, &[CONTENT_TYPE_JSON], body.as_bytes(), keep_alive);
            conn.write(&response).await?;
            Ok(Next::KeepAlive)
        }
        (method, _) => {
            ApiError::unknown_url(method, &request.target)
                .send(conn, cfg.api, &[], keep_alive)
                .await?;
            Ok(Next::KeepAlive)
        }
    }
}
