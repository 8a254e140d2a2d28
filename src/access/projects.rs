//! Projects and API keys as the request path sees them, and their management.
//!
//! The [`Registry`] holds an immutable [`Access`] snapshot behind `ArcSwap`: key hash →
//! principal (key, its limits, its project's policy). Requests do one `load()` and never touch
//! the database. The snapshot is rebuilt from the store
//! - at once after a change made through this instance (admin API);
//! - on `NOTIFY joule_changes` from another instance (PostgreSQL), typically within
//!   milliseconds;
//! - when the store's change sequence moved (checked every second: the safety net for missed
//!   notifications and for the CLI writing an SQLite file a gateway is serving from).
//!
//! If the store is unreachable the last snapshot stays in force.
//!
//! Keys from the config's `[[keys]]` are merged into every snapshot: read-only, id
//! `config:<name>`, no limits, and no project unless `project = "…"` names one (a key whose
//! project does not exist is left out, with a warning, rather than let in unrestricted).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use super::directory::{check_id, Directory, InvalidInput, ProjectChanges};
use super::keys::{KeyEntry, KeySnapshot, Principal};
use super::limits::{Budget, RateLimits};
use super::shared::SharedLimits;
use crate::catalog::Catalog;
use crate::routing::tags::StrategySet;
use crate::secret::KeyHash;

/// The durable side of keys and projects could not be read; the message says why (never a
/// credential). The current snapshot stays in force.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// Where the [`Registry`] reads keys, projects and other instances' spend: the store
/// implements it. Every call may wait on a database, so the registry makes them only off the
/// request path.
#[async_trait]
pub trait DirectorySource: Send + Sync + 'static {
    /// Every project and active key, at one change sequence.
    async fn directory(&self) -> Result<Directory, SourceError>;
    /// The current change sequence (cheap; polled every second).
    async fn change_seq(&self) -> Result<i64, SourceError>;
    /// Change notifications from other instances, if the source has them.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<()>>;
    /// Spend per project id since `since_ms` by every instance but `exclude_instance`.
    async fn spend_since(&self, since_ms: i64, exclude_instance: &str) -> Result<Vec<(String, f64)>, SourceError>;
    /// Runs a background task where the source's own I/O runs (never on a request worker).
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

/// Key ids of config keys start with this.
pub const CONFIG_KEY_PREFIX: &str = "config:";

/// What the request path needs of a project.
#[derive(Debug)]
pub struct ProjectPolicy {
    pub id: Arc<str>,
    pub name: Arc<str>,
    /// `None`: every model.
    allowed: Option<HashSet<String>>,
    pub default_strategy: Option<StrategySet>,
    pub limits: Option<Arc<RateLimits>>,
    pub budget: Option<Arc<Budget>>,
}

impl ProjectPolicy {
    /// Whether the project may use `model` (a base model id).
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(model))
    }

    /// The same policy without its rate limits (batch work: a separate limit applies); the
    /// budget is the same shared counter.
    pub fn without_rate_limits(&self) -> ProjectPolicy {
        ProjectPolicy {
            id: self.id.clone(),
            name: self.name.clone(),
            allowed: self.allowed.clone(),
            default_strategy: self.default_strategy.clone(),
            limits: None,
            budget: self.budget.clone(),
        }
    }
}

/// One consistent view of keys and projects.
#[derive(Debug, Default)]
pub struct Access {
    pub keys: KeySnapshot,
    /// By project id.
    pub projects: HashMap<String, Arc<ProjectPolicy>>,
    /// The store's change sequence this was built at.
    pub seq: i64,
}

fn carry_limits(old: Option<&Arc<RateLimits>>, id: &str, rpm: Option<u32>, tpm: Option<u32>, shared: Option<&Arc<SharedLimits>>) -> Option<Arc<RateLimits>> {
    match old {
        Some(o) if o.same_shape(rpm, tpm) => {
            o.set_rates(rpm, tpm);
            Some(o.clone())
        }
        _ => {
            let l = RateLimits::shared(id, rpm, tpm, shared)?;
            if let Some(s) = shared {
                for b in [&l.requests, &l.tokens].into_iter().flatten() {
                    s.register_bucket(b);
                }
            }
            Some(Arc::new(l))
        }
    }
}

impl Access {
    /// Builds a snapshot from the store's directory and the config keys, carrying bucket and
    /// budget states over from `old` by id.
    pub fn build(dir: &Directory, config_keys: &[KeyEntry], old: &Access, shared: Option<&Arc<SharedLimits>>) -> Access {
        let old_key_limits: HashMap<&str, &Arc<RateLimits>> =
            old.keys.principals().filter_map(|p| Some((&*p.key_id, p.limits.as_ref()?))).collect();
        let mut projects = HashMap::new();
        for p in &dir.projects {
            let prev = old.projects.get(&p.id);
            let budget = p.budget_usd.map(|usd| match prev.and_then(|o| o.budget.clone()) {
                Some(b) => {
                    b.set(usd, p.budget_period);
                    b
                }
                None => {
                    let b = Arc::new(Budget::of_project(&p.id, usd, p.budget_period));
                    if let Some(s) = shared {
                        s.register_budget(&b);
                    }
                    b
                }
            });
            let policy = ProjectPolicy {
                id: Arc::from(p.id.as_str()),
                name: Arc::from(p.name.as_str()),
                allowed: p.allowed_models.as_ref().map(|m| m.iter().cloned().collect()),
                default_strategy: p.default_strategy.as_deref().and_then(|s| StrategySet::parse_list(s).ok()),
                limits: carry_limits(prev.and_then(|o| o.limits.as_ref()), &format!("project:{}", p.id), p.rpm, p.tpm, shared),
                budget,
            };
            projects.insert(p.id.clone(), Arc::new(policy));
        }
        let by_name: HashMap<&str, &Arc<ProjectPolicy>> = projects.values().map(|p| (&*p.name, p)).collect();
        let mut principals = Vec::new();
        for k in config_keys {
            let mut principal = Principal::config_key(&k.name);
            if let Some(pname) = &k.project {
                match by_name.get(pname.as_str()) {
                    Some(p) => principal.project = Some((*p).clone()),
                    None => {
                        tracing::warn!(key = %k.name, project = %pname, "config key names an unknown project: key disabled");
                        continue;
                    }
                }
            }
            principals.push((k.hash, principal));
        }
        for k in &dir.keys {
            let Some(hash) = KeyHash::from_hex(&k.hash) else {
                tracing::warn!(key = %k.id, "stored key hash is malformed: key disabled");
                continue;
            };
            let project = match &k.project_id {
                Some(id) => match projects.get(id) {
                    Some(p) => Some(p.clone()),
                    None => continue,
                },
                None => None,
            };
            principals.push((
                hash,
                Principal {
                    key_name: Arc::from(k.name.as_str()),
                    key_id: Arc::from(k.id.as_str()),
                    limits: carry_limits(old_key_limits.get(k.id.as_str()).copied(), &format!("key:{}", k.id), k.rpm, k.tpm, shared),
                    project,
                },
            ));
        }
        Access { keys: KeySnapshot::from_principals(principals), projects, seq: dir.seq }
    }
}

/// The request path's source of keys and projects, and the management operations that keep
/// it current.
pub struct Registry {
    access: ArcSwap<Access>,
    source: Option<Arc<dyn DirectorySource>>,
    /// The config file's keys; replaced on a config reload.
    config_keys: ArcSwap<Vec<KeyEntry>>,
    /// The last directory read from the source, so a reload can rebuild the snapshot with
    /// new config keys without waiting on the database.
    directory: std::sync::Mutex<Arc<Directory>>,
    seq: AtomicI64,
    /// Serialises rebuilds so an older directory never replaces a newer one.
    rebuilding: tokio::sync::Mutex<()>,
    /// Where buckets and budgets are shared with other instances, if anywhere.
    shared: Option<Arc<SharedLimits>>,
}

impl Registry {
    /// A registry over the config keys and, if any, a durable source (call
    /// [`Registry::refresh`] before serving to load its keys), its limits shared through
    /// `shared` when given.
    pub fn new(config_keys: Vec<KeyEntry>, source: Option<Arc<dyn DirectorySource>>, shared: Option<Arc<SharedLimits>>) -> Arc<Self> {
        let access = Access::build(&Directory::default(), &config_keys, &Access::default(), shared.as_ref());
        let config_keys = ArcSwap::from_pointee(config_keys);
        Arc::new(Registry {
            access: ArcSwap::from_pointee(access),
            source,
            config_keys,
            directory: std::sync::Mutex::new(Arc::new(Directory::default())),
            seq: AtomicI64::new(-1),
            rebuilding: tokio::sync::Mutex::new(()),
            shared,
        })
    }

    /// The current snapshot (one `ArcSwap` load).
    pub fn load(&self) -> arc_swap::Guard<Arc<Access>> {
        self.access.load()
    }

    /// The keys from the config file (read-only).
    pub fn config_keys(&self) -> Arc<Vec<KeyEntry>> {
        self.config_keys.load_full()
    }

    /// Replaces the config file's keys (a config reload) and rebuilds the snapshot at once
    /// from the last directory read, carrying every bucket and budget over by id.
    pub fn set_config_keys(&self, keys: Vec<KeyEntry>) {
        let dir = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        self.config_keys.store(Arc::new(keys));
        let next = Access::build(&dir, &self.config_keys.load(), &self.access.load(), self.shared.as_ref());
        self.access.store(Arc::new(next));
    }

    /// Rebuilds the snapshot from the store now.
    ///
    /// # Errors
    /// The store is unreachable (the current snapshot stays).
    pub async fn refresh(&self) -> Result<(), SourceError> {
        let Some(store) = &self.source else { return Ok(()) };
        let _one = self.rebuilding.lock().await;
        let dir = Arc::new(store.directory().await?);
        let seq = dir.seq;
        {
            // Held only for the in-memory build: a reload's new config keys and a new
            // directory never overwrite each other.
            let mut last = self.directory.lock().unwrap_or_else(|e| e.into_inner());
            let next = Access::build(&dir, &self.config_keys.load(), &self.access.load(), self.shared.as_ref());
            tracing::debug!(seq, keys = next.keys.len(), projects = next.projects.len(), "access snapshot rebuilt");
            self.access.store(Arc::new(next));
            *last = dir;
        }
        self.seq.store(seq, Ordering::Release);
        Ok(())
    }

    /// Starts, where the source runs its I/O, the tasks that keep the snapshot current and
    /// sync budgets with other instances' spend every `budget_sync`.
    pub fn spawn_background(self: &Arc<Self>, instance: Arc<str>, budget_sync: Duration) {
        let Some(source) = self.source.clone() else { return };
        let me = self.clone();
        source.spawn(Box::pin(me.clone().watch()));
        source.spawn(Box::pin(async move { me.sync_budgets(instance, budget_sync).await }));
    }

    async fn watch(self: Arc<Self>) {
        let Some(store) = self.source.clone() else { return };
        let mut notes = store.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let notified = async {
                match notes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let must = tokio::select! {
                n = notified => {
                    if n.is_none() {
                        notes = None;
                    }
                    true
                }
                _ = tick.tick() => match store.change_seq().await {
                    Ok(seq) => seq != self.seq.load(Ordering::Acquire),
                    Err(_) => false,
                },
            };
            if must {
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "cannot refresh keys and projects; keeping the current snapshot");
                }
            }
        }
    }

    async fn sync_budgets(&self, instance: Arc<str>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sync_budgets_once(&instance).await {
                tracing::debug!(error = %e, "budget sync failed; using the last known spend");
            }
        }
    }

    /// Reads other instances' spend in each budget's current period from the store.
    ///
    /// # Errors
    /// The store is unreachable (budgets keep the last known spend).
    pub async fn sync_budgets_once(&self, instance: &str) -> Result<(), SourceError> {
        let Some(store) = &self.source else { return Ok(()) };
        let access = self.access.load_full();
        let now = crate::clock::now_ms();
        let mut starts: Vec<i64> =
            access.projects.values().filter_map(|p| p.budget.as_ref().map(|b| b.period_start(now))).collect();
        starts.sort_unstable();
        starts.dedup();
        for start in starts {
            let spent: HashMap<String, f64> = store.spend_since(start, instance).await?.into_iter().collect();
            for p in access.projects.values() {
                if let Some(b) = p.budget.as_ref().filter(|b| b.period_start(now) == start) {
                    b.sync_others(start, spent.get(&*p.id).copied().unwrap_or(0.0));
                }
            }
        }
        Ok(())
    }
}

/// Checks that every allowed model of `changes` is in the catalog.
///
/// # Errors
/// [`InvalidInput`] naming the first unknown model.
pub fn check_models(catalog: &Catalog, changes: &ProjectChanges) -> Result<(), InvalidInput> {
    if let Some(Some(models)) = &changes.allowed_models {
        for m in models {
            check_id("allowed_models", m)?;
            if catalog.model(m).is_none() {
                return Err(InvalidInput(format!("allowed_models: unknown model `{m}`")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{ApiKey, BudgetPeriod, Project};

    fn project(id: &str, rpm: Option<u32>) -> Project {
        Project {
            id: id.into(),
            name: format!("n-{id}"),
            allowed_models: Some(vec!["a".into()]),
            default_strategy: Some("latency".into()),
            rpm,
            tpm: None,
            budget_usd: Some(1.0),
            budget_period: BudgetPeriod::Day,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn key(id: &str, secret: &str, project: Option<&str>) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: id.into(),
            prefix: "sk".into(),
            project_id: project.map(str::to_string),
            project: None,
            rpm: Some(5),
            tpm: None,
            created_at: 0,
            last_used_at: None,
            revoked_at: None,
            hash: KeyHash::of(secret).to_hex(),
        }
    }

    #[test]
    fn snapshot_merges_config_keys_and_carries_limit_state() {
        let dir = Directory {
            seq: 3,
            projects: vec![project("p1", Some(10))],
            keys: vec![key("key_1", "sk-1", Some("p1")), key("key_2", "sk-2", Some("gone"))],
        };
        let cfg = vec![
            KeyEntry { name: "ops".into(), hash: KeyHash::of("sk-ops"), project: None },
            KeyEntry { name: "bad".into(), hash: KeyHash::of("sk-bad"), project: Some("nope".into()) },
            KeyEntry { name: "team".into(), hash: KeyHash::of("sk-team"), project: Some("n-p1".into()) },
        ];
        let a = Access::build(&dir, &cfg, &Access::default(), None);
        let p = a.keys.authenticate(Some(b"Bearer sk-1")).unwrap();
        assert_eq!(&*p.key_id, "key_1");
        assert!(p.may_use("a") && !p.may_use("b"));
        assert_eq!(p.default_strategy(&StrategySet::default_price()).to_string(), "latency");
        assert!(a.keys.authenticate(Some(b"Bearer sk-2")).is_err(), "key of a missing project is out");
        assert!(a.keys.authenticate(Some(b"Bearer sk-bad")).is_err(), "config key of unknown project is out");
        let ops = a.keys.authenticate(Some(b"Bearer sk-ops")).unwrap();
        assert_eq!(&*ops.key_id, "config:ops");
        assert!(ops.may_use("anything"));
        let team = a.keys.authenticate(Some(b"Bearer sk-team")).unwrap();
        assert_eq!(team.project.as_ref().map(|p| &*p.name), Some("n-p1"));

        // A rebuild keeps the same bucket and budget objects.
        let b = Access::build(&dir, &cfg, &a, None);
        let p2 = b.keys.authenticate(Some(b"Bearer sk-1")).unwrap();
        assert!(Arc::ptr_eq(p.limits.as_ref().unwrap(), p2.limits.as_ref().unwrap()));
        let (pa, pb) = (p.project.unwrap(), p2.project.unwrap());
        assert!(Arc::ptr_eq(pa.limits.as_ref().unwrap(), pb.limits.as_ref().unwrap()));
        assert!(Arc::ptr_eq(pa.budget.as_ref().unwrap(), pb.budget.as_ref().unwrap()));
    }
}
