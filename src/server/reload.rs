//! Config reload: `SIGHUP` and `POST /admin/reload` re-read the config file, validate it and,
//! if it is valid and changes nothing restart-only (see `config::reload`), swap in a new
//! world (catalog, clients, timeouts, telemetry settings, default strategy, admin token), the
//! pricing engine's catalog and the config keys, while requests are in flight: a request
//! keeps the world it loaded at its start, telemetry carries over by deployment id, and
//! limiter buckets and budgets by key and project id. On failure the old config stays in
//! force and every problem is logged and reported. Each outcome is counted in
//! `joule_config_reloads_total{result}`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{self, Settings};
use crate::proxy::{Gateway, Reload, ReloadReport, World};

/// Reloads one gateway from its config file.
pub struct Reloader {
    path: PathBuf,
    gateway: Weak<Gateway>,
    /// The settings in force; held while a reload runs, so reloads never interleave.
    current: Mutex<Settings>,
    /// The settings at start: what the sections a reload does not swap still run on.
    started: Settings,
}

impl Reloader {
    /// A reloader for `gateway`, started from `settings` read from `path`.
    pub fn new(path: PathBuf, gateway: &Arc<Gateway>, settings: Settings) -> Arc<Self> {
        Arc::new(Reloader { path, gateway: Arc::downgrade(gateway), current: Mutex::new(settings.clone()), started: settings })
    }

    fn try_reload(&self, gw: &Gateway, current: &mut Settings) -> Result<Vec<String>, Vec<String>> {
        let new = config::load(&self.path).map_err(|e| e.problems.iter().map(|p| format!("{}: {}", p.path, p.message)).collect::<Vec<_>>())?;
        let refused = config::reload::refused_changes(current, &new);
        if !refused.is_empty() {
            return Err(refused);
        }
        let world = World::new(&new.world(), Some(&gw.world.load())).map_err(|e| vec![format!("upstream clients: {e}")])?;
        // The engine first: until the world swaps, requests on the old catalog get its base
        // quotes (the book checks the catalog it was built for), never another model's.
        gw.pricing.set_catalog(&new.catalog);
        gw.world.store(Arc::new(world));
        gw.registry.set_config_keys(new.keys.clone());
        let notes = config::reload::restart_required(&self.started, &new);
        *current = new;
        Ok(notes)
    }
}

impl Reload for Reloader {
    fn reload(&self) -> ReloadReport {
        let Some(gw) = self.gateway.upgrade() else { return ReloadReport::default() };
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match self.try_reload(&gw, &mut current) {
            Ok(restart_required) => {
                gw.metrics.config_reloads.with_label_values(&["success"]).inc();
                let models = current.catalog.models.len();
                tracing::info!(config = %self.path.display(), models, restart_required = ?restart_required, "config reloaded");
                ReloadReport { applied: true, problems: Vec::new(), restart_required }
            }
            Err(problems) => {
                gw.metrics.config_reloads.with_label_values(&["failure"]).inc();
                tracing::error!(config = %self.path.display(), problems = ?problems, "config reload refused; the running config stays in force");
                ReloadReport { applied: false, problems, restart_required: Vec::new() }
            }
        }
    }
}

/// Reloads on every `SIGHUP` until shutdown.
pub struct OnHangup {
    pub reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for OnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: reload only through POST /admin/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the config");
                    let r = self.reloader.clone();
                    // Reading files and building clients blocks: off the runtime's workers.
                    let _ = tokio::task::spawn_blocking(move || r.reload()).await;
                }
            }
        }
    }
}
