//! Server wiring: the pingora `Server`, its API and admin listeners (cleartext and rustls
//! TLS with HTTP/2 by ALPN), and graceful shutdown.
//!
//! Shutdown: on SIGTERM pingora stops accepting and signals its services; the drain service
//! here then waits until no request is in flight, or the configured grace period has passed,
//! and exits. (Pingora alone would always sleep the whole grace period — 300 s by default.)

pub mod adapter;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::proxy::{Gateway, World};
use crate::routing::wasm::explain::DecisionLog;
use crate::routing::wasm::{watch, Host, PluginRegistry};
use adapter::{JouleProxy, Role};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("upstream clients: {0}")]
    Clients(#[from] crate::upstream::client::ClientError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("TLS listener: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Plugins(String),
}

/// Binds and releases every configured address, so that a port in use or a foreign address
/// is reported as a start-up error: pingora itself panics in a service thread on bind failure.
fn check_bind(settings: &Settings) -> Result<(), StartError> {
    let tls = settings.server.tls.iter().flat_map(|t| t.listen.iter());
    for &addr in settings.server.listen.iter().chain(tls).chain(settings.server.admin_listen.iter()) {
        std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    }
    Ok(())
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
        tracing::info!(in_flight = self.gateway.in_flight(), "shutdown complete");
        std::process::exit(0);
    }
}

/// Builds the gateway state from settings.
///
/// # Errors
/// See [`StartError`].
pub fn gateway(settings: &Settings) -> Result<Arc<Gateway>, StartError> {
    let metrics = Metrics::new()?;
    let host = Host::new(settings.plugins.host.clone()).map_err(|e| StartError::Plugins(e.to_string()))?;
    let strategies = PluginRegistry::new(host, settings.plugins.dir.clone(), Some(metrics.strategy.clone()));
    // Rejected files are logged by the scan; the gateway starts anyway (native fallback).
    strategies.scan();
    let log = match &settings.plugins.decision_log {
        Some(path) => Some(
            DecisionLog::open(path, Some(metrics.strategy.clone()))
                .map_err(|e| StartError::Plugins(format!("decision log {}: {e}", path.display())))?,
        ),
        None => None,
    };
    Ok(Gateway::new(World::new(settings)?, metrics, strategies, log))
}

/// Runs the gateway until SIGTERM/SIGINT. Must be called outside any tokio runtime.
///
/// # Errors
/// See [`StartError`]; does not return once serving.
pub fn run(settings: Settings) -> Result<(), StartError> {
    check_bind(&settings)?;
    let gw = gateway(&settings)?;
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
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut api = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        JouleProxy { gateway: gw.clone(), role: Role::Api },
        "joule api",
    );
    for addr in &settings.server.listen {
        api.add_tcp(&addr.to_string());
    }
    if let Some(t) = &settings.server.tls {
        for addr in &t.listen {
            let mut tls = pingora::listeners::tls::TlsSettings::intermediate(
                &t.cert_file.to_string_lossy(),
                &t.key_file.to_string_lossy(),
            )
            .map_err(|e| StartError::Tls(e.to_string()))?;
            tls.enable_h2();
            api.add_tls_with_settings(&addr.to_string(), None, tls);
        }
    }
    server.add_service(api);

    if let Some(addr) = settings.server.admin_listen {
        let mut admin = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            JouleProxy { gateway: gw.clone(), role: Role::Admin },
            "joule admin",
        );
        admin.threads = Some(1);
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    server.add_service(background_service("drain", Drain { gateway: gw, grace: settings.server.grace_period }));

    for a in &settings.server.listen {
        tracing::info!("API listening on http://{a}/v1");
    }
    if let Some(t) = &settings.server.tls {
        for a in &t.listen {
            tracing::info!("API listening on https://{a}/v1 (HTTP/1.1, HTTP/2)");
        }
    }
    if let Some(a) = settings.server.admin_listen {
        tracing::info!("admin listening on http://{a} (/metrics, /healthz, /admin/plugins)");
    }
    server.run_forever();
}
