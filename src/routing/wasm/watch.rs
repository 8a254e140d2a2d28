//! Watches the plugins directory and rescans it ([`PluginRegistry::scan`]) once changes
//! settle. Every event — a file renamed in, an editor's save (temporary files, backups,
//! in-place writes), a deletion — just schedules a rescan, and the rescan decides from the
//! directory's contents, so no event sequence can leave a half-written file in service
//! (it fails validation and the old version stays until the write completes).

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use super::registry::PluginRegistry;

/// Quiet time after the last event before rescanning. Default 200 ms.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch the plugins directory {dir}: {message}")]
pub struct WatchError {
    pub dir: String,
    pub message: String,
}

/// A running watch; dropping it stops the watch and its thread.
pub struct PluginWatcher {
    _watcher: RecommendedWatcher,
}

impl std::fmt::Debug for PluginWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginWatcher")
    }
}

/// Starts watching `registry`'s directory. Call [`PluginRegistry::scan`] once first for
/// the initial load.
///
/// # Errors
/// The registry has no directory, or the OS refuses the watch.
pub fn watch(registry: &Arc<PluginRegistry>, debounce: Duration) -> Result<PluginWatcher, WatchError> {
    let dir = registry.dir().ok_or_else(|| WatchError { dir: "-".into(), message: "no plugins directory configured".into() })?;
    let err = |e: notify::Error| WatchError { dir: dir.display().to_string(), message: e.to_string() };
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Errors (e.g. an overflowed event queue) also warrant a rescan.
        if ev.map_or(true, |e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .map_err(err)?;
    watcher.watch(Path::new(dir), RecursiveMode::NonRecursive).map_err(err)?;
    let registry = Arc::downgrade(registry);
    std::thread::Builder::new()
        .name("joule-plugin-watch".into())
        .spawn(move || {
            // Ends when the watcher (the only sender) is dropped.
            while rx.recv().is_ok() {
                while rx.recv_timeout(debounce).is_ok() {}
                let Some(registry) = registry.upgrade() else { return };
                let report = registry.scan();
                if !report.is_quiet() {
                    tracing::info!(changes = ?report.files, "plugins directory rescanned");
                }
            }
        })
        .map_err(|e| WatchError { dir: dir.display().to_string(), message: e.to_string() })?;
    Ok(PluginWatcher { _watcher: watcher })
}
