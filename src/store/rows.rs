//! What both backends share about rows: bound parameter values, reading a row into
//! [`Project`], [`ApiKey`], [`UsageRecord`] and price history [`Frame`]s, and building the
//! usage query from a filter.

use std::sync::Arc;

use super::schema;
use super::{ApiKey, BudgetPeriod, Project, StoreError, UsageFilter};
use crate::pricing::history::{Frame, FramePoint};
use crate::usage::UsageRecord;

/// A bound parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}
impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}
impl From<Option<u32>> for Param {
    fn from(v: Option<u32>) -> Self {
        Param::Int(v.map(i64::from))
    }
}
impl From<Option<u64>> for Param {
    fn from(v: Option<u64>) -> Self {
        Param::Int(v.map(|x| i64::try_from(x).unwrap_or(i64::MAX)))
    }
}
impl From<f64> for Param {
    fn from(v: f64) -> Self {
        Param::Real(Some(v))
    }
}
impl From<Option<f64>> for Param {
    fn from(v: Option<f64>) -> Self {
        Param::Real(v)
    }
}
impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(Some(v.to_string()))
    }
}
impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(Some(v))
    }
}
impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Self {
        Param::Text(v)
    }
}
impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        Param::Text(v.map(str::to_string))
    }
}

/// Column access both backends' rows provide.
pub trait RowLike {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn real(&self, i: usize) -> Result<Option<f64>, StoreError>;
    fn text(&self, i: usize) -> Result<Option<String>, StoreError>;
}

fn missing(i: usize) -> StoreError {
    StoreError::Backend(format!("unexpected NULL in column {i}"))
}

pub(super) fn req_int(r: &dyn RowLike, i: usize) -> Result<i64, StoreError> {
    r.int(i)?.ok_or_else(|| missing(i))
}
pub(super) fn req_text(r: &dyn RowLike, i: usize) -> Result<String, StoreError> {
    r.text(i)?.ok_or_else(|| missing(i))
}
fn opt_u32(r: &dyn RowLike, i: usize) -> Result<Option<u32>, StoreError> {
    Ok(r.int(i)?.and_then(|v| u32::try_from(v).ok()))
}
fn opt_u64(r: &dyn RowLike, i: usize) -> Result<Option<u64>, StoreError> {
    Ok(r.int(i)?.and_then(|v| u64::try_from(v).ok()))
}

/// The parameters of [`schema::INSERT_PROJECT`] (and, with `updated_at`, of `UPDATE_PROJECT`).
pub fn project_params(p: &Project) -> Vec<Param> {
    vec![
        p.id.as_str().into(),
        p.name.as_str().into(),
        Param::Text(p.allowed_models.as_ref().map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()))),
        p.default_strategy.clone().into(),
        p.rpm.into(),
        p.tpm.into(),
        p.budget_usd.into(),
        p.budget_period.as_str().into(),
        p.created_at.into(),
        p.updated_at.into(),
    ]
}

/// The parameters of [`schema::UPDATE_PROJECT`].
pub fn project_update_params(p: &Project) -> Vec<Param> {
    let mut v = project_params(p);
    v.remove(8); // created_at never changes
    v
}

/// A row of `SELECT {PROJECT_COLS}`.
pub fn project(r: &dyn RowLike) -> Result<Project, StoreError> {
    let models = match r.text(2)? {
        None => None,
        Some(s) => Some(serde_json::from_str(&s).map_err(|e| StoreError::Backend(format!("allowed_models: {e}")))?),
    };
    Ok(Project {
        id: req_text(r, 0)?,
        name: req_text(r, 1)?,
        allowed_models: models,
        default_strategy: r.text(3)?,
        rpm: opt_u32(r, 4)?,
        tpm: opt_u32(r, 5)?,
        budget_usd: r.real(6)?,
        budget_period: BudgetPeriod::parse(&req_text(r, 7)?).unwrap_or_default(),
        created_at: req_int(r, 8)?,
        updated_at: req_int(r, 9)?,
    })
}

/// The parameters of [`schema::INSERT_KEY`], with the resolved project id.
pub fn key_params(k: &ApiKey, project_id: Option<&str>) -> Vec<Param> {
    vec![
        k.id.as_str().into(),
        k.name.as_str().into(),
        k.hash.as_str().into(),
        k.prefix.as_str().into(),
        project_id.into(),
        k.rpm.into(),
        k.tpm.into(),
        k.created_at.into(),
    ]
}

/// A row of [`schema::KEY_SELECT`].
pub fn key(r: &dyn RowLike) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: req_text(r, 0)?,
        name: req_text(r, 1)?,
        prefix: req_text(r, 2)?,
        project_id: r.text(3)?,
        project: r.text(4)?,
        rpm: opt_u32(r, 5)?,
        tpm: opt_u32(r, 6)?,
        created_at: req_int(r, 7)?,
        last_used_at: r.int(8)?,
        revoked_at: r.int(9)?,
        hash: req_text(r, 10)?,
    })
}

/// Appends a usage record's parameters in [`schema::USAGE_COLS`] order.
pub fn usage_params(u: &UsageRecord, out: &mut Vec<Param>) {
    out.extend([
        u.id.as_str().into(),
        u.ts_ms.into(),
        u.instance.as_str().into(),
        u.project_id.clone().into(),
        u.key_id.clone().into(),
        u.key_name.clone().into(),
        u.model.clone().into(),
        u.strategy.clone().into(),
        u.deployment.clone().into(),
        u.data_center.clone().into(),
        i64::from(u.status).into(),
        u.outcome.as_str().into(),
        i64::from(u.stream).into(),
        u.ttft_ms.into(),
        u.latency_ms.into(),
        u.tokens_in.into(),
        u.tokens_out.into(),
        u.price_input.into(),
        u.price_output.into(),
        u.cost_input.into(),
        u.cost_output.into(),
        u.cost_fee.into(),
        u.cost_total.into(),
    ]);
}

/// A row of `SELECT {USAGE_COLS}`.
pub fn usage(r: &dyn RowLike) -> Result<UsageRecord, StoreError> {
    Ok(UsageRecord {
        id: req_text(r, 0)?,
        ts_ms: req_int(r, 1)?,
        instance: req_text(r, 2)?,
        project_id: r.text(3)?,
        key_id: r.text(4)?,
        key_name: r.text(5)?,
        model: r.text(6)?,
        strategy: r.text(7)?,
        deployment: r.text(8)?,
        data_center: r.text(9)?,
        status: u16::try_from(req_int(r, 10)?).unwrap_or(0),
        outcome: req_text(r, 11)?,
        stream: req_int(r, 12)? != 0,
        ttft_ms: r.real(13)?,
        latency_ms: r.real(14)?.unwrap_or(0.0),
        tokens_in: opt_u64(r, 15)?,
        tokens_out: opt_u64(r, 16)?,
        price_input: r.real(17)?,
        price_output: r.real(18)?,
        cost_input: r.real(19)?.unwrap_or(0.0),
        cost_output: r.real(20)?.unwrap_or(0.0),
        cost_fee: r.real(21)?.unwrap_or(0.0),
        cost_total: r.real(22)?.unwrap_or(0.0),
    })
}

/// The price history rows of `frames` in [`schema::PRICE_COLS`] order, one per frame and
/// deployment. Of several frames at the same second only the last one's row is kept: one
/// statement may not touch a row twice, and the later frame is the state in force.
pub fn price_rows(frames: &[Arc<Frame>]) -> Vec<[Param; schema::PRICE_NCOLS]> {
    let mut last: std::collections::HashMap<(i64, &str), usize> = std::collections::HashMap::new();
    let mut rows = Vec::new();
    for f in frames {
        for p in &f.points {
            let row = [
                f.t.saturating_mul(1000).into(),
                (&*p.deployment).into(),
                p.input.into(),
                p.output.into(),
                p.usd_per_mwh.into(),
                i64::from(p.stale).into(),
            ];
            match last.entry((f.t, &*p.deployment)) {
                std::collections::hash_map::Entry::Occupied(e) => rows[*e.get()] = row,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(rows.len());
                    rows.push(row);
                }
            }
        }
    }
    rows
}

/// Frames from rows of [`schema::PRICES_BETWEEN`] (ordered by time): consecutive rows of the
/// same time make one frame.
pub fn frames(r: Vec<(i64, FramePoint)>) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::new();
    for (t, p) in r {
        match out.last_mut() {
            Some(f) if f.t == t => f.points.push(p),
            _ => out.push(Frame { t, points: vec![p] }),
        }
    }
    out
}

/// A row of [`schema::PRICES_BETWEEN`]: the frame time (Unix seconds) and the point.
pub fn price_point(r: &dyn RowLike) -> Result<(i64, FramePoint), StoreError> {
    let t = req_int(r, 0)?.div_euclid(1000);
    let real = |i| r.real(i)?.ok_or_else(|| missing(i));
    Ok((
        t,
        FramePoint {
            deployment: req_text(r, 1)?.into(),
            input: real(2)?,
            output: real(3)?,
            usd_per_mwh: r.real(4)?,
            stale: req_int(r, 5)? != 0,
        },
    ))
}

/// A row of [`usage_summary_query`].
pub fn usage_summary(r: &dyn RowLike) -> Result<super::UsageSummary, StoreError> {
    totals_at(r, 0)
}

/// A row of [`usage_series_query`].
pub fn usage_bucket(r: &dyn RowLike) -> Result<super::UsageBucket, StoreError> {
    Ok(super::UsageBucket { t: req_int(r, 0)?, totals: totals_at(r, 1)? })
}

/// Count, tokens in, tokens out and cost from column `at` on.
fn totals_at(r: &dyn RowLike, at: usize) -> Result<super::UsageSummary, StoreError> {
    let count = u64::try_from(r.int(at)?.unwrap_or(0)).unwrap_or(0);
    // Sums are `DOUBLE PRECISION` (see `schema::SUMMED_TOKENS_IN`); `as` saturates (NaN → 0).
    let sum = |i| -> Result<u64, StoreError> { Ok(r.real(at + i)?.unwrap_or(0.0) as u64) };
    Ok(super::UsageSummary { requests: count, tokens_in: sum(1)?, tokens_out: sum(2)?, cost_usd: r.real(at + 3)?.unwrap_or(0.0) })
}

/// `WHERE …` for a usage filter (cursor included when `with_cursor`), with its parameters.
fn usage_where(f: &UsageFilter, with_cursor: bool) -> (String, Vec<Param>) {
    let mut conds: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let mut add = |cond: &str, p: Vec<Param>, params: &mut Vec<Param>| {
        let mut c = cond.to_string();
        for (i, v) in p.into_iter().enumerate() {
            params.push(v);
            c = c.replace(&format!("#{}", i + 1), &format!("${}", params.len()));
        }
        conds.push(c);
    };
    if let Some(p) = &f.project_id {
        add("project_id = #1", vec![p.as_str().into()], &mut params);
    }
    if let Some(k) = &f.key_id {
        add("key_id = #1", vec![k.as_str().into()], &mut params);
    }
    if let Some(m) = &f.model {
        add("model = #1", vec![m.as_str().into()], &mut params);
    }
    if let Some(s) = f.status {
        add("status = #1", vec![i64::from(s).into()], &mut params);
    }
    if let Some(t) = f.since_ms {
        add("ts_ms >= #1", vec![t.into()], &mut params);
    }
    if let Some(t) = f.until_ms {
        add("ts_ms < #1", vec![t.into()], &mut params);
    }
    if let (true, Some(c)) = (with_cursor, &f.after) {
        add("(ts_ms < #1 OR (ts_ms = #2 AND id < #3))", vec![c.ts_ms.into(), c.ts_ms.into(), c.id.as_str().into()], &mut params);
    }
    if conds.is_empty() {
        (String::new(), params)
    } else {
        (format!(" WHERE {}", conds.join(" AND ")), params)
    }
}

/// The page query for a filter.
pub fn usage_query(f: &UsageFilter) -> (String, Vec<Param>) {
    let (w, mut params) = usage_where(f, true);
    params.push(i64::from(f.limit).into());
    let n = params.len();
    (format!("SELECT {} FROM usage_records{w} ORDER BY ts_ms DESC, id DESC LIMIT ${n}", schema::USAGE_COLS), params)
}

/// The totals query for a filter: count, tokens in, tokens out, cost.
pub fn usage_summary_query(f: &UsageFilter) -> (String, Vec<Param>) {
    let (w, params) = usage_where(f, false);
    (format!("SELECT {} FROM usage_records{w}", totals_columns()), params)
}

/// The totals query per `step_ms` bucket: bucket start, then the totals' columns.
pub fn usage_series_query(f: &UsageFilter, step_ms: i64) -> (String, Vec<Param>) {
    let (w, mut params) = usage_where(f, false);
    params.push(step_ms.into());
    let n = params.len();
    // Integer division on both backends (`ts_ms` and the parameter are BIGINT).
    (format!("SELECT (ts_ms / ${n}) * ${n} AS bucket, {} FROM usage_records{w} GROUP BY bucket ORDER BY bucket", totals_columns()), params)
}

fn totals_columns() -> String {
    format!(
        "COUNT(*), CAST(COALESCE({}, 0) AS DOUBLE PRECISION), CAST(COALESCE({}, 0) AS DOUBLE PRECISION), CAST(COALESCE({}, 0) AS DOUBLE PRECISION)",
        schema::SUMMED_TOKENS_IN,
        schema::SUMMED_TOKENS_OUT,
        schema::SUMMED_COST
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Cursor;

    #[test]
    fn filters_number_their_parameters_in_order() {
        let f = UsageFilter {
            project_id: Some("p".into()),
            status: Some(200),
            after: Some(Cursor { ts_ms: 5, id: "r".into() }),
            limit: 10,
            ..UsageFilter::default()
        };
        let (sql, params) = usage_query(&f);
        assert!(sql.contains("WHERE project_id = $1 AND status = $2 AND (ts_ms < $3 OR (ts_ms = $4 AND id < $5))"), "{sql}");
        assert!(sql.ends_with("LIMIT $6"), "{sql}");
        assert_eq!(params.len(), 6);
        let (sql, params) = usage_summary_query(&UsageFilter::default());
        assert!(!sql.contains("WHERE") && params.is_empty());
    }
}
