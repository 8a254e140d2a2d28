//! The SQLite backend: one connection (WAL journal, 5 s busy timeout so the CLI and a running
//! gateway can share the file), used from the store runtime's blocking pool.

use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OptionalExtension, ToSql, TransactionBehavior};

use super::batch::{self, BatchReads};
use super::rows::{self, Param, RowLike};
use super::schema::{self, sqlite_sql as q};
use super::{ApiKey, Backend, Directory, KeptResponse, Project, ProjectChanges, StoreError, UsageBucket, UsageFilter, UsageSummary};
use crate::batch::{BatchRecord, FileObject, FinishedLine, LeasedLine, NewLine};
use crate::pricing::history::Frame;
use crate::usage::UsageRecord;

/// An SQLite database file.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
            StoreError::Duplicate("a record with this name already exists".into())
        }
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen | ErrorCode::DiskFull | ErrorCode::SystemIoFailure) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Binds a parameter without copying it: text is borrowed from the [`Param`].
impl ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Param::Int(Some(v)) => ValueRef::Integer(*v),
            Param::Real(Some(v)) => ValueRef::Real(*v),
            Param::Text(Some(v)) => ValueRef::Text(v.as_bytes()),
            Param::Int(None) | Param::Real(None) | Param::Text(None) => ValueRef::Null,
        }))
    }
}

fn params(ps: &[Param]) -> rusqlite::ParamsFromIter<std::slice::Iter<'_, Param>> {
    rusqlite::params_from_iter(ps.iter())
}

impl RowLike for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.get(i).map_err(err)
    }
    fn real(&self, i: usize) -> Result<Option<f64>, StoreError> {
        self.get(i).map_err(err)
    }
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.get(i).map_err(err)
    }
}

fn query<T>(
    c: &Connection,
    sql: &str,
    ps: &[Param],
    map: impl Fn(&dyn RowLike) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = c.prepare_cached(&q(sql)).map_err(err)?;
    let mut rows = stmt.query(params(ps)).map_err(err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(err)? {
        out.push(map(r)?);
    }
    Ok(out)
}

fn exec(c: &Connection, sql: &str, ps: &[Param]) -> Result<usize, StoreError> {
    c.prepare_cached(&q(sql)).map_err(err)?.execute(params(ps)).map_err(err)
}

fn project_by_name(c: &Connection, name: &str) -> Result<Option<Project>, StoreError> {
    let sql = format!("SELECT {} FROM projects WHERE name = $1", schema::PROJECT_COLS);
    Ok(query(c, &sql, &[name.into()], rows::project)?.pop())
}

fn project_id(c: &Connection, name: &str) -> Result<String, StoreError> {
    c.query_row(&q(schema::PROJECT_ID_BY_NAME), [name], |r| r.get(0))
        .optional()
        .map_err(err)?
        .ok_or_else(|| StoreError::NotFound(format!("no project named `{name}`")))
}

impl SqliteStore {
    /// Opens or creates the database file (and its directory).
    ///
    /// # Errors
    /// The file cannot be created or opened.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let c = Connection::open(path).map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        c.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;").map_err(err)?;
        Ok(SqliteStore { conn: Arc::new(Mutex::new(c)) })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a half-written transaction behind
            // (rusqlite rolls back on drop), so a poisoned lock is safe to reuse.
            let mut c = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite task: {e}")))?
    }

    /// Runs `f` in an immediate (write-locking) transaction, committed when `f` succeeds.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
            let out = f(&tx)?;
            tx.commit().map_err(err)?;
            Ok(out)
        })
        .await
    }
}

fn bump(c: &Connection) -> Result<(), StoreError> {
    exec(c, schema::BUMP_SEQ, &[]).map(|_| ())
}

#[async_trait]
impl Backend for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute_batch(schema::META).map_err(err)?;
            let found: i64 = query(c, schema::GET_META, &["schema_version".into()], |r| Ok(r.int(0)?.unwrap_or(0)))?
                .pop()
                .unwrap_or(0);
            let known = schema::MIGRATIONS.len() as i64;
            if found > known {
                return Err(StoreError::Schema { found, known });
            }
            for (i, m) in schema::MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
                c.execute_batch(m).map_err(err)?;
                exec(c, schema::SET_META, &["schema_version".into(), (i as i64 + 1).into()])?;
            }
            Ok(())
        })
        .await
    }

    async fn change_seq(&self) -> Result<i64, StoreError> {
        self.with(|c| Ok(query(c, schema::GET_META, &["change_seq".into()], |r| Ok(r.int(0)?.unwrap_or(0)))?.pop().unwrap_or(0)))
            .await
    }

    async fn directory(&self) -> Result<Directory, StoreError> {
        self.with(|c| {
            // A read transaction: projects, keys and the sequence from one snapshot.
            let tx = c.transaction_with_behavior(TransactionBehavior::Deferred).map_err(err)?;
            let seq = query(&tx, schema::GET_META, &["change_seq".into()], |r| Ok(r.int(0)?.unwrap_or(0)))?.pop().unwrap_or(0);
            let projects = query(&tx, &format!("SELECT {} FROM projects ORDER BY name", schema::PROJECT_COLS), &[], rows::project)?;
            let keys = query(&tx, &format!("{} WHERE k.revoked_at IS NULL", schema::KEY_SELECT), &[], rows::key)?;
            tx.commit().map_err(err)?;
            Ok(Directory { seq, projects, keys })
        })
        .await
    }

    async fn insert_project(&self, p: &Project) -> Result<(), StoreError> {
        let ps = rows::project_params(p);
        let name = p.name.clone();
        self.write(move |c| {
            exec(c, schema::INSERT_PROJECT, &ps).map_err(|e| match e {
                StoreError::Duplicate(_) => StoreError::Duplicate(format!("a project named `{name}` already exists")),
                e => e,
            })?;
            bump(c)
        })
        .await
    }

    async fn update_project(&self, name: &str, changes: &ProjectChanges, now: i64) -> Result<Project, StoreError> {
        let name = name.to_string();
        let changes = changes.clone();
        self.write(move |c| {
            let mut p = project_by_name(c, &name)?.ok_or_else(|| StoreError::NotFound(format!("no project named `{name}`")))?;
            changes.apply(&mut p);
            p.updated_at = now;
            exec(c, schema::UPDATE_PROJECT, &rows::project_update_params(&p)).map_err(|e| match e {
                StoreError::Duplicate(_) => StoreError::Duplicate(format!("a project named `{}` already exists", p.name)),
                e => e,
            })?;
            bump(c)?;
            Ok(p)
        })
        .await
    }

    async fn delete_project(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |c| {
            let id = project_id(c, &name)?;
            let active = query(c, schema::ACTIVE_KEYS_OF, &[id.as_str().into()], |r| Ok(r.int(0)?.unwrap_or(0)))?.pop().unwrap_or(0);
            if active > 0 {
                return Err(StoreError::Conflict(format!("project `{name}` has {active} active key(s); revoke them first")));
            }
            exec(c, schema::DELETE_PROJECT, &[id.into()])?;
            bump(c)
        })
        .await
    }

    async fn projects(&self) -> Result<Vec<Project>, StoreError> {
        self.with(|c| query(c, &format!("SELECT {} FROM projects ORDER BY name", schema::PROJECT_COLS), &[], rows::project)).await
    }

    async fn project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        let name = name.to_string();
        self.with(move |c| project_by_name(c, &name)).await
    }

    async fn insert_key(&self, key: &ApiKey, project: Option<&str>) -> Result<ApiKey, StoreError> {
        let key = key.clone();
        let project = project.map(str::to_string);
        self.write(move |c| {
            let pid = project.as_deref().map(|p| project_id(c, p)).transpose()?;
            exec(c, schema::INSERT_KEY, &rows::key_params(&key, pid.as_deref())).map_err(|e| match e {
                StoreError::Duplicate(_) => StoreError::Duplicate(format!("an active key named `{}` already exists", key.name)),
                e => e,
            })?;
            bump(c)?;
            Ok(ApiKey { project_id: pid, project, ..key })
        })
        .await
    }

    async fn keys(&self, project: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let project = project.map(str::to_string);
        self.with(move |c| match project {
            Some(p) => query(c, &format!("{} WHERE p.name = $1 ORDER BY k.created_at, k.id", schema::KEY_SELECT), &[p.into()], rows::key),
            None => query(c, &format!("{} ORDER BY k.created_at, k.id", schema::KEY_SELECT), &[], rows::key),
        })
        .await
    }

    async fn revoke_key(&self, id_or_name: &str, now: i64) -> Result<ApiKey, StoreError> {
        let k = id_or_name.to_string();
        self.write(move |c| {
            let sql = format!("{} WHERE (k.id = $1 OR k.name = $1) AND k.revoked_at IS NULL", schema::KEY_SELECT);
            let mut found = query(c, &sql, &[k.as_str().into()], rows::key)?;
            if found.len() > 1 {
                return Err(StoreError::Conflict(format!("`{k}` matches several keys; use the key id")));
            }
            let mut key = found.pop().ok_or_else(|| StoreError::NotFound(format!("no active key `{k}`")))?;
            exec(c, schema::REVOKE_KEY, &[key.id.as_str().into(), now.into()])?;
            bump(c)?;
            key.revoked_at = Some(now);
            Ok(key)
        })
        .await
    }

    async fn touch_keys(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        let used = used.to_vec();
        self.write(move |c| {
            for (id, ts) in &used {
                exec(c, schema::TOUCH_KEY, &[id.as_str().into(), (*ts).into()])?;
            }
            Ok(())
        })
        .await
    }

    async fn insert_usage(&self, records: Arc<Vec<UsageRecord>>) -> Result<(), StoreError> {
        self.write(move |c| {
            // One cached single-row statement run per record: inside one transaction SQLite
            // inserts as fast this way as with a multi-row statement, without parsing a new
            // statement for every batch size.
            static SQL: LazyLock<String> = LazyLock::new(|| q(&schema::insert_usage_sql(1)));
            let mut stmt = c.prepare_cached(&SQL).map_err(err)?;
            let mut ps = Vec::with_capacity(schema::USAGE_NCOLS);
            for r in records.iter() {
                ps.clear();
                rows::usage_params(r, &mut ps);
                stmt.execute(params(&ps)).map_err(err)?;
            }
            Ok(())
        })
        .await
    }

    async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError> {
        let (sql, ps) = rows::usage_query(filter);
        self.with(move |c| query(c, &sql, &ps, rows::usage)).await
    }

    async fn usage_summary(&self, filter: &UsageFilter) -> Result<UsageSummary, StoreError> {
        let (sql, ps) = rows::usage_summary_query(filter);
        self.with(move |c| {
            let mut v = query(c, &sql, &ps, rows::usage_summary)?;
            Ok(v.pop().unwrap_or_default())
        })
        .await
    }

    async fn usage_series(&self, filter: &UsageFilter, step_ms: i64) -> Result<Vec<UsageBucket>, StoreError> {
        let (sql, ps) = rows::usage_series_query(filter, step_ms);
        self.with(move |c| query(c, &sql, &ps, rows::usage_bucket)).await
    }

    async fn spend_since(&self, since_ms: i64, exclude_instance: &str) -> Result<Vec<(String, f64)>, StoreError> {
        let i = exclude_instance.to_string();
        self.with(move |c| {
            query(c, schema::SPEND_SINCE, &[since_ms.into(), i.into()], |r| {
                Ok((r.text(0)?.unwrap_or_default(), r.real(1)?.unwrap_or(0.0)))
            })
        })
        .await
    }

    async fn insert_prices(&self, rows: Vec<[Param; schema::PRICE_NCOLS]>) -> Result<(), StoreError> {
        self.write(move |c| {
            for chunk in rows.chunks(schema::PRICE_ROWS_PER_INSERT) {
                exec(c, &schema::insert_prices_sql(chunk.len()), chunk.as_flattened())?;
            }
            Ok(())
        })
        .await
    }

    async fn prices_between(&self, since_ms: i64, until_ms: i64) -> Result<Vec<Frame>, StoreError> {
        let ps = [since_ms.into(), until_ms.into()];
        self.with(move |c| Ok(rows::frames(query(c, schema::PRICES_BETWEEN, &ps, rows::price_point)?))).await
    }

    async fn delete_prices_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.write(move |c| exec(c, schema::DELETE_PRICES_BEFORE, &[before_ms.into()]).map(|n| n as u64)).await
    }

    async fn insert_response(&self, r: &KeptResponse) -> Result<(), StoreError> {
        let ps = [r.id.clone().into(), r.owner.clone().into(), r.created_ms.into(), r.expires_ms.into(), r.object.clone().into(), r.conversation.clone().into()];
        let now = r.created_ms;
        self.write(move |c| {
            exec(c, schema::DELETE_EXPIRED_RESPONSES, &[now.into()])?;
            exec(c, schema::INSERT_RESPONSE, &ps).map(|_| ())
        })
        .await
    }

    async fn response(&self, id: &str, owner: &str, now_ms: i64) -> Result<Option<(String, String)>, StoreError> {
        let ps = [id.into(), owner.into(), now_ms.into()];
        self.with(move |c| {
            let rows = query(c, schema::SELECT_RESPONSE, &ps, |r| Ok((r.text(0)?.unwrap_or_default(), r.text(1)?.unwrap_or_default())))?;
            Ok(rows.into_iter().next())
        })
        .await
    }

    async fn delete_response(&self, id: &str, owner: &str, now_ms: i64) -> Result<bool, StoreError> {
        let ps = [id.into(), owner.into(), now_ms.into()];
        self.write(move |c| exec(c, schema::DELETE_RESPONSE, &ps).map(|n| n > 0)).await
    }

    async fn insert_file(&self, f: FileObject, content: String) -> Result<(), StoreError> {
        let ps = batch::file_params(&f, content);
        self.write(move |c| exec(c, schema::INSERT_FILE, &ps).map(|_| ())).await
    }

    async fn files(&self, sql: String, ps: Vec<Param>) -> Result<Vec<FileObject>, StoreError> {
        self.with(move |c| query(c, &sql, &ps, batch::file)).await
    }

    async fn file_content(&self, owner: &str, id: &str) -> Result<Option<String>, StoreError> {
        let ps = [owner.into(), id.into()];
        self.with(move |c| Ok(query(c, schema::FILE_CONTENT, &ps, |r| r.text(0))?.pop().flatten())).await
    }

    async fn insert_batch(&self, b: BatchRecord, lines: Vec<NewLine>) -> Result<(), StoreError> {
        self.write(move |c| {
            exec(c, schema::INSERT_BATCH, &batch::batch_params(&b))?;
            for chunk in lines.chunks(schema::LINE_ROWS_PER_INSERT) {
                exec(c, &schema::insert_lines_sql(chunk.len()), &batch::line_params(&b.id, chunk))?;
            }
            Ok(())
        })
        .await
    }

    async fn batches(&self, reads: BatchReads) -> Result<Vec<BatchRecord>, StoreError> {
        self.with(move |c| {
            // A read transaction: the rows and their lines from one snapshot.
            let tx = c.transaction_with_behavior(TransactionBehavior::Deferred).map_err(err)?;
            let rows = query(&tx, &reads.rows.0, &reads.rows.1, batch::batch)?;
            if rows.is_empty() {
                return Ok(rows);
            }
            let totals = query(&tx, &reads.totals.0, &reads.totals.1, batch::line_totals)?;
            let sites = query(&tx, &reads.sites.0, &reads.sites.1, batch::line_site)?;
            tx.commit().map_err(err)?;
            Ok(batch::assemble(rows, totals, sites))
        })
        .await
    }

    async fn update(&self, sql: String, ps: Vec<Param>) -> Result<u64, StoreError> {
        self.write(move |c| exec(c, &sql, &ps).map(|n| n as u64)).await
    }

    async fn lease_lines(&self, batch_id: &str, n: u32, instance: &str, now_ms: i64, until_ms: i64) -> Result<Vec<LeasedLine>, StoreError> {
        let ps = [batch_id.into(), i64::from(n).into(), now_ms.into(), instance.into(), until_ms.into()];
        // The immediate transaction holds SQLite's write lock: no other writer runs between
        // choosing the lines and leasing them.
        self.write(move |c| query(c, schema::LEASE_LINES_SQLITE, &ps, batch::leased)).await
    }

    async fn release_lines(&self, batch_id: &str, lines: &[i64], instance: &str) -> Result<(), StoreError> {
        let (id, lines, instance) = (batch_id.to_string(), lines.to_vec(), instance.to_string());
        self.write(move |c| {
            for chunk in lines.chunks(schema::LINES_PER_STATEMENT) {
                let mut ps: Vec<Param> = vec![id.as_str().into(), instance.as_str().into()];
                ps.extend(chunk.iter().map(|&l| Param::from(l)));
                exec(c, &schema::release_lines_sql(chunk.len()), &ps)?;
            }
            Ok(())
        })
        .await
    }

    async fn finished_lines(&self, batch_id: &str) -> Result<Vec<FinishedLine>, StoreError> {
        let ps = [batch_id.into()];
        self.with(move |c| query(c, schema::FINISHED_LINES, &ps, batch::finished)).await
    }

    async fn unfinished_lines(&self, batch_id: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let ps = [batch_id.into()];
        self.with(move |c| query(c, schema::UNFINISHED_LINES, &ps, batch::unfinished)).await
    }

    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        None
    }
}
