//! Durable state behind one interface: projects, API keys (hashed), usage records and the
//! price history, in SQLite (embedded default) or PostgreSQL (several gateway instances
//! sharing state).
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

mod history;
pub mod postgres;
mod rows;
pub mod schema;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::pricing::history::Frame;
use crate::routing::tags::StrategySet;
use crate::secret::Secret;
use crate::usage::UsageRecord;

/// Longest accepted project or key name.
pub const MAX_NAME: usize = 64;
/// Longest accepted identifier in a filter or model list (model ids, key ids).
pub const MAX_ID: usize = 128;
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
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// An SQLite file, created if missing.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection string (URL or `key=value` form); it may carry a password.
    Postgres(Secret<String>),
}

/// How long a budget's spend accumulates before it starts again at 0 (UTC calendar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    #[default]
    Month,
}

impl BudgetPeriod {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }

    /// Parses `day` or `month`.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "day" => Ok(BudgetPeriod::Day),
            "month" => Ok(BudgetPeriod::Month),
            other => Err(StoreError::Invalid(format!("budget_period `{}` is not one of: day, month", clip(other)))),
        }
    }

    /// Start and end (unix ms) of the period containing `now_ms`: its UTC day, or its UTC
    /// calendar month. (A time chrono cannot represent, beyond ±262,000 years, is clamped to
    /// its range.)
    pub fn bounds(self, now_ms: i64) -> (i64, i64) {
        use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, Utc};
        let now = DateTime::from_timestamp_millis(now_ms).unwrap_or(if now_ms < 0 { DateTime::<Utc>::MIN_UTC } else { DateTime::<Utc>::MAX_UTC });
        let day = now.date_naive();
        let (start, end) = match self {
            BudgetPeriod::Day => (day, day.succ_opt()),
            BudgetPeriod::Month => {
                let first = day.with_day(1).unwrap_or(day);
                (first, first.checked_add_months(Months::new(1)))
            }
        };
        let ms = |d: NaiveDate| d.and_time(NaiveTime::MIN).and_utc().timestamp_millis();
        (ms(start), end.map_or(i64::MAX, ms))
    }
}

/// A project: a group of API keys, allowed models, limits, budget and usage records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    /// `None`: every model of the catalog.
    pub allowed_models: Option<Vec<String>>,
    /// Strategy set (`latency@price`) for requests without tags; `None`: the config default.
    pub default_strategy: Option<String>,
    /// Requests per minute over all the project's keys; `None`: unlimited.
    pub rpm: Option<u32>,
    /// Tokens (input + output) per minute over all the project's keys; `None`: unlimited.
    pub tpm: Option<u32>,
    /// USD the project may spend per period; `None`: unlimited.
    pub budget_usd: Option<f64>,
    pub budget_period: BudgetPeriod,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// Fields to set on a project; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectChanges {
    pub name: Option<String>,
    pub allowed_models: Option<Option<Vec<String>>>,
    pub default_strategy: Option<Option<String>>,
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u32>>,
    pub budget_usd: Option<Option<f64>>,
    pub budget_period: Option<BudgetPeriod>,
}

impl ProjectChanges {
    /// Checks every field's form (names, identifiers, strategies, numbers). Whether allowed
    /// models exist in the catalog is checked by the caller, which has the catalog.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), StoreError> {
        if let Some(n) = &self.name {
            check_name("name", n)?;
        }
        if let Some(Some(models)) = &self.allowed_models {
            if models.len() > 1000 {
                return Err(StoreError::Invalid("allowed_models: at most 1000 models".into()));
            }
            for m in models {
                check_id("allowed_models", m)?;
            }
        }
        if let Some(Some(s)) = &self.default_strategy {
            if s.len() > MAX_ID {
                return Err(StoreError::Invalid(format!("default_strategy: longer than {MAX_ID} characters")));
            }
            StrategySet::parse_list(s).map_err(|e| StoreError::Invalid(format!("default_strategy: {e}")))?;
        }
        for (field, v) in [("rpm", self.rpm), ("tpm", self.tpm)] {
            if let Some(Some(0)) = v {
                return Err(StoreError::Invalid(format!("{field}: must be at least 1 (omit it for no limit)")));
            }
        }
        if let Some(Some(b)) = self.budget_usd {
            if !(b.is_finite() && (0.0..=1e12).contains(&b)) {
                return Err(StoreError::Invalid(format!("budget_usd: must be a finite number between 0 and 1e12, got {b}")));
            }
        }
        Ok(())
    }

    /// Applies the changes to `p`.
    pub fn apply(&self, p: &mut Project) {
        if let Some(n) = &self.name {
            p.name.clone_from(n);
        }
        if let Some(m) = &self.allowed_models {
            p.allowed_models = m.clone().map(|mut v| {
                v.sort();
                v.dedup();
                v
            });
        }
        if let Some(s) = &self.default_strategy {
            // Stored canonically, so `price@latency` and `latency@price` read back the same.
            p.default_strategy = s.as_ref().map(|s| StrategySet::parse_list(s).map_or_else(|_| s.clone(), |set| set.to_string().replace('+', "@")));
        }
        if let Some(v) = self.rpm {
            p.rpm = v;
        }
        if let Some(v) = self.tpm {
            p.tpm = v;
        }
        if let Some(v) = self.budget_usd {
            p.budget_usd = v;
        }
        if let Some(v) = self.budget_period {
            p.budget_period = v;
        }
    }
}

/// An API key as the store keeps it: never the key itself, only its SHA-256 and a prefix to
/// recognise it by.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// The first characters of the key (`sk-joule-3fa9c2d1`), for people to recognise it.
    pub prefix: String,
    pub project_id: Option<String>,
    /// The project's name (joined at read time).
    pub project: Option<String>,
    /// Requests per minute for this key alone; `None`: unlimited (the project's limits apply).
    pub rpm: Option<u32>,
    /// Tokens per minute for this key alone.
    pub tpm: Option<u32>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Lower-case hex SHA-256 of the key.
    #[serde(skip)]
    pub hash: String,
}

/// What a new key needs.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    /// Project name.
    pub project: Option<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
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

/// Projects and keys at one change sequence: what the in-memory snapshot is built from.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub seq: i64,
    pub projects: Vec<Project>,
    /// Active (non-revoked) keys only.
    pub keys: Vec<ApiKey>,
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
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError>;
    async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError>;
    async fn usage_summary(&self, filter: &UsageFilter) -> Result<UsageSummary, StoreError>;
    async fn spend_since(&self, since_ms: i64, exclude_instance: &str) -> Result<Vec<(String, f64)>, StoreError>;
    /// Inserts price history rows ([`rows::price_rows`]) in one transaction.
    async fn insert_prices(&self, rows: Vec<[rows::Param; schema::PRICE_NCOLS]>) -> Result<(), StoreError>;
    async fn prices_between(&self, since_ms: i64, until_ms: i64) -> Result<Vec<Frame>, StoreError>;
    async fn delete_prices_before(&self, before_ms: i64) -> Result<u64, StoreError>;
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

/// Current time, unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks a project or key name: 1–64 characters, letters, digits, `.`, `_`, `-`, starting
/// with a letter or digit.
///
/// # Errors
/// [`StoreError::Invalid`] naming `field`.
pub fn check_name(field: &str, s: &str) -> Result<(), StoreError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else if s.len() > MAX_NAME {
        Err(StoreError::Invalid(format!("{field}: longer than {MAX_NAME} characters")))
    } else {
        Err(StoreError::Invalid(format!(
            "{field}: `{}` must be 1-{MAX_NAME} letters, digits, `.`, `_` or `-`, starting with a letter or digit",
            clip(s)
        )))
    }
}

/// Checks an identifier (model id, key id) used in a filter or list: 1–128 printable ASCII
/// characters without spaces, quotes, `;` or `\`.
///
/// # Errors
/// [`StoreError::Invalid`] naming `field`.
pub fn check_id(field: &str, s: &str) -> Result<(), StoreError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID
        && s.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'\'' | b'"' | b';' | b'\\' | b'`'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("{field}: `{}` is not a valid identifier", clip(s))))
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// The prefix every generated API key starts with.
pub const KEY_PREFIX: &str = "sk-joule-";

/// Generates an API key: [`KEY_PREFIX`] followed by 192 random bits in hex.
pub fn generate_key() -> Secret<String> {
    Secret::new(format!("{KEY_PREFIX}{}", random_hex(24)))
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
            hash: crate::auth::KeyHash::of(secret.expose()).to_hex(),
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
        self.spawn(async move { b.insert_usage(&records).await }).await
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
    fn periods_follow_the_utc_calendar() {
        // 2024-02-29T13:00:00Z
        let t = 1_709_211_600_000;
        let (s, e) = BudgetPeriod::Day.bounds(t);
        assert_eq!((s, e), (1_709_164_800_000, 1_709_251_200_000));
        let (s, e) = BudgetPeriod::Month.bounds(t);
        assert_eq!(s, 1_706_745_600_000, "2024-02-01");
        assert_eq!(e, 1_709_251_200_000, "2024-03-01");
        // December rolls into the next year.
        let (s, e) = BudgetPeriod::Month.bounds(1_734_000_000_000);
        assert_eq!((s, e), (1_733_011_200_000, 1_735_689_600_000));
    }

    #[test]
    fn periods_before_the_epoch_and_at_the_extremes() {
        // 1969-12-31T12:00:00Z: December 1969, which ends where 1970 starts.
        assert_eq!(BudgetPeriod::Month.bounds(-43_200_000), (-2_678_400_000, 0));
        assert_eq!(BudgetPeriod::Day.bounds(-1), (-86_400_000, 0));
        for t in [i64::MIN, i64::MAX] {
            for p in [BudgetPeriod::Day, BudgetPeriod::Month] {
                let (s, e) = p.bounds(t);
                assert!(s < e, "{p:?} at {t}: {s}..{e}");
            }
        }
    }

    #[test]
    fn names_and_ids_are_checked() {
        assert!(check_name("name", "dev-key").is_ok());
        assert!(check_name("name", "n8n_workflow.v2").is_ok());
        for bad in ["", "-x", "a b", "x'; DROP TABLE projects; --", "é", &"a".repeat(65)] {
            assert!(matches!(check_name("name", bad), Err(StoreError::Invalid(_))), "{bad}");
        }
        assert!(check_id("model", "llama-3.1-8b-instruct").is_ok());
        assert!(check_id("model", "' OR 1=1 --").is_err());
        assert!(check_id("model", "x;y").is_err());
    }

    #[test]
    fn keys_are_long_random_and_prefixed() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.expose().starts_with(KEY_PREFIX));
        assert_eq!(a.expose().len(), KEY_PREFIX.len() + 48, "192 bits in hex");
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn cursor_round_trips() {
        let c = Cursor { ts_ms: 17, id: "req_ab".into() };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("x").is_err());
        assert!(Cursor::decode("1.a'b").is_err());
    }
}
