//! The loaded plugins: an immutable [`PluginSet`] (tag → plugin) behind `ArcSwap`, replaced
//! whole on every change, and the [`PluginRegistry`] that builds new sets from the plugins
//! directory, uploads and rollbacks.
//!
//! A decision takes one `Arc` of the current set and keeps it to the end, so in-flight
//! decisions finish with the versions they started with while a swap happens. Changes are
//! serialised by a mutex that the request path never touches.
//!
//! Directory rules: every regular `*.wasm` file not starting with `.` is a plugin; the tag
//! comes from its `describe()`. A file whose content (SHA-256) did not change is not reloaded.
//! A file that fails to load is reported and the version previously loaded from it stays in
//! service. Two files claiming one tag: the first by file name wins, the other is reported.
//! A deleted file's plugin is removed (built-in tags then rank natively).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::host::{Host, LoadError};
use super::plugin::{sha256_hex, Plugin, PluginSummary};
use crate::metrics::StrategyMetrics;
use crate::routing::tags::{self, Strategy, StrategySet, TagError};

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// An immutable set of loaded plugins, by tag.
pub struct PluginSet {
    /// Unique per set (process-wide), increasing.
    pub generation: u64,
    by_tag: HashMap<Arc<str>, Arc<Plugin>>,
    pub(crate) host: Arc<Host>,
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSet").field("generation", &self.generation).field("tags", &self.tags()).finish()
    }
}

impl PluginSet {
    /// An empty set: every built-in tag ranks natively.
    pub fn empty(host: Arc<Host>) -> PluginSet {
        PluginSet::from_plugins(host, Vec::new())
    }

    fn from_plugins(host: Arc<Host>, plugins: Vec<Arc<Plugin>>) -> PluginSet {
        let by_tag = plugins.into_iter().map(|p| (p.info.tag.clone(), p)).collect();
        PluginSet { generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed), by_tag, host }
    }

    /// The plugin serving `tag`.
    pub fn get(&self, tag: &str) -> Option<&Arc<Plugin>> {
        self.by_tag.get(tag)
    }

    /// Loaded tags, sorted.
    pub fn tags(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_tag.keys().map(|t| &**t).collect();
        v.sort_unstable();
        v
    }

    /// Plugins, sorted by tag.
    pub fn plugins(&self) -> Vec<&Arc<Plugin>> {
        let mut v: Vec<&Arc<Plugin>> = self.by_tag.values().collect();
        v.sort_by(|a, b| a.info.tag.cmp(&b.info.tag));
        v
    }

    pub(crate) fn contains_uid(&self, uid: u64) -> bool {
        self.by_tag.values().any(|p| p.uid == uid)
    }

    /// Every tag a client may use now: the loaded plugins' and the built-ins, sorted.
    pub fn available(&self) -> Vec<String> {
        let mut v = tags::builtin_tags();
        v.extend(self.by_tag.keys().map(|t| t.to_string()));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Refuses a client's strategy set naming a tag that is neither loaded nor built in.
    ///
    /// # Errors
    /// [`TagError::Unknown`] listing [`PluginSet::available`].
    pub fn check(&self, set: &StrategySet) -> Result<(), TagError> {
        set.check(|t| Strategy::from_tag(t).is_some() || self.by_tag.contains_key(t), || self.available())
    }
}

/// Why an upload or rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("no earlier version of `{0}` to roll back to")]
    NoHistory(String),
    #[error("cannot write to the plugins directory: {0}")]
    Io(String),
}

/// Outcome of one file during a directory scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum FileOutcome {
    Loaded { tag: String, version: String },
    Unchanged,
    Removed,
    Rejected { message: String },
}

/// What a directory scan did, per file name.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    pub files: BTreeMap<String, FileOutcome>,
}

impl ScanReport {
    /// True when the scan changed nothing.
    pub fn is_quiet(&self) -> bool {
        self.files.values().all(|o| *o == FileOutcome::Unchanged)
    }
}

struct State {
    /// File name → the plugin currently loaded from it.
    by_file: BTreeMap<String, Arc<Plugin>>,
    /// File name → (sha256, message) of content that failed to load (not retried until it changes).
    rejected: BTreeMap<String, (String, String)>,
    /// Tag → earlier versions, oldest first (for rollback).
    history: HashMap<String, Vec<Arc<Plugin>>>,
}

/// Most earlier versions kept per tag for rollback.
const HISTORY_DEPTH: usize = 8;

/// Owns the current [`PluginSet`] and every way of changing it.
pub struct PluginRegistry {
    host: Arc<Host>,
    dir: Option<PathBuf>,
    current: ArcSwap<PluginSet>,
    state: Mutex<State>,
    metrics: Option<StrategyMetrics>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry").field("dir", &self.dir).field("current", &self.current.load()).finish()
    }
}

impl PluginRegistry {
    /// An empty registry over `dir` (not scanned yet: call [`PluginRegistry::scan`]). Without a
    /// directory, uploads live in memory only.
    pub fn new(host: Arc<Host>, dir: Option<PathBuf>, metrics: Option<StrategyMetrics>) -> Arc<PluginRegistry> {
        Arc::new(PluginRegistry {
            current: ArcSwap::from_pointee(PluginSet::empty(host.clone())),
            host,
            dir,
            state: Mutex::new(State { by_file: BTreeMap::new(), rejected: BTreeMap::new(), history: HashMap::new() }),
            metrics,
        })
    }

    /// The host plugins run in.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The watched directory.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The current set: one atomic load; keep the `Arc` for the whole decision.
    pub fn current(&self) -> Arc<PluginSet> {
        self.current.load_full()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every change is built aside
        // and published at the end), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compiles and validates component bytes into a plugin (off the request path).
    ///
    /// # Errors
    /// [`LoadError`] with the reason.
    pub fn load(&self, bytes: &[u8], file: Option<String>) -> Result<Arc<Plugin>, LoadError> {
        let result = self.host.compile(bytes);
        if let Some(m) = &self.metrics {
            m.loads.with_label_values(&[if result.is_ok() { "ok" } else { "rejected" }]).inc();
        }
        let (pre, info) = result?;
        Ok(Arc::new(Plugin::new(info, Arc::from(bytes), pre, file, self.metrics.as_ref())))
    }

    /// Re-reads the plugins directory and swaps in the resulting set if anything changed.
    /// Safe against files being written, renamed in or deleted while it runs: a file caught
    /// half-written fails to load, keeps its previous version, and loads on the next scan.
    pub fn scan(&self) -> ScanReport {
        let mut report = ScanReport::default();
        let Some(dir) = &self.dir else { return report };
        let mut st = self.lock();
        let mut seen = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the plugins directory; keeping the loaded plugins");
                return report;
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".wasm") && !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            let Ok(bytes) = std::fs::read(dir.join(&name)) else { continue };
            seen.push(name.clone());
            let sha = sha256_hex(&bytes);
            if st.by_file.get(&name).is_some_and(|p| *p.sha256 == sha) || st.rejected.get(&name).is_some_and(|(s, _)| *s == sha) {
                report.files.insert(name, FileOutcome::Unchanged);
                continue;
            }
            match self.load(&bytes, Some(name.clone())) {
                Ok(p) => {
                    tracing::info!(file = %name, tag = %p.info.tag, version = %p.info.version, sha256 = %p.sha256, "strategy plugin loaded");
                    st.rejected.remove(&name);
                    report.files.insert(name.clone(), FileOutcome::Loaded { tag: p.info.tag.to_string(), version: p.info.version.to_string() });
                    if let Some(old) = st.by_file.insert(name, p) {
                        remember(&mut st, old);
                    }
                }
                Err(e) => {
                    let kept = st.by_file.get(&name).map(|p| format!(" (still serving {} {})", p.info.tag, p.info.version)).unwrap_or_default();
                    tracing::warn!(file = %name, error = %e, "strategy plugin rejected{kept}");
                    report.files.insert(name.clone(), FileOutcome::Rejected { message: e.to_string() });
                    st.rejected.insert(name, (sha, e.to_string()));
                }
            }
        }
        let gone: Vec<String> = st.by_file.keys().filter(|n| !seen.contains(n)).cloned().collect();
        for name in gone {
            if let Some(old) = st.by_file.remove(&name) {
                tracing::info!(file = %name, tag = %old.info.tag, "strategy plugin file removed; plugin unloaded");
                remember(&mut st, old);
            }
            report.files.insert(name, FileOutcome::Removed);
        }
        st.rejected.retain(|n, _| seen.contains(n));
        if !report.is_quiet() {
            self.publish(&st, &mut report);
        }
        report
    }

    /// Validates `bytes`, stores them in the plugins directory (written aside, then renamed
    /// into place) and swaps the new version in. A refused component changes nothing.
    ///
    /// # Errors
    /// [`RegistryError::Load`] for a bad component, [`RegistryError::Io`] if it cannot be stored.
    pub fn upload(&self, bytes: &[u8]) -> Result<PluginSummary, RegistryError> {
        let mut st = self.lock();
        let probe = self.load(bytes, None)?;
        let tag = probe.info.tag.clone();
        if let Some(same) = st.by_file.values().find(|p| p.info.tag == tag && p.sha256 == probe.sha256) {
            return Ok(same.summary());
        }
        let name = st
            .by_file
            .iter()
            .find(|(_, p)| p.info.tag == tag)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("{tag}.wasm"));
        self.store_file(&name, bytes)?;
        let plugin = Arc::new(Plugin::new(probe.info.clone(), probe.bytes.clone(), probe.pre.clone(), Some(name.clone()), self.metrics.as_ref()));
        tracing::info!(tag = %tag, version = %plugin.info.version, sha256 = %plugin.sha256, file = %name, "strategy plugin uploaded");
        st.rejected.remove(&name);
        if let Some(old) = st.by_file.insert(name, plugin.clone()) {
            remember(&mut st, old);
        }
        self.publish(&st, &mut ScanReport::default());
        Ok(plugin.summary())
    }

    /// Puts the previous version of `tag` back in service (and back in its file).
    ///
    /// # Errors
    /// [`RegistryError::NoHistory`] when there is none; I/O or (unlikely) load errors.
    pub fn rollback(&self, tag: &str) -> Result<PluginSummary, RegistryError> {
        let mut st = self.lock();
        let prev = st.history.get_mut(tag).and_then(Vec::pop).ok_or_else(|| RegistryError::NoHistory(tag.to_string()))?;
        let name = st
            .by_file
            .iter()
            .find(|(_, p)| &*p.info.tag == tag)
            .map(|(n, _)| n.clone())
            .or_else(|| prev.file.clone())
            .unwrap_or_else(|| format!("{tag}.wasm"));
        // Reloaded rather than reused, so the restored version starts with clean counters and
        // is enabled again.
        let plugin = match self.load(&prev.bytes, Some(name.clone())) {
            Ok(p) => p,
            Err(e) => {
                st.history.entry(tag.to_string()).or_default().push(prev);
                return Err(e.into());
            }
        };
        if let Err(e) = self.store_file(&name, &prev.bytes) {
            st.history.entry(tag.to_string()).or_default().push(prev);
            return Err(e);
        }
        tracing::info!(tag, version = %plugin.info.version, sha256 = %plugin.sha256, "strategy plugin rolled back");
        st.rejected.remove(&name);
        // The version rolled back from is dropped, not pushed: a rollback undoes.
        st.by_file.insert(name, plugin.clone());
        self.publish(&st, &mut ScanReport::default());
        Ok(plugin.summary())
    }

    /// Every loaded plugin's admin view, sorted by tag.
    pub fn list(&self) -> Vec<PluginSummary> {
        self.current().plugins().iter().map(|p| p.summary()).collect()
    }

    /// Files currently refused, with the reason (admin view).
    pub fn rejected(&self) -> BTreeMap<String, String> {
        self.lock().rejected.iter().map(|(n, (_, m))| (n.clone(), m.clone())).collect()
    }

    fn store_file(&self, name: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        write_atomically(&dir.join(name), bytes).map_err(|e| RegistryError::Io(e.to_string()))
    }

    /// Builds the set from `by_file` (first file by name wins a tag) and swaps it in.
    fn publish(&self, st: &State, report: &mut ScanReport) {
        let mut chosen: Vec<Arc<Plugin>> = Vec::new();
        for (name, p) in &st.by_file {
            if let Some(winner) = chosen.iter().find(|c| c.info.tag == p.info.tag) {
                let message = format!("tag `{}` is already served by {}", p.info.tag, winner.file.as_deref().unwrap_or("an upload"));
                tracing::warn!(file = %name, "strategy plugin ignored: {message}");
                report.files.insert(name.clone(), FileOutcome::Rejected { message });
                continue;
            }
            chosen.push(p.clone());
        }
        let set = PluginSet::from_plugins(self.host.clone(), chosen);
        if let Some(m) = &self.metrics {
            m.loaded.reset();
            for p in set.plugins() {
                m.loaded.with_label_values(&[&*p.info.tag, &*p.info.version, &p.sha256[..12]]).set(1);
            }
        }
        self.current.store(Arc::new(set));
    }
}

fn remember(st: &mut State, old: Arc<Plugin>) {
    let h = st.history.entry(old.info.tag.to_string()).or_default();
    h.push(old);
    if h.len() > HISTORY_DEPTH {
        h.remove(0);
    }
}

/// Writes beside the target, then renames into place, so a watcher never sees half a file
/// (uploads into the plugins directory; `joule plugin build` writes its output the same way).
///
/// # Errors
/// The write or the rename failed; the temporary file is removed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
