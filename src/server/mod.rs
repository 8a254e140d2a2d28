//! Server wiring: the pingora `Server`, its API and admin listeners (cleartext and rustls
//! TLS with HTTP/2 by ALPN), and graceful shutdown.
//!
//! Shutdown: on SIGTERM — and on SIGINT (Ctrl-C), which pingora alone treats as a fast exit
//! that skips all of this — pingora stops accepting and signals its services; the drain service
//! here then waits until no request is in flight, or the configured grace period has passed,
//! and exits. (Pingora alone would always sleep the whole grace period — 300 s by default.)
//! Before exiting it flushes the usage queue, so every finished request's record is in the
//! store (or, if the store is down, in the spill file) when the process ends. A second SIGINT
//! during the drain exits at once (status 130), as Ctrl-C twice should.

pub mod adapter;
pub mod guard;
mod notify;
pub mod reload;
pub mod tls;


use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::pricing::feed::Feeds;
use crate::access::Registry;
use crate::proxy::{Gateway, GatewayParts, World};
use crate::store::{Store, StoreError};
use crate::usage::{new_instance_id, UsageSink};
use crate::routing::wasm::explain::DecisionLog;
use crate::routing::wasm::{watch, Host, PluginRegistry};
use adapter::{JouleApp, Role};

/// Per-connection buffering in front of a plain client socket: none. pingora's default 64 KiB
/// read buffer is allocated (zeroed) for every accepted connection and held for its whole
/// life — most of the memory an open stream cost — while the HTTP/1 session reads the head
/// into its own 4 KiB buffer and bodies in large reads anyway. Its 1460-byte write buffer only
/// coalesced the pieces of a chunked body write, which `server::guard` now passes through as
/// one vectored write (measured: no change in CPU per request or per stream, 1.5 KiB less per
/// connection), and a whole answer's head and body, which the guard joins itself
/// (`guard::hold_next_write`).
const PLAIN_L4_BUFFER: L4BufferSettings = L4BufferSettings { read: Some(0), write: Some(0) };
/// TLS listeners keep a read buffer of one TLS record (16 KiB): rustls reads record by record,
/// and unbuffered that is a system call per record.
const TLS_L4_BUFFER: L4BufferSettings = L4BufferSettings { read: Some(16 * 1024), write: Some(1460) };

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("upstream clients: {0}")]
    Clients(#[from] crate::upstream::client::ClientError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("TLS listener: {0}")]
    Tls(String),
    // `error`, not `source`: the reason is part of this message, so it must not print again
    // as the next link of the error chain.
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: std::net::SocketAddr, error: std::io::Error },
    #[error(transparent)]
    Energy(#[from] crate::pricing::feed::StartError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Limits(#[from] crate::access::shared::SharedError),
    #[error("store: {0}")]
    Access(#[from] crate::access::SourceError),
    #[error("{0}")]
    Plugins(String),
}

/// Longest the shutdown waits for the usage queue to be written or spilled.
const USAGE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds and releases every configured address, so that a port in use or a foreign address
/// is reported as a start-up error: pingora itself panics in a service thread on bind failure.
fn check_bind(settings: &Settings) -> Result<(), StartError> {
    let tls = settings.server.tls.iter().flat_map(|t| t.listen.iter());
    for &addr in settings.server.listen.iter().chain(tls).chain(settings.server.admin_listen.iter()) {
        std::net::TcpListener::bind(addr).map_err(|error| StartError::Bind { addr, error })?;
    }
    Ok(())
}

/// pingora's signal handling with SIGINT as a graceful terminate, like SIGTERM: SIGQUIT hands
/// the listeners over (graceful upgrade), SIGTERM and SIGINT drain, flush and exit; a second
/// SIGINT exits at once.
/// Turns signals into pingora's shutdown kinds; every one starts the gateway's drain first.
struct Signals(Arc<Gateway>);

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut quit, mut term, mut int) = match (signal(SignalKind::quit()), signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(q), Ok(t), Ok(i)) => (q, t, i),
            (q, t, i) => {
                let e = [q.err(), t.err(), i.err()].into_iter().flatten().next().map(|e| e.to_string());
                tracing::error!(error = ?e, "cannot listen for shutdown signals; exiting");
                return ShutdownSignal::FastShutdown;
            }
        };
        tokio::select! {
            _ = quit.recv() => {
                tracing::info!("SIGQUIT received: handing the listening sockets to the new process, then draining");
                self.0.begin_drain();
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                self.0.begin_drain();
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                self.0.begin_drain();
                tracing::info!("SIGINT received: draining as for SIGTERM (a second SIGINT exits at once)");
                // The server's runtime keeps running through the grace period.
                tokio::spawn(async move {
                    int.recv().await;
                    tracing::warn!("second SIGINT: exiting without draining");
                    std::process::exit(130);
                });
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Runs the shared limits' sync loop until the process exits (see `access::shared`): it
/// keeps running through the drain, whose requests still take leases and spend budgets, and
/// the drain waits for its last passes before exiting.
struct SharedSync(Arc<crate::access::SharedLimits>);

#[async_trait]
impl BackgroundService for SharedSync {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.0.clone().run(std::future::pending()).await;
    }
}

/// Runs the batch runner until shutdown; lines in flight then finish as requests in flight,
/// which the drain waits for.
struct Batches(Arc<Gateway>);

#[async_trait]
impl BackgroundService for Batches {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        crate::proxy::batch::runner::run(self.0.clone(), stop).await;
    }
}

/// Says the services run (systemd readiness, see [`notify`]).
struct Ready;

#[async_trait]
impl BackgroundService for Ready {
    async fn start(&self, _shutdown: ShutdownWatch) {
        notify::ready();
    }
}

struct Drain {
    gateway: Arc<Gateway>,
    grace: Duration,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        let deadline = Instant::now() + self.grace;
        tracing::info!(in_flight = self.gateway.in_flight(), grace_s = self.grace.as_secs(), "shutting down: draining");
        while self.gateway.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Records of the requests that just finished are queued by now (the logging phase
        // runs before a request stops counting as in flight).
        if !self.gateway.usage.flush(USAGE_FLUSH_TIMEOUT).await {
            tracing::error!("usage records not flushed within {USAGE_FLUSH_TIMEOUT:?}");
        }
        // The last requests' tokens and spend reach the shared limits server.
        if let Some(shared) = &self.gateway.shared_limits {
            shared.synced(Duration::from_secs(2)).await;
        }
        // Price history frames still queued for the store are written before the exit.
        self.gateway.pricing.history().flush();
        tracing::info!(in_flight = self.gateway.in_flight(), "shutdown complete");
        std::process::exit(0);
    }
}

struct Prober {
    gateway: Arc<Gateway>,
    health: crate::upstream::probe::HealthSettings,
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(interval) = self.health.probe_interval else { return };
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {
                    let world = self.gateway.world.load_full();
                    crate::upstream::probe::probe_all(&world.catalog, &world.clients, &world.telemetry, &self.health).await;
                }
            }
        }
    }
}

/// Runs the energy feeds and the staleness check until shutdown.
struct Energy {
    gateway: Arc<Gateway>,
    feeds: std::sync::Mutex<Option<Feeds>>,
}

#[async_trait]
impl BackgroundService for Energy {
    async fn start(&self, shutdown: ShutdownWatch) {
        let feeds = self.feeds.lock().ok().and_then(|mut f| f.take());
        if let Some(feeds) = feeds {
            feeds.run(self.gateway.pricing.clone(), shutdown).await;
        }
    }
}

/// Builds the gateway state and its energy feeds (not yet running) from settings: opens (and
/// migrates) the store, loads the price history from it, loads keys and projects, and starts
/// the usage writer and the snapshot and budget tasks. Call outside any tokio runtime.
///
/// # Errors
/// See [`StartError`].
pub fn gateway(settings: &Settings) -> Result<(Arc<Gateway>, Feeds), StartError> {
    let metrics = Metrics::new()?;
    let store = settings.store.as_ref().map(|s| Store::open(&s.location)).transpose()?;
    // With a store, price history persists there (see `pricing::history`).
    let durable = store.clone().map(|s| Box::new(s) as Box<dyn crate::pricing::history::HistoryStore>);
    let (pricing, feeds) = crate::pricing::feed::build(&settings.energy, &settings.catalog, Some(metrics.clone()), durable)?;
    let world = World::new(&settings.world(), None)?;
    let host = Host::new(settings.plugins.host.clone()).map_err(|e| StartError::Plugins(e.to_string()))?;
    let strategies = PluginRegistry::new(host, settings.plugins.dir.clone(), Some(metrics.strategy.clone()));
    // Rejected files are logged by the scan; the gateway starts anyway (native fallback).
    strategies.scan();
    let decision_log = match &settings.plugins.decision_log {
        Some(path) => Some(
            DecisionLog::open(path, Some(metrics.strategy.clone()))
                .map_err(|e| StartError::Plugins(format!("decision log {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let instance: Arc<str> = Arc::from(new_instance_id());
    let shared_limits = match &settings.shared_limits {
        Some(s) => Some(
            crate::access::SharedLimits::new(s.clone(), instance.clone(), metrics.limits_backend_errors.clone())
?,
        ),
        None => None,
    };
    let store_handle = store.clone();
    let (registry, usage) = match (&settings.store, store) {
        (Some(s), Some(store)) => {
            let registry = Registry::new(settings.keys.clone(), Some(Arc::new(store.clone())), shared_limits.clone());
            store.wait(registry.refresh())?;
            // Budgets start from the spend already recorded, before the first request.
            store.wait(registry.sync_budgets_once(&instance))?;
            registry.spawn_background(instance.clone(), s.budget_sync);
            tracing::info!(backend = store.kind(), instance = %instance, "store open");
            (registry, UsageSink::start(Arc::new(store), s.usage.clone(), metrics.clone(), instance.clone()))
        }
        _ => (Registry::new(settings.keys.clone(), None, shared_limits.clone()), UsageSink::disabled(metrics.clone())),
    };
    let batches = store_handle.clone().map(|s| {
        crate::proxy::batch::BatchService::new(Arc::new(s) as Arc<dyn crate::batch::BatchStore>, settings.batch.clone(), instance.to_string())
    });
    let response_retention = settings.store.as_ref().and_then(|s| s.responses_retention);
    let parts = GatewayParts { world, metrics, pricing, registry, store: store_handle, usage, strategies, decision_log, response_retention, api_base: settings.server.api_base.clone(), shared_limits, batches };
    Ok((Gateway::from_parts(parts), feeds))
}

/// Runs the gateway until SIGTERM/SIGINT (both drain; see the module doc). Must be called outside any tokio runtime. With the
/// `config` file the settings came from, `SIGHUP` and `POST /admin/reload` reload it.
///
/// # Errors
/// See [`StartError`]; does not return once serving.
pub fn run(settings: Settings, config: Option<std::path::PathBuf>, upgrade: bool) -> Result<(), StartError> {
    // An upgrade takes the running process's sockets: its ports are busy by design.
    if !upgrade {
        check_bind(&settings)?;
    }
    let (gw, feeds) = gateway(&settings)?;
    let reloader = config.map(|path| {
        let r = reload::Reloader::new(path, &gw, settings.clone());
        // Set once, right after construction: nothing else sets it.
        let _ = gw.reloader.set(r.clone());
        r
    });
    // Lives until the process exits (run_forever does not return).
    let _plugin_watch = match (&settings.plugins.dir, settings.plugins.watch) {
        (Some(_), true) => Some(watch(&gw.strategies, crate::routing::wasm::watch::DEFAULT_DEBOUNCE).map_err(|e| StartError::Plugins(e.to_string()))?),
        _ => None,
    };
    let tags = gw.strategies.current().available().join(", ");
    tracing::info!(dir = ?settings.plugins.dir, strategies = %tags, "strategy plugins ready");
    let conf = ServerConf {
        threads: settings.server.threads,
        // Our drain service exits as soon as nothing is in flight; pingora's own sleep is the
        // upper bound.
        grace_period_seconds: Some(settings.server.grace_period.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: settings.server.upgrade_sock.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt { upgrade, ..Default::default() };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if upgrade {
        tracing::info!(socket = %settings.server.upgrade_sock.display(), "upgrade: waiting up to 5 s for the running process's listening sockets (send it SIGQUIT)");
    }
    // On an upgrade this receives the sockets, or exits the process when none arrive.
    server.bootstrap();
    if upgrade {
        tracing::info!("upgrade: listening sockets taken over; the previous process drains");
    }

    let mut api = guarded_service(&gw, Role::Api, "joule api");
    for addr in &settings.server.listen {
        api.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(PLAIN_L4_BUFFER));
    }
    if let Some(t) = &settings.server.tls {
        let certs = Arc::new(tls::Certificates::load(&t.certificates, gw.metrics.clone()).map_err(|e| StartError::Tls(e.to_string()))?);
        for addr in &t.listen {
            let settings = tls::listener_settings(&certs).map_err(|e| StartError::Tls(e.to_string()))?;
            api.add_listener(ListenerConfig::tcp(addr.to_string()).tls(settings).l4_buffer(TLS_L4_BUFFER));
        }
        server.add_service(background_service("tls certificates", tls::Renewal { certs, interval: t.reload_interval }));
    }
    server.add_service(api);

    if let Some(addr) = settings.server.admin_listen {
        let mut admin = guarded_service(&gw, Role::Admin, "joule admin");
        admin.threads = Some(1);
        admin.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(PLAIN_L4_BUFFER));
        server.add_service(admin);
    }
    server.add_service(background_service("probes", Prober { gateway: gw.clone(), health: settings.health.clone() }));
    server.add_service(background_service("energy", Energy { gateway: gw.clone(), feeds: std::sync::Mutex::new(Some(feeds)) }));
    if let Some(reloader) = reloader {
        server.add_service(background_service("reload", reload::OnHangup { reloader }));
    }
    server.add_service(background_service("drain", Drain { gateway: gw.clone(), grace: settings.server.grace_period }));
    server.add_service(background_service("ready", Ready));
    if let Some(shared) = gw.shared_limits.clone() {
        server.add_service(background_service("shared limits", SharedSync(shared)));
    }
    if gw.batches.is_some() {
        server.add_service(background_service("batches", Batches(gw.clone())));
    }

    for a in &settings.server.listen {
        tracing::info!("API listening on http://{a}/v1");
    }
    if let Some(t) = &settings.server.tls {
        for a in &t.listen {
            tracing::info!("API listening on https://{a}/v1 (HTTP/1.1, HTTP/2)");
        }
    }
    if let Some(a) = settings.server.admin_listen {
        tracing::info!("admin listening on http://{a} (/metrics, /healthz, /admin/…)");
    }
    server.run(RunArgs { shutdown_signal: Box::new(Signals(gw)) });
    std::process::exit(0)
}

/// A listening service for `role`, its connections behind the [`guard`].
fn guarded_service(gw: &Arc<Gateway>, role: Role, name: &str) -> Service<guard::Guarded<JouleApp>> {
    // Cleartext HTTP/2 (prior knowledge) beside HTTP/1.1 on plain listeners; TLS listeners
    // negotiate h2 by ALPN. The guard answers pingora's preface peek (see `guard`).
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = true;
    let app = JouleApp { gateway: gw.clone(), role, options };
    Service::new(name.to_string(), guard::Guarded { inner: Arc::new(app), gateway: gw.clone() })
}
