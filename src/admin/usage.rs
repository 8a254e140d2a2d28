//! Usage records: `GET /admin/usage` (newest first; filters `project` (name), `key` (id),
//! `model`, `status`, `since`, `until` (unix ms); `limit` (default 100, max
//! [`store::MAX_PAGE`]) and `cursor`; `format=csv` with the next cursor in `x-next-cursor`) and
//! `GET /admin/usage/summary` (request count, tokens and cost over the same filters; with
//! `step` seconds also `series`, the same per time bucket, for charts). A key viewer sees only
//! its project's records (or its own, for a key without a project).

use serde_json::json;

use super::input::Query;
use super::{store_error, Call, Reply, Viewer};
use crate::api::error::ApiError;
use crate::store::{self, Cursor, Store, UsageFilter};
use crate::usage::UsageRecord;

/// The filters both endpoints take.
const FILTERS: [&str; 6] = ["project", "key", "model", "status", "since", "until"];

/// `GET /admin/usage`.
pub(super) async fn records(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    let store = c.store()?;
    let query = c.query(&[&FILTERS[..], &["limit", "cursor", "format"]].concat())?;
    let limit = match query.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=store::MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::invalid(format!("`limit` must be between 1 and {}.", store::MAX_PAGE), Some("limit")))?,
    };
    let csv = match query.get("format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::invalid("`format` must be json or csv.", Some("format"))),
    };
    let filter = filter(&c.viewer, &store, &query, limit).await?;
    let page = store.usage(filter).await.map_err(store_error)?;
    if csv {
        return Ok(Reply::Csv(to_csv(&page.records), page.next_cursor));
    }
    Ok(Reply::json(200, &json!(page)))
}

/// `GET /admin/usage/summary`, with `series` when `step` (seconds) is given.
pub(super) async fn summary(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    let store = c.store()?;
    let query = c.query(&[&FILTERS[..], &["step"]].concat())?;
    let filter = filter(&c.viewer, &store, &query, 1).await?;
    let step_ms = query
        .get("step")
        .map(|v| v.parse::<i64>().ok().filter(|s| *s > 0).map(|s| s.saturating_mul(1000)).ok_or_else(|| ApiError::invalid("`step` must be a positive number of seconds.", Some("step"))))
        .transpose()?;
    let mut body = json!(store.usage_summary(filter.clone()).await.map_err(store_error)?);
    if let Some(step_ms) = step_ms {
        body["series"] = json!(store.usage_series(filter, step_ms, crate::clock::now_ms()).await.map_err(store_error)?);
    }
    Ok(Reply::json(200, &body))
}

/// The filter a query asks for. A key viewer's is confined to its project (or, for a key
/// without one, to the key): naming another project or key is refused.
async fn filter(viewer: &Viewer, store: &Store, query: &Query, limit: u32) -> Result<UsageFilter, ApiError> {
    let int = |name: &'static str| -> Result<Option<i64>, ApiError> {
        query
            .get(name)
            .map(|v| v.parse::<i64>().map_err(|_| ApiError::invalid(format!("`{name}` must be unix milliseconds."), Some(name))))
            .transpose()
    };
    let mut project_id = match query.get("project") {
        Some(name) => Some(store.project(name).await.map_err(store_error)?.id),
        None => None,
    };
    let mut key_id = query.get("key").map(str::to_string);
    if let Viewer::Key(p) = viewer {
        match &p.project {
            Some(own) if project_id.as_deref().is_none_or(|id| id == &*own.id) => project_id = Some(own.id.to_string()),
            None if project_id.is_none() && key_id.as_deref().is_none_or(|k| k == &*p.key_id) => key_id = Some(p.key_id.to_string()),
            _ => return Err(ApiError::AdminOnly),
        }
    }
    let status = query
        .get("status")
        .map(|s| s.parse::<u16>().ok().filter(|s| (100..=599).contains(s)).ok_or_else(|| ApiError::invalid("`status` must be an HTTP status code.", Some("status"))))
        .transpose()?;
    let after = query.get("cursor").map(Cursor::decode).transpose().map_err(store_error)?;
    Ok(UsageFilter {
        project_id,
        key_id,
        model: query.get("model").map(str::to_string),
        status,
        since_ms: int("since")?,
        until_ms: int("until")?,
        after,
        limit,
    })
}

/// The CSV columns, in order.
pub const CSV_HEADER: &str = "id,ts_ms,instance,project_id,key_id,key_name,model,strategy,deployment,data_center,status,outcome,stream,ttft_ms,latency_ms,tokens_in,tokens_out,price_input,price_output,cost_input,cost_output,cost_fee,cost_total";

/// Usage records as CSV, with [`CSV_HEADER`] first: `\n` line ends, a field quoted only when
/// it holds a comma, a quote or a line break (quotes doubled), absent values empty.
pub fn to_csv(records: &[UsageRecord]) -> Vec<u8> {
    // Writing to memory cannot fail.
    write_csv(records).unwrap_or_default()
}

fn write_csv(records: &[UsageRecord]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_HEADER.split(','))?;
    for r in records {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        let int = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
        w.write_record([
            r.id.clone(),
            r.ts_ms.to_string(),
            r.instance.clone(),
            opt(&r.project_id),
            opt(&r.key_id),
            opt(&r.key_name),
            opt(&r.model),
            opt(&r.strategy),
            opt(&r.deployment),
            opt(&r.data_center),
            r.status.to_string(),
            r.outcome.clone(),
            r.stream.to_string(),
            num(r.ttft_ms),
            r.latency_ms.to_string(),
            int(r.tokens_in),
            int(r.tokens_out),
            num(r.price_input),
            num(r.price_output),
            r.cost_input.to_string(),
            r.cost_output.to_string(),
            r.cost_fee.to_string(),
            r.cost_total.to_string(),
        ])?;
    }
    Ok(w.into_inner()?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record() -> UsageRecord {
        serde_json::from_value(json!({
            "id": "req_1", "ts_ms": 5, "instance": "gw", "project_id": null, "key_id": "key_1", "key_name": "a,b",
            "model": "m", "strategy": "price", "deployment": null, "data_center": null, "status": 200, "outcome": "ok",
            "stream": false, "ttft_ms": null, "latency_ms": 1.5, "tokens_in": 3, "tokens_out": 4,
            "price_input": 0.1, "price_output": 0.2, "cost_input": 0.0, "cost_output": 0.0, "cost_fee": 0.0, "cost_total": 0.0
        }))
        .unwrap()
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut r = record();
        r.outcome = "say \"hi\"".into();
        let text = String::from_utf8(to_csv(&[r])).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with("req_1,5,gw,,key_1,\"a,b\",m,price,,,200,\"say \"\"hi\"\"\",false,,1.5,3,4,"), "{line}");
        assert_eq!(text.lines().next().unwrap().split(',').count(), line.split(',').count() - 1, "one quoted comma");
    }

    #[test]
    fn csv_bytes_are_as_before() {
        let mut r = record();
        r.key_name = Some("line\nbreak".into());
        r.model = Some("cr\rhere".into());
        let text = String::from_utf8(to_csv(&[r.clone(), r])).unwrap();
        let row = "req_1,5,gw,,key_1,\"line\nbreak\",\"cr\rhere\",price,,,200,ok,false,,1.5,3,4,0.1,0.2,0,0,0,0\n";
        assert_eq!(text, format!("{CSV_HEADER}\n{row}{row}"));
        assert_eq!(String::from_utf8(to_csv(&[])).unwrap(), format!("{CSV_HEADER}\n"));
    }
}
