//! The batch API's persistence: [`BatchStore`] for [`Store`] — files (with their content),
//! batches, and one row per input line with its state and row lease — and what both backends
//! share about it: the selections (owner, pagination after an id, the scheduler's active list),
//! the parameters of the rows written, reading rows back, and assembling a batch's line
//! counts, cost and sites from its lines.
//!
//! A batch read is three queries in one read transaction whatever the number of batches or
//! lines: the batch rows, one `GROUP BY` over their lines (counts and sums), and the distinct
//! sites of their finished lines. Every call runs on the store runtime; owner checks are part
//! of the SQL (`WHERE owner = …`).

use std::collections::HashMap;

use async_trait::async_trait;

use super::rows::{req_int, req_text, Param, RowLike};
use super::schema;
use super::{Store, StoreError};
use crate::batch::{
    BatchRecord, BatchStatus, BatchStore, BatchStoreError, FileObject, FinishedLine, LeasedLine, LineCounts, LineResult, NewLine, Transition,
};
use crate::clock::now_ms;

/// The three reads that make [`BatchRecord`]s for one selection of batches: the rows, their
/// lines' totals ([`LineTotals`]) and their finished lines' sites. Each is SQL with its
/// parameters; the selection is repeated as a subquery, so no id list is ever bound.
#[derive(Debug, Clone)]
pub(crate) struct BatchReads {
    pub rows: (String, Vec<Param>),
    pub totals: (String, Vec<Param>),
    pub sites: (String, Vec<Param>),
}

/// One batch's line counts and finished lines' cost and energy cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct LineTotals {
    pub counts: LineCounts,
    pub cost: f64,
    pub energy_cost: f64,
}

/// `sel` (`WHERE … ORDER BY … [LIMIT …]` on `batches`, with its parameters) as the three reads;
/// a lease counts as in flight if it outlasts `now_ms` (wall clock).
fn reads(sel: &str, ps: Vec<Param>, now_ms: i64) -> BatchReads {
    let mut totals_ps = ps.clone();
    totals_ps.push(now_ms.into());
    let now = totals_ps.len();
    BatchReads {
        rows: (format!("SELECT {} FROM batches {sel}", schema::BATCH_COLS), ps.clone()),
        totals: (schema::line_totals_sql(sel, now), totals_ps),
        sites: (schema::line_sites_sql(sel), ps),
    }
}

/// One batch by id, of `owner` if given.
fn one_batch(owner: Option<&str>, id: &str, now_ms: i64) -> BatchReads {
    match owner {
        Some(o) => reads("WHERE id = $1 AND owner = $2", vec![id.into(), o.into()], now_ms),
        None => reads("WHERE id = $1", vec![id.into()], now_ms),
    }
}

/// The owner's batches, newest first, after the batch `after` (none if `after` is not one of
/// the owner's batches).
fn owner_batches(owner: &str, after: Option<&str>, limit: u32, now_ms: i64) -> BatchReads {
    match after {
        Some(a) => reads(
            "WHERE owner = $1 AND (created_ms, id) < (SELECT created_ms, id FROM batches WHERE id = $2 AND owner = $1) \
             ORDER BY created_ms DESC, id DESC LIMIT $3",
            vec![owner.into(), a.into(), i64::from(limit).into()],
            now_ms,
        ),
        None => reads("WHERE owner = $1 ORDER BY created_ms DESC, id DESC LIMIT $2", vec![owner.into(), i64::from(limit).into()], now_ms),
    }
}

/// Every batch in a status that is not terminal, oldest first.
fn active(now_ms: i64) -> BatchReads {
    let open: Vec<BatchStatus> = BatchStatus::ALL.into_iter().filter(|s| !s.is_terminal()).collect();
    let list: Vec<String> = (1..=open.len()).map(|i| format!("${i}")).collect();
    let sel = format!("WHERE status IN ({}) ORDER BY created_ms, id", list.join(", "));
    reads(&sel, open.iter().map(|s| s.as_str().into()).collect(), now_ms)
}

/// The query for one file's metadata, of `owner`.
pub(crate) fn file_query(owner: &str, id: &str) -> (String, Vec<Param>) {
    (format!("SELECT {} FROM batch_files WHERE owner = $1 AND id = $2", schema::FILE_COLS), vec![owner.into(), id.into()])
}

/// The query for a page of the owner's files: by `(created_ms, id)`, descending unless
/// `ascending`, only of `purpose` if given, strictly after the owner's file `after` (none if
/// there is no such file).
pub(crate) fn files_query(owner: &str, purpose: Option<&str>, after: Option<&str>, limit: u32, ascending: bool) -> (String, Vec<Param>) {
    let mut ps: Vec<Param> = vec![owner.into()];
    let mut sql = format!("SELECT {} FROM batch_files WHERE owner = $1", schema::FILE_COLS);
    if let Some(p) = purpose {
        ps.push(p.into());
        sql.push_str(&format!(" AND purpose = ${}", ps.len()));
    }
    let (cmp, dir) = if ascending { (">", "ASC") } else { ("<", "DESC") };
    if let Some(a) = after {
        ps.push(a.into());
        sql.push_str(&format!(
            " AND (created_ms, id) {cmp} (SELECT created_ms, id FROM batch_files WHERE id = ${} AND owner = $1)",
            ps.len()
        ));
    }
    ps.push(i64::from(limit).into());
    sql.push_str(&format!(" ORDER BY created_ms {dir}, id {dir} LIMIT ${}", ps.len()));
    (sql, ps)
}

/// The parameters of [`schema::INSERT_FILE`].
pub(crate) fn file_params(f: &FileObject, content: String) -> Vec<Param> {
    vec![
        f.id.as_str().into(),
        f.owner.as_str().into(),
        f.purpose.as_str().into(),
        f.filename.as_str().into(),
        f.bytes.into(),
        f.created_ms.into(),
        f.lines.into(),
        content.into(),
    ]
}

/// A row of `SELECT {FILE_COLS}`.
pub(crate) fn file(r: &dyn RowLike) -> Result<FileObject, StoreError> {
    Ok(FileObject {
        id: req_text(r, 0)?,
        owner: req_text(r, 1)?,
        purpose: req_text(r, 2)?,
        filename: req_text(r, 3)?,
        bytes: req_int(r, 4)?,
        created_ms: req_int(r, 5)?,
        lines: req_int(r, 6)?,
    })
}

/// The parameters of [`schema::INSERT_BATCH`] ([`schema::BATCH_COLS`] order).
pub(crate) fn batch_params(b: &BatchRecord) -> Vec<Param> {
    vec![
        b.id.as_str().into(),
        b.owner.as_str().into(),
        b.project_id.clone().into(),
        b.key_id.as_str().into(),
        b.model.as_str().into(),
        b.input_file_id.as_str().into(),
        b.endpoint.as_str().into(),
        b.window_s.into(),
        b.metadata.clone().into(),
        b.status.as_str().into(),
        b.created_ms.into(),
        b.expires_ms.into(),
        b.in_progress_ms.into(),
        b.finalizing_ms.into(),
        b.completed_ms.into(),
        b.failed_ms.into(),
        b.expired_ms.into(),
        b.cancelling_ms.into(),
        b.cancelled_ms.into(),
        b.output_file_id.clone().into(),
        b.error_file_id.clone().into(),
        b.errors.clone().into(),
        b.planned_start_ms.into(),
        b.estimate_at_submission.into(),
        b.est_input_tokens.into(),
        b.est_output_tokens.into(),
    ]
}

/// A row of `SELECT {BATCH_COLS}`, with zero counts and sums (see [`assemble`]).
pub(crate) fn batch(r: &dyn RowLike) -> Result<BatchRecord, StoreError> {
    let status = req_text(r, 9)?;
    let real = |i| r.real(i).map(Option::unwrap_or_default);
    Ok(BatchRecord {
        id: req_text(r, 0)?,
        owner: req_text(r, 1)?,
        project_id: r.text(2)?,
        key_id: req_text(r, 3)?,
        model: req_text(r, 4)?,
        input_file_id: req_text(r, 5)?,
        endpoint: req_text(r, 6)?,
        window_s: req_int(r, 7)?,
        metadata: r.text(8)?,
        status: BatchStatus::parse(&status).ok_or_else(|| StoreError::Backend(format!("unknown batch status `{status}`")))?,
        created_ms: req_int(r, 10)?,
        expires_ms: req_int(r, 11)?,
        in_progress_ms: r.int(12)?,
        finalizing_ms: r.int(13)?,
        completed_ms: r.int(14)?,
        failed_ms: r.int(15)?,
        expired_ms: r.int(16)?,
        cancelling_ms: r.int(17)?,
        cancelled_ms: r.int(18)?,
        output_file_id: r.text(19)?,
        error_file_id: r.text(20)?,
        errors: r.text(21)?,
        planned_start_ms: r.int(22)?,
        estimate_at_submission: real(23)?,
        est_input_tokens: real(24)?,
        est_output_tokens: real(25)?,
        counts: LineCounts::default(),
        cost: 0.0,
        energy_cost: 0.0,
        sites: Vec::new(),
    })
}

/// A row of [`schema::line_totals_sql`]: the batch id and its totals.
pub(crate) fn line_totals(r: &dyn RowLike) -> Result<(String, LineTotals), StoreError> {
    let int = |i| r.int(i).map(Option::unwrap_or_default);
    Ok((
        req_text(r, 0)?,
        LineTotals {
            counts: LineCounts { total: int(1)?, completed: int(2)?, failed: int(3)?, in_flight: int(4)? },
            cost: r.real(5)?.unwrap_or_default(),
            energy_cost: r.real(6)?.unwrap_or_default(),
        },
    ))
}

/// A row of [`schema::line_sites_sql`]: the batch id and a site.
pub(crate) fn line_site(r: &dyn RowLike) -> Result<(String, String), StoreError> {
    Ok((req_text(r, 0)?, req_text(r, 1)?))
}

/// The batches with their totals and sites (sorted, whatever the database's collation).
pub(crate) fn assemble(mut batches: Vec<BatchRecord>, totals: Vec<(String, LineTotals)>, sites: Vec<(String, String)>) -> Vec<BatchRecord> {
    let totals: HashMap<String, LineTotals> = totals.into_iter().collect();
    let mut by_batch: HashMap<String, Vec<String>> = HashMap::new();
    for (id, site) in sites {
        by_batch.entry(id).or_default().push(site);
    }
    for b in &mut batches {
        if let Some(t) = totals.get(&b.id) {
            b.counts = t.counts;
            b.cost = t.cost;
            b.energy_cost = t.energy_cost;
        }
        if let Some(mut s) = by_batch.remove(&b.id) {
            s.sort();
            s.dedup();
            b.sites = s;
        }
    }
    batches
}

/// The parameters of one [`schema::insert_lines_sql`] statement for `chunk`.
pub(crate) fn line_params(batch_id: &str, chunk: &[NewLine]) -> Vec<Param> {
    let mut ps = Vec::with_capacity(1 + 3 * chunk.len());
    ps.push(batch_id.into());
    for l in chunk {
        ps.extend([l.line.into(), l.custom_id.as_str().into(), l.body.as_str().into()]);
    }
    ps
}

/// A row of the lease statements' `RETURNING line, custom_id, body, attempts`.
pub(crate) fn leased(r: &dyn RowLike) -> Result<LeasedLine, StoreError> {
    Ok(LeasedLine { line: req_int(r, 0)?, custom_id: req_text(r, 1)?, body: req_text(r, 2)?, attempts: req_int(r, 3)? })
}

/// The parameters of [`schema::FINISH_LINE`].
pub(crate) fn finish_params(batch_id: &str, r: &LineResult) -> Vec<Param> {
    vec![
        batch_id.into(),
        r.line.into(),
        (if r.ok { "done" } else { "failed" }).into(),
        r.output.as_str().into(),
        r.cost.into(),
        r.energy_cost.into(),
        r.site.clone().into(),
        r.finished_ms.into(),
    ]
}

/// A row of [`schema::FINISHED_LINES`].
pub(crate) fn finished(r: &dyn RowLike) -> Result<FinishedLine, StoreError> {
    Ok(FinishedLine { line: req_int(r, 0)?, custom_id: req_text(r, 1)?, ok: req_text(r, 2)? == "done", output: r.text(3)?.unwrap_or_default() })
}

/// A row of [`schema::UNFINISHED_LINES`].
pub(crate) fn unfinished(r: &dyn RowLike) -> Result<(i64, String), StoreError> {
    Ok((req_int(r, 0)?, req_text(r, 1)?))
}

/// The column a status change to `to` stamps (`validating` has none: `created_ms` is set
/// when the batch is stored).
fn stamp_column(to: BatchStatus) -> Option<&'static str> {
    match to {
        BatchStatus::Validating => None,
        BatchStatus::Failed => Some("failed_ms"),
        BatchStatus::InProgress => Some("in_progress_ms"),
        BatchStatus::Finalizing => Some("finalizing_ms"),
        BatchStatus::Completed => Some("completed_ms"),
        BatchStatus::Expired => Some("expired_ms"),
        BatchStatus::Cancelling => Some("cancelling_ms"),
        BatchStatus::Cancelled => Some("cancelled_ms"),
    }
}

/// The conditional `UPDATE` of a status change, with its parameters; `None` if `from` is
/// empty (nothing can move).
pub(crate) fn transition(id: &str, from: &[BatchStatus], to: BatchStatus, at_ms: i64, change: &Transition) -> Option<(String, Vec<Param>)> {
    if from.is_empty() {
        return None;
    }
    let stamp = stamp_column(to);
    let mut ps: Vec<Param> = vec![
        id.into(),
        to.as_str().into(),
        change.output_file_id.clone().into(),
        change.error_file_id.clone().into(),
        change.errors.clone().into(),
    ];
    if stamp.is_some() {
        ps.push(at_ms.into());
    }
    ps.extend(from.iter().map(|s| Param::from(s.as_str())));
    Some((schema::transition_sql(stamp, from.len()), ps))
}

/// Whether the database can be reached is all a batch caller can act on.
fn batch_error(e: StoreError) -> BatchStoreError {
    match e {
        StoreError::Unavailable(m) => BatchStoreError::Unavailable(m),
        other => BatchStoreError::Backend(other.to_string()),
    }
}

/// Files, batches and lines in the store's tables; every call runs on the store runtime.
#[async_trait]
impl BatchStore for Store {
    async fn insert_file(&self, file: &FileObject, content: String) -> Result<(), BatchStoreError> {
        let (b, f) = (self.backend.clone(), file.clone());
        self.spawn(async move { b.insert_file(f, content).await }).await.map_err(batch_error)
    }

    async fn file(&self, owner: &str, id: &str) -> Result<Option<FileObject>, BatchStoreError> {
        let (b, (sql, ps)) = (self.backend.clone(), file_query(owner, id));
        let mut v = self.spawn(async move { b.files(sql, ps).await }).await.map_err(batch_error)?;
        Ok(v.pop())
    }

    async fn files(&self, owner: &str, purpose: Option<&str>, after: Option<&str>, limit: u32, ascending: bool) -> Result<Vec<FileObject>, BatchStoreError> {
        let (b, (sql, ps)) = (self.backend.clone(), files_query(owner, purpose, after, limit, ascending));
        self.spawn(async move { b.files(sql, ps).await }).await.map_err(batch_error)
    }

    async fn file_content(&self, owner: &str, id: &str) -> Result<Option<String>, BatchStoreError> {
        let (b, owner, id) = (self.backend.clone(), owner.to_string(), id.to_string());
        self.spawn(async move { b.file_content(&owner, &id).await }).await.map_err(batch_error)
    }

    async fn delete_file(&self, owner: &str, id: &str) -> Result<bool, BatchStoreError> {
        let (b, ps) = (self.backend.clone(), vec![owner.into(), id.into()]);
        let n = self.spawn(async move { b.update(schema::DELETE_FILE.to_string(), ps).await }).await.map_err(batch_error)?;
        Ok(n > 0)
    }

    async fn insert_batch(&self, batch: &BatchRecord, lines: &[NewLine]) -> Result<(), BatchStoreError> {
        let (b, batch, lines) = (self.backend.clone(), batch.clone(), lines.to_vec());
        self.spawn(async move { b.insert_batch(batch, lines).await }).await.map_err(batch_error)
    }

    async fn batch(&self, owner: Option<&str>, id: &str) -> Result<Option<BatchRecord>, BatchStoreError> {
        let (b, reads) = (self.backend.clone(), one_batch(owner, id, now_ms()));
        let mut v = self.spawn(async move { b.batches(reads).await }).await.map_err(batch_error)?;
        Ok(v.pop())
    }

    async fn batches(&self, owner: &str, after: Option<&str>, limit: u32) -> Result<Vec<BatchRecord>, BatchStoreError> {
        let (b, reads) = (self.backend.clone(), owner_batches(owner, after, limit, now_ms()));
        self.spawn(async move { b.batches(reads).await }).await.map_err(batch_error)
    }

    async fn active_batches(&self) -> Result<Vec<BatchRecord>, BatchStoreError> {
        let (b, reads) = (self.backend.clone(), active(now_ms()));
        self.spawn(async move { b.batches(reads).await }).await.map_err(batch_error)
    }

    async fn transition(&self, id: &str, from: &[BatchStatus], to: BatchStatus, at_ms: i64, change: &Transition) -> Result<bool, BatchStoreError> {
        let Some((sql, ps)) = transition(id, from, to, at_ms, change) else { return Ok(false) };
        let b = self.backend.clone();
        let n = self.spawn(async move { b.update(sql, ps).await }).await.map_err(batch_error)?;
        Ok(n > 0)
    }

    async fn set_planned_start(&self, id: &str, planned_start_ms: Option<i64>) -> Result<(), BatchStoreError> {
        let (b, ps) = (self.backend.clone(), vec![id.into(), planned_start_ms.into()]);
        self.spawn(async move { b.update(schema::SET_PLANNED_START.to_string(), ps).await }).await.map_err(batch_error)?;
        Ok(())
    }

    async fn lease_lines(&self, batch_id: &str, n: u32, instance: &str, now_ms: i64, until_ms: i64) -> Result<Vec<LeasedLine>, BatchStoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let (b, id, instance) = (self.backend.clone(), batch_id.to_string(), instance.to_string());
        let mut v = self.spawn(async move { b.lease_lines(&id, n, &instance, now_ms, until_ms).await }).await.map_err(batch_error)?;
        // `RETURNING` promises no order.
        v.sort_by_key(|l| l.line);
        Ok(v)
    }

    async fn renew_leases(&self, instance: &str, until_ms: i64) -> Result<(), BatchStoreError> {
        let (b, ps) = (self.backend.clone(), vec![instance.into(), until_ms.into()]);
        self.spawn(async move { b.update(schema::RENEW_LEASES.to_string(), ps).await }).await.map_err(batch_error)?;
        Ok(())
    }

    async fn release_lines(&self, batch_id: &str, lines: &[i64], instance: &str) -> Result<(), BatchStoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let (b, id, lines, instance) = (self.backend.clone(), batch_id.to_string(), lines.to_vec(), instance.to_string());
        self.spawn(async move { b.release_lines(&id, &lines, &instance).await }).await.map_err(batch_error)
    }

    async fn finish_line(&self, batch_id: &str, result: &LineResult) -> Result<bool, BatchStoreError> {
        let (b, ps) = (self.backend.clone(), finish_params(batch_id, result));
        let n = self.spawn(async move { b.update(schema::FINISH_LINE.to_string(), ps).await }).await.map_err(batch_error)?;
        Ok(n > 0)
    }

    async fn finished_lines(&self, batch_id: &str) -> Result<Vec<FinishedLine>, BatchStoreError> {
        let (b, id) = (self.backend.clone(), batch_id.to_string());
        self.spawn(async move { b.finished_lines(&id).await }).await.map_err(batch_error)
    }

    async fn unfinished_lines(&self, batch_id: &str) -> Result<Vec<(i64, String)>, BatchStoreError> {
        let (b, id) = (self.backend.clone(), batch_id.to_string());
        self.spawn(async move { b.unfinished_lines(&id).await }).await.map_err(batch_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_number_their_parameters() {
        let (sql, ps) = files_query("project:p", Some("batch"), Some("file-1"), 20, true);
        assert!(sql.contains("owner = $1 AND purpose = $2 AND (created_ms, id) > (SELECT created_ms, id FROM batch_files WHERE id = $3 AND owner = $1)"), "{sql}");
        assert!(sql.ends_with("ORDER BY created_ms ASC, id ASC LIMIT $4"), "{sql}");
        assert_eq!(ps.len(), 4);
        let r = owner_batches("o", Some("batch_1"), 5, 7);
        assert_eq!((r.rows.1.len(), r.totals.1.len(), r.sites.1.len()), (3, 4, 3));
        assert!(r.totals.0.contains("lease_until_ms > $4") && r.totals.0.contains("LIMIT $3)"), "{}", r.totals.0);
        let a = active(1);
        assert_eq!(a.rows.1, ["validating", "in_progress", "finalizing", "cancelling"].map(Param::from).to_vec());
        assert!(a.rows.0.ends_with("WHERE status IN ($1, $2, $3, $4) ORDER BY created_ms, id"), "{}", a.rows.0);
    }

    #[test]
    fn transitions_stamp_the_target_status() {
        let change = Transition { output_file_id: Some("file-o".into()), ..Transition::default() };
        let (sql, ps) = transition("b", &[BatchStatus::InProgress, BatchStatus::Finalizing], BatchStatus::Completed, 9, &change).unwrap();
        assert!(sql.contains("completed_ms = $6 WHERE id = $1 AND status IN ($7, $8)"), "{sql}");
        assert_eq!(ps.len(), 8);
        assert_eq!(ps[5], Param::from(9));
        let (sql, ps) = transition("b", &[BatchStatus::Validating], BatchStatus::Validating, 9, &change).unwrap();
        assert!(!sql.contains("_ms =") && ps.len() == 6, "{sql}");
        assert!(transition("b", &[], BatchStatus::Failed, 9, &change).is_none());
        for s in BatchStatus::ALL {
            assert!(stamp_column(s).is_none_or(|c| schema::BATCH_COLS.contains(c)));
        }
    }
}
