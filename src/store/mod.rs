//! Durable state behind one interface: projects, API keys (hashed), usage records, the
//! price history, kept responses and batches, in SQLite (embedded default) or PostgreSQL
//! (several gateway instances sharing state).
//!
//! [`Store`] owns a dedicated tokio runtime on its own thread (`joule-store`): every
//! operation runs there — SQLite calls on that runtime's blocking pool, PostgreSQL over pooled
//! connections — so no database call ever runs on a pingora worker or on the request path.
//! Callers on any runtime simply await the result.
//!
//! Both backends apply the same migrations ([`schema`]) at open, each in one transaction
//! under a lock (SQLite `BEGIN IMMEDIATE`, PostgreSQL advisory lock), so several instances
//! starting at once migrate exactly once. Every change to projects or keys bumps a change
//! sequence in the same transaction (and, on PostgreSQL, sends `NOTIFY joule_changes`), which
//! is how running gateways learn that their in-memory snapshot is stale.
//!
//! Every write is one transaction: a refused request (duplicate name, unknown project, …)
//! leaves nothing behind. All values reach SQL as bound parameters, never as SQL text.
//!
//! The batch API's files, batches and per-line state (with row leases, so several instances
//! share a batch's work) are [`crate::batch::BatchStore`] for [`Store`], in `batch.rs`.

mod batch;
mod history;
pub mod postgres;
mod rows;
pub mod schema;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::pricing::history::Frame;
use crate::secret::Secret;
use crate::clock::now_ms;
use crate::access::{DirectorySource, SourceError};
use crate::access::directory::clip;
pub use crate::access::{
    check_id, check_name, generate_key, random_hex, ApiKey, BudgetPeriod, Directory, InvalidInput, NewKey, Project, ProjectChanges, KEY_PREFIX, MAX_ID, MAX_NAME,
};
use crate::usage::{UsageRecord, UsageSettings, UsageStore, WriteError};

/// Most records one usage query returns.
pub const MAX_PAGE: u32 = 10_000;

/// Why a store operation failed. Maps to one HTTP status on the admin API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// Bad input (400).
    #[error("{0}")]
    Invalid(String),
    /// A name already in use (409).
    #[error("{0}")]
    Duplicate(String),
    /// An unknown project or key (404).
    #[error("{0}")]
    NotFound(String),
    /// The operation contradicts the current state (409), e.g. deleting a project with keys.
    #[error("{0}")]
    Conflict(String),
    /// The database cannot be reached right now (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database refused in a way the gateway did not expect (500).
    #[error("store error: {0}")]
    Backend(String),
    /// The database was migrated by a newer joule.
    #[error("the database schema is version {found}, newer than this joule understands ({known})")]
    Schema { found: i64, known: i64 },
}

impl From<InvalidInput> for StoreError {
    fn from(e: InvalidInput) -> Self {
        StoreError::Invalid(e.0)
    }
}

impl StoreError {
    /// HTTP status for the admin API.
    pub fn status(&self) -> u16 {
        match self {
            StoreError::Invalid(_) => 400,
            StoreError::NotFound(_) => 404,
            StoreError::Duplicate(_) | StoreError::Conflict(_) => 409,
            StoreError::Unavailable(_) => 503,
            StoreError::Backend(_) | StoreError::Schema { .. } => 500,
        }
    }
}

/// Which backend, with its location. Validated from `[store]` in the config.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreLocation {
    /// An SQLite file, created if missing.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection string (URL or `key=value` form); it may carry a password.
    Postgres(Secret<String>),
}

/// Where projects, keys and usage records are kept, and how usage is written. Validated from
/// `[store]` in the config; no store at all is `backend = "none"`.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub location: StoreLocation,
    pub usage: UsageSettings,
    /// How often budgets read other instances' spend. Default 2 s.
    pub budget_sync: std::time::Duration,
    /// How long Responses API responses are kept (`store: true`, the default) for `GET` and
    /// `previous_response_id`. Default 30 days; `None` (`responses_retention_days = 0`): none
    /// are kept.
    pub responses_retention: Option<std::time::Duration>,
}

/// Which usage records a query selects. Newest first.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub project_id: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub status: Option<u16>,
    /// Inclusive lower bound, unix ms.
    pub since_ms: Option<i64>,
    /// Exclusive upper bound, unix ms.
    pub until_ms: Option<i64>,
    /// Continue after this record (from a previous page's `next_cursor`).
    pub after: Option<Cursor>,
    /// Page size, 1..=[`MAX_PAGE`].
    pub limit: u32,
}

/// A position in the newest-first order of usage records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub ts_ms: i64,
    pub id: String,
}

impl Cursor {
    /// The opaque text form (`<ts>.<id>`).
    pub fn encode(&self) -> String {
        format!("{}.{}", self.ts_ms, self.id)
    }

    /// Parses [`Cursor::encode`]'s output.
    ///
    /// # Errors
    /// Anything else.
    pub fn decode(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::Invalid("cursor: not a cursor returned by a previous page".into());
        let (ts, id) = s.split_once('.').ok_or_else(bad)?;
        let ts_ms = ts.parse().map_err(|_| bad())?;
        check_id("cursor", id).map_err(|_| bad())?;
        Ok(Cursor { ts_ms, id: id.to_string() })
    }
}

/// One page of usage records.
#[derive(Debug, Clone, Serialize)]
pub struct UsagePage {
    pub records: Vec<UsageRecord>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Totals over the records a filter selects (cursor and limit ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageSummary {
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
}

/// The totals of one time bucket of a usage series.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageBucket {
    /// Start of the bucket, unix ms (a multiple of the step).
    pub t: i64,
    #[serde(flatten)]
    pub totals: UsageSummary,
}

/// Most buckets one usage series may have.
pub const MAX_BUCKETS: i64 = 1000;

/// A response of the Responses API kept for `GET /v1/responses/{id}` and follow-ups
/// (`previous_response_id`).
#[derive(Debug, Clone, PartialEq)]
pub struct KeptResponse {
    /// `resp_…`.
    pub id: String,
    /// Who may read it: `project:<id>` (every key of the project), or `key:<id>` for a key
    /// outside any project.
    pub owner: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// The response object (JSON).
    pub object: String,
    /// The conversation so far as chat messages (a JSON array).
    pub conversation: String,
}

/// What a backend implements. Everything runs on the store runtime.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    async fn migrate(&self) -> Result<(), StoreError>;
    async fn change_seq(&self) -> Result<i64, StoreError>;
    async fn directory(&self) -> Result<Directory, StoreError>;
    async fn insert_project(&self, p: &Project) -> Result<(), StoreError>;
    async fn update_project(&self, name: &str, changes: &ProjectChanges, now: i64) -> Result<Project, StoreError>;
    async fn delete_project(&self, name: &str) -> Result<(), StoreError>;
    async fn projects(&self) -> Result<Vec<Project>, StoreError>;
    async fn project(&self, name: &str) -> Result<Option<Project>, StoreError>;
    async fn insert_key(&self, key: &ApiKey, project: Option<&str>) -> Result<ApiKey, StoreError>;
    async fn keys(&self, project: Option<&str>) -> Result<Vec<ApiKey>, StoreError>;
    async fn revoke_key(&self, id_or_name: &str, now: i64) -> Result<ApiKey, StoreError>;
    async fn touch_keys(&self, used: &[(String, i64)]) -> Result<(), StoreError>;
    async fn insert_usage(&self, records: Arc<Vec<UsageRecord>>) -> Result<(), StoreError>;
    async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError>;
    async fn usage_summary(&self, filter: &UsageFilter) -> Result<UsageSummary, StoreError>;
    /// Totals per `step_ms` bucket of `ts_ms`, oldest first, buckets without records left out.
    async fn usage_series(&self, filter: &UsageFilter, step_ms: i64) -> Result<Vec<UsageBucket>, StoreError>;
    async fn spend_since(&self, since_ms: i64, exclude_instance: &str) -> Result<Vec<(String, f64)>, StoreError>;
    /// Inserts price history rows ([`rows::price_rows`]) in one transaction.
    async fn insert_prices(&self, rows: Vec<[rows::Param; schema::PRICE_NCOLS]>) -> Result<(), StoreError>;
    async fn prices_between(&self, since_ms: i64, until_ms: i64) -> Result<Vec<Frame>, StoreError>;
    async fn delete_prices_before(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Keeps a response (expired ones are deleted in the same call).
    async fn insert_response(&self, r: &KeptResponse) -> Result<(), StoreError>;
    /// A kept response's object and conversation, for its owner, if not expired.
    async fn response(&self, id: &str, owner: &str, now_ms: i64) -> Result<Option<(String, String)>, StoreError>;
    /// Deletes a kept response of the owner; whether there was one.
    async fn delete_response(&self, id: &str, owner: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Stores a batch file and its content.
    async fn insert_file(&self, f: crate::batch::FileObject, content: String) -> Result<(), StoreError>;
    /// Files' metadata by a query of [`batch`] (`SELECT {FILE_COLS} FROM batch_files …`).
    async fn files(&self, sql: String, ps: Vec<rows::Param>) -> Result<Vec<crate::batch::FileObject>, StoreError>;
    /// A file's content, for its owner.
    async fn file_content(&self, owner: &str, id: &str) -> Result<Option<String>, StoreError>;
    /// Stores a batch and its lines (pending) in one transaction.
    async fn insert_batch(&self, b: crate::batch::BatchRecord, lines: Vec<crate::batch::NewLine>) -> Result<(), StoreError>;
    /// Batches with their line totals and sites: the three reads in one read transaction.
    async fn batches(&self, reads: batch::BatchReads) -> Result<Vec<crate::batch::BatchRecord>, StoreError>;
    /// Runs one `UPDATE` or `DELETE` on the batch tables (SQL from [`schema`] or [`batch`],
    /// values bound); the number of rows changed.
    async fn update(&self, sql: String, ps: Vec<rows::Param>) -> Result<u64, StoreError>;
    /// Leases up to `n` lines (see [`crate::batch::BatchStore::lease_lines`]), in any order.
    async fn lease_lines(&self, batch_id: &str, n: u32, instance: &str, now_ms: i64, until_ms: i64) -> Result<Vec<crate::batch::LeasedLine>, StoreError>;
    /// Gives lines leased by `instance` back, in one transaction.
    async fn release_lines(&self, batch_id: &str, lines: &[i64], instance: &str) -> Result<(), StoreError>;
    /// A batch's finished lines, in line order.
    async fn finished_lines(&self, batch_id: &str) -> Result<Vec<crate::batch::FinishedLine>, StoreError>;
    /// A batch's unfinished lines' numbers and custom ids, in line order.
    async fn unfinished_lines(&self, batch_id: &str) -> Result<Vec<(i64, String)>, StoreError>;
    /// A stream of change notifications from other instances, if the backend has one.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<()>>;
}

/// The durable store. Cheap to clone; every clone shares the backend and its runtime.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    rt: tokio::runtime::Handle,
    kind: &'static str,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.kind)
    }
}

impl Store {
    /// Opens (creating and migrating) the store. Call outside any async context or from
    /// any runtime: the work happens on the store's own runtime.
    ///
    /// # Errors
    /// Cannot create the runtime, open the file / reach the server, or migrate.
    pub fn open(location: &StoreLocation) -> Result<Store, StoreError> {
        let rt = store_runtime()?;
        let (backend, kind): (Arc<dyn Backend>, _) = match location {
            StoreLocation::Sqlite(path) => (Arc::new(sqlite::SqliteStore::open(path)?), "sqlite"),
            StoreLocation::Postgres(url) => (Arc::new(postgres::PgStore::new(url.expose())?), "postgres"),
        };
        let store = Store { backend, rt, kind };
        let b = store.backend.clone();
        store.wait(store.spawn(async move { b.migrate().await }))?;
        Ok(store)
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Runs `fut` on the store runtime and waits for it from a thread outside any runtime
    /// (the CLI, start-up).
    pub fn wait<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// Runs `fut` on the store runtime.
    pub fn spawn_task<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(fut)
    }

    async fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.rt.spawn(fut).await.map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Keeps a response (and drops expired ones).
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn insert_response(&self, r: KeptResponse) -> Result<(), StoreError> {
        let b = self.backend.clone();
        self.spawn(async move { b.insert_response(&r).await }).await
    }

    /// A kept response's object and conversation, for `owner`, unless expired at `now_ms`.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn response(&self, id: &str, owner: &str, now_ms: i64) -> Result<Option<(String, String)>, StoreError> {
        let (b, id, owner) = (self.backend.clone(), id.to_string(), owner.to_string());
        self.spawn(async move { b.response(&id, &owner, now_ms).await }).await
    }

    /// Deletes a kept response of `owner`; whether there was one.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn delete_response(&self, id: &str, owner: &str, now_ms: i64) -> Result<bool, StoreError> {
        let (b, id, owner) = (self.backend.clone(), id.to_string(), owner.to_string());
        self.spawn(async move { b.delete_response(&id, &owner, now_ms).await }).await
    }

    /// The change sequence: bumped by every change to projects or keys.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn change_seq(&self) -> Result<i64, StoreError> {
        let b = self.backend.clone();
        self.spawn(async move { b.change_seq().await }).await
    }

    /// Every project and every active key, read consistently.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn directory(&self) -> Result<Directory, StoreError> {
        let b = self.backend.clone();
        self.spawn(async move { b.directory().await }).await
    }

    /// Change notifications from other instances (PostgreSQL `LISTEN`); `None` for SQLite.
    pub fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        let b = self.backend.clone();
        let _guard = self.rt.enter();
        b.subscribe()
    }

    /// Creates a project named `name` with `changes` applied to the defaults.
    ///
    /// # Errors
    /// Invalid fields, a duplicate name, or the database.
    pub async fn create_project(&self, name: &str, changes: ProjectChanges) -> Result<Project, StoreError> {
        check_name("name", name)?;
        changes.validate()?;
        let now = now_ms();
        let mut p = Project {
            id: format!("proj_{}", random_hex(8)),
            name: name.to_string(),
            allowed_models: None,
            default_strategy: None,
            rpm: None,
            tpm: None,
            budget_usd: None,
            budget_period: BudgetPeriod::default(),
            created_at: now,
            updated_at: now,
        };
        changes.apply(&mut p);
        p.name = name.to_string();
        let b = self.backend.clone();
        let row = p.clone();
        self.spawn(async move { b.insert_project(&row).await }).await?;
        Ok(p)
    }

    /// Every project, by name.
    ///
    /// # Errors
    /// The database.
    pub async fn projects(&self) -> Result<Vec<Project>, StoreError> {
        let b = self.backend.clone();
        self.spawn(async move { b.projects().await }).await
    }

    /// One project by name.
    ///
    /// # Errors
    /// Unknown project, or the database.
    pub async fn project(&self, name: &str) -> Result<Project, StoreError> {
        check_name("project", name)?;
        let b = self.backend.clone();
        let n = name.to_string();
        self.spawn(async move { b.project(&n).await })
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no project named `{name}`")))
    }

    /// Changes a project.
    ///
    /// # Errors
    /// Invalid fields, unknown project, a duplicate new name, or the database.
    pub async fn update_project(&self, name: &str, changes: ProjectChanges) -> Result<Project, StoreError> {
        check_name("project", name)?;
        changes.validate()?;
        let b = self.backend.clone();
        let n = name.to_string();
        self.spawn(async move { b.update_project(&n, &changes, now_ms()).await }).await
    }

    /// Deletes a project that has no active keys. Its usage records stay.
    ///
    /// # Errors
    /// Unknown project, active keys left, or the database.
    pub async fn delete_project(&self, name: &str) -> Result<(), StoreError> {
        check_name("project", name)?;
        let b = self.backend.clone();
        let n = name.to_string();
        self.spawn(async move { b.delete_project(&n).await }).await
    }

    /// Creates a key and returns it with the secret, which is not stored and cannot be shown
    /// again.
    ///
    /// # Errors
    /// Invalid name or limits, a name used by another active key, unknown project, the database.
    pub async fn create_key(&self, new: NewKey) -> Result<(ApiKey, Secret<String>), StoreError> {
        check_name("name", &new.name)?;
        if let Some(p) = &new.project {
            check_name("project", p)?;
        }
        for (field, v) in [("rpm", new.rpm), ("tpm", new.tpm)] {
            if v == Some(0) {
                return Err(StoreError::Invalid(format!("{field}: must be at least 1 (omit it for no limit)")));
            }
        }
        let secret = generate_key();
        let key = ApiKey {
            id: format!("key_{}", random_hex(8)),
            name: new.name,
            prefix: secret.expose().chars().take(KEY_PREFIX.len() + 8).collect(),
            project_id: None,
            project: None,
            rpm: new.rpm,
            tpm: new.tpm,
            created_at: now_ms(),
            last_used_at: None,
            revoked_at: None,
            hash: crate::secret::KeyHash::of(secret.expose()).to_hex(),
        };
        let b = self.backend.clone();
        let project = new.project;
        let stored = self.spawn(async move { b.insert_key(&key, project.as_deref()).await }).await?;
        Ok((stored, secret))
    }

    /// Every key (revoked ones included), optionally of one project (by name).
    ///
    /// # Errors
    /// Unknown project, or the database.
    pub async fn keys(&self, project: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        if let Some(p) = project {
            self.project(p).await?;
        }
        let b = self.backend.clone();
        let p = project.map(str::to_string);
        self.spawn(async move { b.keys(p.as_deref()).await }).await
    }

    /// Revokes an active key, by id or name.
    ///
    /// # Errors
    /// No such active key, or the database.
    pub async fn revoke_key(&self, id_or_name: &str) -> Result<ApiKey, StoreError> {
        check_id("key", id_or_name)?;
        let b = self.backend.clone();
        let k = id_or_name.to_string();
        self.spawn(async move { b.revoke_key(&k, now_ms()).await }).await
    }

    /// Records when keys were last used (batched by the usage writer).
    ///
    /// # Errors
    /// The database.
    pub async fn touch_keys(&self, used: Vec<(String, i64)>) -> Result<(), StoreError> {
        let b = self.backend.clone();
        self.spawn(async move { b.touch_keys(&used).await }).await
    }

    /// Inserts usage records in one transaction; records whose id is already stored are
    /// skipped, so replaying a batch is harmless.
    ///
    /// # Errors
    /// The database.
    pub async fn insert_usage(&self, records: Arc<Vec<UsageRecord>>) -> Result<(), StoreError> {
        let b = self.backend.clone();
        self.spawn(async move { b.insert_usage(records).await }).await
    }

    /// One page of usage records, newest first.
    ///
    /// # Errors
    /// A bad filter, or the database.
    pub async fn usage(&self, filter: UsageFilter) -> Result<UsagePage, StoreError> {
        check_filter(&filter)?;
        let b = self.backend.clone();
        let limit = filter.limit as usize;
        let records = self.spawn(async move { b.usage(&filter).await }).await?;
        let next_cursor = (records.len() == limit)
            .then(|| records.last().map(|r| Cursor { ts_ms: r.ts_ms, id: r.id.clone() }.encode()))
            .flatten();
        Ok(UsagePage { records, next_cursor })
    }

    /// Totals over the records `filter` selects.
    ///
    /// # Errors
    /// A bad filter, or the database.
    pub async fn usage_summary(&self, filter: UsageFilter) -> Result<UsageSummary, StoreError> {
        check_filter(&UsageFilter { limit: 1, ..filter.clone() })?;
        let b = self.backend.clone();
        self.spawn(async move { b.usage_summary(&filter).await }).await
    }

    /// Totals over the records `filter` selects per `step_ms` of time, oldest first (only
    /// buckets with records). The filter needs `since_ms`, and the span from it to `until_ms`
    /// (or now) may hold at most [`MAX_BUCKETS`] steps.
    ///
    /// # Errors
    /// A bad filter or step, or the database.
    pub async fn usage_series(&self, filter: UsageFilter, step_ms: i64, now_ms: i64) -> Result<Vec<UsageBucket>, StoreError> {
        check_filter(&UsageFilter { limit: 1, ..filter.clone() })?;
        let Some(since) = filter.since_ms else { return Err(StoreError::Invalid("A usage series needs `since`.".into())) };
        let span = filter.until_ms.unwrap_or(now_ms).saturating_sub(since);
        if step_ms < 1000 || span / step_ms > MAX_BUCKETS {
            return Err(StoreError::Invalid(format!("`step` must be at least 1 second and divide the time range into at most {MAX_BUCKETS} buckets.")));
        }
        let b = self.backend.clone();
        self.spawn(async move { b.usage_series(&filter, step_ms).await }).await
    }

    /// Spend (USD) per project since `since_ms`, over records written by other instances.
    ///
    /// # Errors
    /// The database.
    pub async fn spend_since(&self, since_ms: i64, exclude_instance: &str) -> Result<Vec<(String, f64)>, StoreError> {
        let b = self.backend.clone();
        let i = exclude_instance.to_string();
        self.spawn(async move { b.spend_since(since_ms, &i).await }).await
    }
}

impl Store {
    /// Appends price history frames in one transaction. A frame at a time (Unix second) and
    /// deployment already stored replaces it — several instances sharing the database append
    /// the same frames, and of two frames at one second the later is the state in force.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a non-finite price, an empty deployment id or a time out of
    /// range (nothing is written); the database.
    pub async fn append_price_frames(&self, frames: Vec<Arc<Frame>>) -> Result<(), StoreError> {
        for f in &frames {
            check_frame(f)?;
        }
        let rows = rows::price_rows(&frames);
        if rows.is_empty() {
            return Ok(());
        }
        let b = self.backend.clone();
        self.spawn(async move { b.insert_prices(rows).await }).await
    }

    /// Price history frames from `since` to `until` (both included; Unix seconds, as
    /// [`Frame::t`]), oldest first, each with its points ordered by deployment id.
    ///
    /// # Errors
    /// The database.
    pub async fn price_frames(&self, since: i64, until: i64) -> Result<Vec<Frame>, StoreError> {
        let b = self.backend.clone();
        let (since_ms, until_ms) = (since.saturating_mul(1000), until.saturating_mul(1000));
        self.spawn(async move { b.prices_between(since_ms, until_ms).await }).await
    }

    /// Deletes price history frames older than `before` (Unix seconds): the retention rule.
    /// Returns the number of rows (frame × deployment) deleted.
    ///
    /// # Errors
    /// The database.
    pub async fn delete_price_frames_before(&self, before: i64) -> Result<u64, StoreError> {
        let b = self.backend.clone();
        let before_ms = before.saturating_mul(1000);
        self.spawn(async move { b.delete_prices_before(before_ms).await }).await
    }
}

/// Latest accepted time of a price history frame (Unix seconds; year 9999).
const MAX_FRAME_T: i64 = 253_402_300_799;

fn source_error(e: StoreError) -> SourceError {
    SourceError(e.to_string())
}

/// The registry reads keys, projects and spend from the store; every call runs on the store
/// runtime.
#[async_trait]
impl DirectorySource for Store {
    async fn directory(&self) -> Result<Directory, SourceError> {
        Store::directory(self).await.map_err(source_error)
    }

    async fn change_seq(&self) -> Result<i64, SourceError> {
        Store::change_seq(self).await.map_err(source_error)
    }

    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        Store::subscribe(self)
    }

    async fn spend_since(&self, since_ms: i64, exclude_instance: &str) -> Result<Vec<(String, f64)>, SourceError> {
        Store::spend_since(self, since_ms, exclude_instance).await.map_err(source_error)
    }

    fn spawn(&self, task: futures_util::future::BoxFuture<'static, ()>) {
        self.spawn_task(task);
    }
}

fn write_error(e: StoreError) -> WriteError {
    WriteError(e.to_string())
}

/// The usage writer's batches go to the store, on the store runtime.
#[async_trait]
impl UsageStore for Store {
    async fn insert_usage(&self, records: Arc<Vec<UsageRecord>>) -> Result<(), WriteError> {
        Store::insert_usage(self, records).await.map_err(write_error)
    }

    async fn touch_keys(&self, used: Vec<(String, i64)>) -> Result<(), WriteError> {
        Store::touch_keys(self, used).await.map_err(write_error)
    }

    fn spawn(&self, task: futures_util::future::BoxFuture<'static, ()>) {
        self.spawn_task(task);
    }
}

fn check_frame(f: &Frame) -> Result<(), StoreError> {
    if !(0..=MAX_FRAME_T).contains(&f.t) {
        return Err(StoreError::Invalid(format!("price frame time {} is out of range", f.t)));
    }
    for p in &f.points {
        if p.deployment.is_empty() || p.deployment.len() > MAX_ID {
            return Err(StoreError::Invalid(format!("price frame {}: deployment id must be 1-{MAX_ID} characters", f.t)));
        }
        if !(p.input.is_finite() && p.output.is_finite() && p.usd_per_mwh.is_none_or(f64::is_finite)) {
            return Err(StoreError::Invalid(format!("price frame {}: non-finite price for `{}`", f.t, clip(&p.deployment))));
        }
    }
    Ok(())
}

fn check_filter(f: &UsageFilter) -> Result<(), StoreError> {
    for (field, v) in [("project", &f.project_id), ("key", &f.key_id), ("model", &f.model)] {
        if let Some(v) = v {
            check_id(field, v)?;
        }
    }
    if f.limit == 0 || f.limit > MAX_PAGE {
        return Err(StoreError::Invalid(format!("limit: must be between 1 and {MAX_PAGE}")));
    }
    if let (Some(a), Some(b)) = (f.since_ms, f.until_ms) {
        if a > b {
            return Err(StoreError::Invalid("since: later than until".into()));
        }
    }
    Ok(())
}

/// The store's runtime: one worker thread plus the blocking pool, alive for the process.
fn store_runtime() -> Result<tokio::runtime::Handle, StoreError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .thread_name("joule-store")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Backend(format!("store runtime: {e}")))?;
    let handle = rt.handle().clone();
    // The runtime lives on a thread of its own for the rest of the process: dropping a
    // runtime from inside another runtime's context would panic, and the store is shared by
    // services whose runtimes pingora tears down in its own order.
    std::thread::Builder::new()
        .name("joule-store-rt".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .map_err(|e| StoreError::Backend(format!("store thread: {e}")))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = Cursor { ts_ms: 17, id: "req_ab".into() };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("x").is_err());
        assert!(Cursor::decode("1.a'b").is_err());
    }
}
