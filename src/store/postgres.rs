//! The PostgreSQL backend: a small pool of `tokio-postgres` connections (opened on demand,
//! dropped when broken, so the store recovers by itself when the server comes back), and a
//! dedicated `LISTEN joule_changes` connection that reconnects with backoff.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Config, GenericClient, NoTls, Row};

use super::batch::{self, BatchReads};
use super::rows::{self, Param, RowLike};
use super::schema;
use super::{ApiKey, Backend, Directory, KeptResponse, Project, ProjectChanges, StoreError, UsageBucket, UsageFilter, UsageSummary};
use crate::batch::{BatchRecord, FileObject, FinishedLine, LeasedLine, NewLine};
use crate::pricing::history::Frame;
use crate::usage::UsageRecord;

/// Idle connections kept for reuse.
const POOL_IDLE: usize = 4;
/// The channel every change is announced on.
const CHANNEL: &str = "joule_changes";
/// Serialises migrations of instances starting together (an arbitrary constant).
const MIGRATION_LOCK: i64 = 0x006a_6f75_6c65;

/// A PostgreSQL database.
pub struct PgStore {
    config: Config,
    idle: Mutex<Vec<Client>>,
}

fn err(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return StoreError::Duplicate("a record with this name already exists".into());
    }
    match e.as_db_error() {
        // The server answered: a bug or an unexpected schema.
        Some(db) => StoreError::Backend(format!("{}: {}", db.code().code(), db.message())),
        // No answer: connection refused, closed, timed out.
        None => StoreError::Unavailable(e.to_string()),
    }
}

type Boxed = Box<dyn ToSql + Sync + Send>;

fn boxed(ps: &[Param]) -> Vec<Boxed> {
    ps.iter()
        .map(|p| -> Boxed {
            match p {
                Param::Int(v) => Box::new(*v),
                Param::Real(v) => Box::new(*v),
                Param::Text(v) => Box::new(v.clone()),
            }
        })
        .collect()
}

impl RowLike for Row {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.try_get(i).map_err(err)
    }
    fn real(&self, i: usize) -> Result<Option<f64>, StoreError> {
        self.try_get(i).map_err(err)
    }
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.try_get(i).map_err(err)
    }
}

async fn query<C: GenericClient + Sync, T>(
    c: &C,
    sql: &str,
    ps: &[Param],
    map: impl Fn(&dyn RowLike) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let b = boxed(ps);
    let refs: Vec<&(dyn ToSql + Sync)> = b.iter().map(|x| x.as_ref() as &(dyn ToSql + Sync)).collect();
    let rows = c.query(sql, &refs).await.map_err(err)?;
    rows.iter().map(|r| map(r)).collect()
}

async fn exec<C: GenericClient + Sync>(c: &C, sql: &str, ps: &[Param]) -> Result<u64, StoreError> {
    let b = boxed(ps);
    let refs: Vec<&(dyn ToSql + Sync)> = b.iter().map(|x| x.as_ref() as &(dyn ToSql + Sync)).collect();
    c.execute(sql, &refs).await.map_err(err)
}

async fn bump<C: GenericClient + Sync>(c: &C) -> Result<(), StoreError> {
    exec(c, schema::BUMP_SEQ, &[]).await?;
    // Delivered to listeners when (and only if) the transaction commits.
    c.batch_execute(&format!("NOTIFY {CHANNEL}")).await.map_err(err)
}

async fn project_by_name<C: GenericClient + Sync>(c: &C, name: &str, lock: bool) -> Result<Option<Project>, StoreError> {
    let sql = format!("SELECT {} FROM projects WHERE name = $1{}", schema::PROJECT_COLS, if lock { " FOR UPDATE" } else { "" });
    Ok(query(c, &sql, &[name.into()], rows::project).await?.pop())
}

async fn project_id<C: GenericClient + Sync>(c: &C, name: &str) -> Result<String, StoreError> {
    let sql = format!("{} FOR UPDATE", schema::PROJECT_ID_BY_NAME);
    query(c, &sql, &[name.into()], |r| r.text(0).map(Option::unwrap_or_default))
        .await?
        .pop()
        .ok_or_else(|| StoreError::NotFound(format!("no project named `{name}`")))
}

fn renamed_duplicate(e: StoreError, what: String) -> StoreError {
    match e {
        StoreError::Duplicate(_) => StoreError::Duplicate(what),
        e => e,
    }
}

impl PgStore {
    /// Parses the connection string; connections are opened on first use.
    ///
    /// # Errors
    /// A malformed connection string (the message never repeats it: it may hold a password).
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let mut config: Config = url
            .parse()
            .map_err(|_| StoreError::Invalid("store.url is not a PostgreSQL connection string".into()))?;
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("joule");
        Ok(PgStore { config, idle: Mutex::new(Vec::new()) })
    }

    async fn conn(&self) -> Result<Client, StoreError> {
        loop {
            let c = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
            match c {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => break,
            }
        }
        let (client, conn) = self.config.connect(NoTls).await.map_err(err)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        Ok(client)
    }

    fn put(&self, c: Client) {
        if c.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < POOL_IDLE {
            idle.push(c);
        }
    }
}

#[async_trait]
impl Backend for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[MIGRATION_LOCK.into()]).await?;
            tx.batch_execute(schema::META).await.map_err(err)?;
            let found = query(&tx, schema::GET_META, &["schema_version".into()], |r| Ok(r.int(0)?.unwrap_or(0)))
                .await?
                .pop()
                .unwrap_or(0);
            let known = schema::MIGRATIONS.len() as i64;
            if found > known {
                return Err(StoreError::Schema { found, known });
            }
            for (i, m) in schema::MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
                tx.batch_execute(m).await.map_err(err)?;
                exec(&tx, schema::SET_META, &["schema_version".into(), (i as i64 + 1).into()]).await?;
            }
            tx.commit().await.map_err(err)
        }
        .await;
        self.put(c);
        r
    }

    async fn change_seq(&self) -> Result<i64, StoreError> {
        let c = self.conn().await?;
        let r = query(&c, schema::GET_META, &["change_seq".into()], |r| Ok(r.int(0)?.unwrap_or(0))).await;
        self.put(c);
        Ok(r?.pop().unwrap_or(0))
    }

    async fn directory(&self) -> Result<Directory, StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.build_transaction().read_only(true).isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).start().await.map_err(err)?;
            let seq = query(&tx, schema::GET_META, &["change_seq".into()], |r| Ok(r.int(0)?.unwrap_or(0))).await?.pop().unwrap_or(0);
            let projects = query(&tx, &format!("SELECT {} FROM projects ORDER BY name", schema::PROJECT_COLS), &[], rows::project).await?;
            let keys = query(&tx, &format!("{} WHERE k.revoked_at IS NULL", schema::KEY_SELECT), &[], rows::key).await?;
            tx.commit().await.map_err(err)?;
            Ok(Directory { seq, projects, keys })
        }
        .await;
        self.put(c);
        r
    }

    async fn insert_project(&self, p: &Project) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            exec(&tx, schema::INSERT_PROJECT, &rows::project_params(p))
                .await
                .map_err(|e| renamed_duplicate(e, format!("a project named `{}` already exists", p.name)))?;
            bump(&tx).await?;
            tx.commit().await.map_err(err)
        }
        .await;
        self.put(c);
        r
    }

    async fn update_project(&self, name: &str, changes: &ProjectChanges, now: i64) -> Result<Project, StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            let mut p = project_by_name(&tx, name, true)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no project named `{name}`")))?;
            changes.apply(&mut p);
            p.updated_at = now;
            exec(&tx, schema::UPDATE_PROJECT, &rows::project_update_params(&p))
                .await
                .map_err(|e| renamed_duplicate(e, format!("a project named `{}` already exists", p.name)))?;
            bump(&tx).await?;
            tx.commit().await.map_err(err)?;
            Ok(p)
        }
        .await;
        self.put(c);
        r
    }

    async fn delete_project(&self, name: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            let id = project_id(&tx, name).await?;
            let active = query(&tx, schema::ACTIVE_KEYS_OF, &[id.as_str().into()], |r| Ok(r.int(0)?.unwrap_or(0))).await?.pop().unwrap_or(0);
            if active > 0 {
                return Err(StoreError::Conflict(format!("project `{name}` has {active} active key(s); revoke them first")));
            }
            exec(&tx, schema::DELETE_PROJECT, &[id.into()]).await?;
            bump(&tx).await?;
            tx.commit().await.map_err(err)
        }
        .await;
        self.put(c);
        r
    }

    async fn projects(&self) -> Result<Vec<Project>, StoreError> {
        let c = self.conn().await?;
        let r = query(&c, &format!("SELECT {} FROM projects ORDER BY name", schema::PROJECT_COLS), &[], rows::project).await;
        self.put(c);
        r
    }

    async fn project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        let c = self.conn().await?;
        let r = project_by_name(&c, name, false).await;
        self.put(c);
        r
    }

    async fn insert_key(&self, key: &ApiKey, project: Option<&str>) -> Result<ApiKey, StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            // FOR UPDATE: a concurrent delete of the project waits for this key, then sees it.
            let pid = match project {
                Some(p) => Some(project_id(&tx, p).await?),
                None => None,
            };
            exec(&tx, schema::INSERT_KEY, &rows::key_params(key, pid.as_deref()))
                .await
                .map_err(|e| renamed_duplicate(e, format!("an active key named `{}` already exists", key.name)))?;
            bump(&tx).await?;
            tx.commit().await.map_err(err)?;
            Ok(ApiKey { project_id: pid, project: project.map(str::to_string), ..key.clone() })
        }
        .await;
        self.put(c);
        r
    }

    async fn keys(&self, project: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let c = self.conn().await?;
        let r = match project {
            Some(p) => query(&c, &format!("{} WHERE p.name = $1 ORDER BY k.created_at, k.id", schema::KEY_SELECT), &[p.into()], rows::key).await,
            None => query(&c, &format!("{} ORDER BY k.created_at, k.id", schema::KEY_SELECT), &[], rows::key).await,
        };
        self.put(c);
        r
    }

    async fn revoke_key(&self, id_or_name: &str, now: i64) -> Result<ApiKey, StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            let sql = format!("{} WHERE (k.id = $1 OR k.name = $1) AND k.revoked_at IS NULL FOR UPDATE OF k", schema::KEY_SELECT);
            let mut found = query(&tx, &sql, &[id_or_name.into()], rows::key).await?;
            if found.len() > 1 {
                return Err(StoreError::Conflict(format!("`{id_or_name}` matches several keys; use the key id")));
            }
            let mut key = found.pop().ok_or_else(|| StoreError::NotFound(format!("no active key `{id_or_name}`")))?;
            exec(&tx, schema::REVOKE_KEY, &[key.id.as_str().into(), now.into()]).await?;
            bump(&tx).await?;
            tx.commit().await.map_err(err)?;
            key.revoked_at = Some(now);
            Ok(key)
        }
        .await;
        self.put(c);
        r
    }

    async fn touch_keys(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            for (id, ts) in used {
                exec(&tx, schema::TOUCH_KEY, &[id.as_str().into(), (*ts).into()]).await?;
            }
            tx.commit().await.map_err(err)
        }
        .await;
        self.put(c);
        r
    }

    async fn insert_usage(&self, records: Arc<Vec<UsageRecord>>) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            for chunk in records.chunks(schema::USAGE_ROWS_PER_INSERT) {
                let mut ps = Vec::with_capacity(chunk.len() * schema::USAGE_NCOLS);
                for r in chunk {
                    rows::usage_params(r, &mut ps);
                }
                exec(&tx, &schema::insert_usage_sql(chunk.len()), &ps).await?;
            }
            tx.commit().await.map_err(err)
        }
        .await;
        self.put(c);
        r
    }

    async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError> {
        let (sql, ps) = rows::usage_query(filter);
        let c = self.conn().await?;
        let r = query(&c, &sql, &ps, rows::usage).await;
        self.put(c);
        r
    }

    async fn usage_summary(&self, filter: &UsageFilter) -> Result<UsageSummary, StoreError> {
        let (sql, ps) = rows::usage_summary_query(filter);
        let c = self.conn().await?;
        let r = query(&c, &sql, &ps, rows::usage_summary).await;
        self.put(c);
        Ok(r?.pop().unwrap_or_default())
    }

    async fn usage_series(&self, filter: &UsageFilter, step_ms: i64) -> Result<Vec<UsageBucket>, StoreError> {
        let (sql, ps) = rows::usage_series_query(filter, step_ms);
        let c = self.conn().await?;
        let r = query(&c, &sql, &ps, rows::usage_bucket).await;
        self.put(c);
        r
    }

    async fn spend_since(&self, since_ms: i64, exclude_instance: &str) -> Result<Vec<(String, f64)>, StoreError> {
        let c = self.conn().await?;
        let r = query(&c, schema::SPEND_SINCE, &[since_ms.into(), exclude_instance.into()], |r| {
            Ok((r.text(0)?.unwrap_or_default(), r.real(1)?.unwrap_or(0.0)))
        })
        .await;
        self.put(c);
        r
    }

    async fn insert_prices(&self, rows: Vec<[Param; schema::PRICE_NCOLS]>) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            for chunk in rows.chunks(schema::PRICE_ROWS_PER_INSERT) {
                exec(&tx, &schema::insert_prices_sql(chunk.len()), chunk.as_flattened()).await?;
            }
            tx.commit().await.map_err(err)
        }
        .await;
        self.put(c);
        r
    }

    async fn prices_between(&self, since_ms: i64, until_ms: i64) -> Result<Vec<Frame>, StoreError> {
        let c = self.conn().await?;
        let r = query(&c, schema::PRICES_BETWEEN, &[since_ms.into(), until_ms.into()], rows::price_point).await;
        self.put(c);
        Ok(rows::frames(r?))
    }

    async fn delete_prices_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        let r = exec(&c, schema::DELETE_PRICES_BEFORE, &[before_ms.into()]).await;
        self.put(c);
        r
    }

    async fn insert_response(&self, r: &KeptResponse) -> Result<(), StoreError> {
        let ps = [r.id.clone().into(), r.owner.clone().into(), r.created_ms.into(), r.expires_ms.into(), r.object.clone().into(), r.conversation.clone().into()];
        let c = self.conn().await?;
        let res = async {
            exec(&c, schema::DELETE_EXPIRED_RESPONSES, &[r.created_ms.into()]).await?;
            exec(&c, schema::INSERT_RESPONSE, &ps).await.map(|_| ())
        }
        .await;
        self.put(c);
        res
    }

    async fn response(&self, id: &str, owner: &str, now_ms: i64) -> Result<Option<(String, String)>, StoreError> {
        let c = self.conn().await?;
        let ps = [id.into(), owner.into(), now_ms.into()];
        let r = query(&c, schema::SELECT_RESPONSE, &ps, |r| Ok((r.text(0)?.unwrap_or_default(), r.text(1)?.unwrap_or_default()))).await;
        self.put(c);
        Ok(r?.into_iter().next())
    }

    async fn delete_response(&self, id: &str, owner: &str, now_ms: i64) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let r = exec(&c, schema::DELETE_RESPONSE, &[id.into(), owner.into(), now_ms.into()]).await;
        self.put(c);
        r.map(|n| n > 0)
    }

    async fn insert_file(&self, f: FileObject, content: String) -> Result<(), StoreError> {
        let ps = batch::file_params(&f, content);
        let c = self.conn().await?;
        let r = exec(&c, schema::INSERT_FILE, &ps).await;
        self.put(c);
        r.map(|_| ())
    }

    async fn files(&self, sql: String, ps: Vec<Param>) -> Result<Vec<FileObject>, StoreError> {
        let c = self.conn().await?;
        let r = query(&c, &sql, &ps, batch::file).await;
        self.put(c);
        r
    }

    async fn file_content(&self, owner: &str, id: &str) -> Result<Option<String>, StoreError> {
        let c = self.conn().await?;
        let r = query(&c, schema::FILE_CONTENT, &[owner.into(), id.into()], |r| r.text(0)).await;
        self.put(c);
        Ok(r?.pop().flatten())
    }

    async fn insert_batch(&self, b: BatchRecord, lines: Vec<NewLine>) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            exec(&tx, schema::INSERT_BATCH, &batch::batch_params(&b)).await?;
            for chunk in lines.chunks(schema::LINE_ROWS_PER_INSERT) {
                exec(&tx, &schema::insert_lines_sql(chunk.len()), &batch::line_params(&b.id, chunk)).await?;
            }
            tx.commit().await.map_err(err)
        }
        .await;
        self.put(c);
        r
    }

    async fn batches(&self, reads: BatchReads) -> Result<Vec<BatchRecord>, StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            // The rows and their lines from one snapshot.
            let tx = c.build_transaction().read_only(true).isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).start().await.map_err(err)?;
            let rows = query(&tx, &reads.rows.0, &reads.rows.1, batch::batch).await?;
            if rows.is_empty() {
                return Ok(rows);
            }
            let totals = query(&tx, &reads.totals.0, &reads.totals.1, batch::line_totals).await?;
            let sites = query(&tx, &reads.sites.0, &reads.sites.1, batch::line_site).await?;
            tx.commit().await.map_err(err)?;
            Ok(batch::assemble(rows, totals, sites))
        }
        .await;
        self.put(c);
        r
    }

    async fn update(&self, sql: String, ps: Vec<Param>) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        let r = exec(&c, &sql, &ps).await;
        self.put(c);
        r
    }

    async fn lease_lines(&self, batch_id: &str, n: u32, instance: &str, now_ms: i64, until_ms: i64) -> Result<Vec<LeasedLine>, StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            // The lines are chosen and locked with `FOR UPDATE SKIP LOCKED`, so instances
            // leasing at once take disjoint lines, then leased in the same transaction.
            let tx = c.transaction().await.map_err(err)?;
            let ps = [batch_id.into(), i64::from(n).into(), now_ms.into()];
            let picked = query(&tx, schema::PICK_LINES_PG, &ps, |r| r.int(0)?.ok_or_else(|| StoreError::Backend("NULL line".into()))).await?;
            let mut leased = Vec::with_capacity(picked.len());
            for chunk in picked.chunks(schema::LINES_PER_STATEMENT) {
                let mut ps: Vec<Param> = vec![batch_id.into(), instance.into(), until_ms.into()];
                ps.extend(chunk.iter().map(|&l| Param::from(l)));
                leased.extend(query(&tx, &schema::lease_picked_sql(chunk.len()), &ps, batch::leased).await?);
            }
            tx.commit().await.map_err(err)?;
            Ok(leased)
        }
        .await;
        self.put(c);
        r
    }

    async fn release_lines(&self, batch_id: &str, lines: &[i64], instance: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = async {
            let tx = c.transaction().await.map_err(err)?;
            for chunk in lines.chunks(schema::LINES_PER_STATEMENT) {
                let mut ps: Vec<Param> = vec![batch_id.into(), instance.into()];
                ps.extend(chunk.iter().map(|&l| Param::from(l)));
                exec(&tx, &schema::release_lines_sql(chunk.len()), &ps).await?;
            }
            tx.commit().await.map_err(err)
        }
        .await;
        self.put(c);
        r
    }

    async fn finished_lines(&self, batch_id: &str) -> Result<Vec<FinishedLine>, StoreError> {
        let c = self.conn().await?;
        let r = query(&c, schema::FINISHED_LINES, &[batch_id.into()], batch::finished).await;
        self.put(c);
        r
    }

    async fn unfinished_lines(&self, batch_id: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let c = self.conn().await?;
        let r = query(&c, schema::UNFINISHED_LINES, &[batch_id.into()], batch::unfinished).await;
        self.put(c);
        r
    }

    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let config = self.config.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            while !tx.is_closed() {
                if let Ok((client, mut conn)) = config.connect(NoTls).await {
                    let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
                    let driver = tokio::spawn(async move {
                        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                        while let Some(Ok(m)) = messages.next().await {
                            if let AsyncMessage::Notification(_) = m {
                                let _ = ntx.send(());
                            }
                        }
                    });
                    if client.batch_execute(&format!("LISTEN {CHANNEL}")).await.is_ok() {
                        backoff = Duration::from_millis(100);
                        tracing::debug!("listening for store changes");
                        // Changes made while not listening were missed: resynchronise now.
                        let _ = tx.try_send(());
                        while nrx.recv().await.is_some() {
                            // A full channel already means "refresh": dropping extras is fine.
                            let _ = tx.try_send(());
                        }
                    }
                    driver.abort();
                    drop(client);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        Some(rx)
    }
}
