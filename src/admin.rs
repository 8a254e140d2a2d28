//! The admin listener's surface: `GET /metrics` (Prometheus text) and `GET /healthz`, open;
//! and the admin API under `/admin/`, behind the admin token (`Authorization: Bearer`;
//! missing or wrong → 401; no token configured → every `/admin/` request is 401):
//!
//! | method and path | |
//! |---|---|
//! | `GET /admin/projects` | every project |
//! | `POST /admin/projects` | create: `{"name", "allowed_models": [..] or null, "default_strategy", "rpm", "tpm", "budget_usd", "budget_period": "day"/"month"}` → 201 |
//! | `GET /admin/projects/{name}` | one project, with `budget_spent_usd` as this instance sees it |
//! | `PATCH /admin/projects/{name}` | change any of the fields above (`null` clears) |
//! | `DELETE /admin/projects/{name}` | delete (409 while it has active keys) |
//! | `GET /admin/keys[?project=P]` | keys (store keys and read-only config keys); never the key itself |
//! | `POST /admin/keys` | create: `{"name", "project", "rpm", "tpm"}` → 201 with `key`, shown this once |
//! | `DELETE /admin/keys/{id or name}` | revoke |
//! | `GET /admin/usage` | usage records, newest first: `project`, `key` (id), `model`, `status`, `since`, `until` (unix ms), `limit` (default 100, max 10000), `cursor`, `format=csv` |
//! | `GET /admin/usage/summary` | request count, tokens and cost over the same filters |
//!
//! Also `GET /admin/deployments` (live telemetry and breaker state of every deployment), behind
//! the same token, and, when `[energy.push]` is configured, `POST /admin/energy/prices` (energy
//! price push with its own optional token, see `crate::pricing::feed::push`).
//!
//! Strategy plugins, behind the same token:
//!
//! - `GET /admin/plugins`: loaded plugins (tag, name, version, sha256, loaded-at, calls,
//!   faults by kind, disabled), files refused with the reason, and the available tags;
//! - `POST /admin/plugins` with a component as the body: validate, store in the plugins
//!   directory, swap in (400 with the reason if refused; the old version stays);
//! - `POST /admin/plugins/{tag}/rollback`: put the previous version back.
//!
//! Bind the admin listener to loopback or a private interface. Handlers are pingora-free,
//! like the public API's, over [`Downstream`].

mod energy;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::catalog::Catalog;
use crate::telemetry::Telemetry;

use crate::api::error::ApiError;
use crate::api::bearer::bearer_token;
use crate::secret::KeyHash;
use crate::proxy::{send_error, send_json, Downstream, DownstreamError, Gateway, Record, RequestHead, ResponseHead};
use crate::store::{self, BudgetPeriod, Cursor, NewKey, ProjectChanges, Store, StoreError, UsageFilter};

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;
use crate::routing::wasm::RegistryError;

/// Serves one admin request.
///
/// # Errors
/// Only downstream I/O failures.
pub async fn handle(gw: &Gateway, head: &RequestHead, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    match (head.path.as_str(), &head.method) {
        ("/metrics", &http::Method::GET) => {
            let world = gw.world.load();
            world.telemetry.export(&world.catalog, &gw.metrics);
            let body = gw.metrics.render();
            rec.status = 200;
            let headers = vec![("content-type", "text/plain; version=0.0.4".to_string())];
            io.send_head(ResponseHead { status: 200, headers, content_length: Some(body.len()) }).await?;
            io.send_body(Bytes::from(body), true).await
        }
        ("/healthz", &http::Method::GET) => send_json(io, rec, br#"{"status":"ok"}"#.to_vec()).await,
        ("/admin/deployments", &http::Method::GET) => match authorize(gw, head) {
            Ok(()) => {
                let world = gw.world.load();
                send_json(io, rec, deployments_json(&world.catalog, &world.telemetry)).await
            }
            Err(e) => {
                io.close_after();
                send_error(io, rec, &e).await
            }
        },
        (p, _) if p == "/admin/plugins" || p.starts_with("/admin/plugins/") => match authorize(gw, head) {
            Ok(()) => plugins(gw, head, io, rec).await,
            Err(e) => {
                io.close_after();
                send_error(io, rec, &e).await
            }
        },
        (energy::PATH, &http::Method::POST) => energy::handle(gw, head, io, rec).await,
        (p, _) if p == "/admin" || p.starts_with("/admin/") => {
            let result = match authorize(gw, head) {
                Ok(()) => api(gw, head, io).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(Reply::Json(status, v)) => send_status_json(io, rec, status, v.to_string().into_bytes()).await,
                Ok(Reply::Csv(body, next)) => {
                    rec.status = 200;
                    let mut headers = vec![("content-type", "text/csv; charset=utf-8".to_string())];
                    if let Some(c) = next {
                        headers.push(("x-next-cursor", c));
                    }
                    io.send_head(ResponseHead { status: 200, headers, content_length: Some(body.len()) }).await?;
                    io.send_body(Bytes::from(body), true).await
                }
                Err(e) => {
                    io.close_after();
                    send_error(io, rec, &e).await
                }
            }
        }
        _ => {
            io.close_after();
            send_error(io, rec, &ApiError::NotFound { path: head.path.chars().take(200).collect() }).await
        }
    }
}

/// The strategy plugins API (the caller has checked the admin token).
async fn plugins(gw: &Gateway, head: &RequestHead, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    match (head.path.as_str(), &head.method) {
        ("/admin/plugins", &http::Method::GET) => {
            let r = &gw.strategies;
            let body = serde_json::json!({
                "plugins": r.list(),
                "rejected": r.rejected(),
                "available": r.current().available(),
            });
            send_json(io, rec, body.to_string().into_bytes()).await
        }
        ("/admin/plugins", &http::Method::POST) => {
            let world = gw.world.load();
            let bytes = match crate::proxy::body::read_body(io, head.content_length, world.limits.max_body_bytes, world.limits.client_body_timeout).await {
                Ok(b) => b,
                Err(e) => {
                    io.close_after();
                    return send_error(io, rec, &e).await;
                }
            };
            // Compiling takes milliseconds of CPU: keep it off the async workers.
            let registry = gw.strategies.clone();
            let result = tokio::task::spawn_blocking(move || registry.upload(&bytes)).await;
            plugin_result(io, rec, result).await
        }
        (path, &http::Method::POST) if path.starts_with("/admin/plugins/") && path.ends_with("/rollback") => {
            let tag = path["/admin/plugins/".len()..path.len() - "/rollback".len()].to_string();
            let registry = gw.strategies.clone();
            let result = tokio::task::spawn_blocking(move || registry.rollback(&tag)).await;
            plugin_result(io, rec, result).await
        }
        _ => {
            io.close_after();
            send_error(io, rec, &ApiError::NotFound { path: head.path.chars().take(200).collect() }).await
        }
    }
}

/// Every deployment with its live numbers and breaker state.
pub fn deployments_json(catalog: &Catalog, telemetry: &Telemetry) -> Vec<u8> {
    let mut out = Vec::new();
    for (mi, m) in catalog.models.iter().enumerate() {
        for (di, d) in m.deployments.iter().enumerate() {
            let Some(s) = telemetry.get(mi, di).map(|st| st.snapshot()) else { continue };
            out.push(json!({
                "id": d.id,
                "model": m.id,
                "data_center": catalog.data_center_of(d).map(|x| x.id.clone()),
                "provider": catalog.provider_of(d).map(|x| x.id.clone()),
                "breaker": s.breaker.as_str(),
                "open_for_ms": s.open_for.map(|t| t.as_millis() as u64),
                "ttft_ms": s.ttft_ms,
                "latency_ms": s.latency_ms,
                "tokens_per_s": s.tokens_per_s,
                "error_rate": s.error_rate,
                "in_flight": s.in_flight,
                "requests": s.requests,
                "failures": s.failures,
                "samples": {"ttft": s.ttft_samples, "tokens_per_s": s.tokens_per_s_samples},
                "prior": {"ttft_ms": d.prior.ttft_ms, "tokens_per_s": d.prior.tokens_per_s},
            }));
        }
    }
    json!({"object": "list", "data": out}).to_string().into_bytes()
}

async fn send_status_json(io: &mut dyn Downstream, rec: &mut Record, status: u16, body: Vec<u8>) -> Result<(), DownstreamError> {
    if status == 200 {
        return send_json(io, rec, body).await;
    }
    rec.status = status;
    let headers = vec![("content-type", "application/json".to_string())];
    io.send_head(ResponseHead { status, headers, content_length: Some(body.len()) }).await?;
    io.send_body(Bytes::from(body), true).await
}

enum Reply {
    Json(u16, Value),
    /// CSV body and the next page's cursor.
    Csv(Vec<u8>, Option<String>),
}

fn authorize(gw: &Gateway, head: &RequestHead) -> Result<(), ApiError> {
    let want = gw.world.load().admin_token.ok_or(ApiError::AdminUnauthorized)?;
    let token = bearer_token(head.authorization.as_deref()).map_err(|_| ApiError::AdminUnauthorized)?;
    if KeyHash::of(token) == want {
        Ok(())
    } else {
        Err(ApiError::AdminUnauthorized)
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(m) => ApiError::InvalidRequest { message: m, param: None, code: None },
        StoreError::NotFound(m) => ApiError::ResourceNotFound { message: m },
        StoreError::Duplicate(m) | StoreError::Conflict(m) => ApiError::Conflict { message: m },
        StoreError::Unavailable(_) => ApiError::StoreUnavailable,
        e @ (StoreError::Backend(_) | StoreError::Schema { .. }) => {
            tracing::error!(error = %e, "admin API: store error");
            ApiError::Internal
        }
    }
}

async fn api(gw: &Gateway, head: &RequestHead, io: &mut dyn Downstream) -> Result<Reply, ApiError> {
    use http::Method;
    let store = gw
        .store
        .clone()
        .ok_or_else(|| ApiError::ResourceNotFound { message: "No store is configured ([store] backend = \"none\").".into() })?;
    let path = head.path.trim_end_matches('/');
    let rest = &path["/admin".len()..];
    let not_allowed = || ApiError::MethodNotAllowed { method: head.method.to_string(), path: head.path.chars().take(200).collect() };
    let changed = |r: Result<Value, StoreError>| async {
        let v = r.map_err(store_error)?;
        if let Err(e) = gw.registry.refresh().await {
            tracing::warn!(error = %e, "change stored, but the snapshot could not be refreshed yet");
        }
        Ok::<_, ApiError>(v)
    };
    let query = Query::parse(head.query.as_deref())?;
    match (rest, &head.method) {
        ("/projects", &Method::GET) => {
            query.only(&[])?;
            let projects: Vec<Value> = store.projects().await.map_err(store_error)?.iter().map(|p| project_view(gw, p)).collect();
            Ok(Reply::Json(200, json!({ "projects": projects })))
        }
        ("/projects", &Method::POST) => {
            query.only(&[])?;
            let mut body = read_object(io, head).await?;
            let name = take::<String>(&mut body, "name")?
                .flatten()
                .ok_or_else(|| ApiError::invalid("`name` is required.", Some("name")))?;
            let changes = project_changes(&mut body, false)?;
            no_more(&body)?;
            crate::access::check_models(&gw.world.load().catalog, &changes).map_err(|e| store_error(e.into()))?;
            let v = changed(store.create_project(&name, changes).await.map(|p| json!(p))).await?;
            Ok(Reply::Json(201, v))
        }
        (p, m) if p.starts_with("/projects/") => {
            query.only(&[])?;
            let name = &p["/projects/".len()..];
            match *m {
                Method::GET => Ok(Reply::Json(200, project_view(gw, &store.project(name).await.map_err(store_error)?))),
                Method::PATCH => {
                    let mut body = read_object(io, head).await?;
                    let changes = project_changes(&mut body, true)?;
                    no_more(&body)?;
                    crate::access::check_models(&gw.world.load().catalog, &changes).map_err(|e| store_error(e.into()))?;
                    Ok(Reply::Json(200, changed(store.update_project(name, changes).await.map(|p| json!(p))).await?))
                }
                Method::DELETE => {
                    changed(store.delete_project(name).await.map(|()| Value::Null)).await?;
                    Ok(Reply::Json(200, json!({ "deleted": name })))
                }
                _ => Err(not_allowed()),
            }
        }
        ("/keys", &Method::GET) => {
            query.only(&["project"])?;
            let project = query.get("project");
            let mut keys: Vec<Value> = store
                .keys(project)
                .await
                .map_err(store_error)?
                .into_iter()
                .map(|k| {
                    let mut v = json!(k);
                    v["source"] = json!("store");
                    v
                })
                .collect();
            for k in gw.registry.config_keys() {
                if project.is_none() || k.project.as_deref() == project {
                    keys.push(json!({
                        "id": format!("{}{}", crate::access::CONFIG_KEY_PREFIX, k.name),
                        "name": k.name,
                        "project": k.project,
                        "source": "config",
                    }));
                }
            }
            Ok(Reply::Json(200, json!({ "keys": keys })))
        }
        ("/keys", &Method::POST) => {
            query.only(&[])?;
            let mut body = read_object(io, head).await?;
            let new = NewKey {
                name: take::<String>(&mut body, "name")?
                    .flatten()
                    .ok_or_else(|| ApiError::invalid("`name` is required.", Some("name")))?,
                project: take(&mut body, "project")?.flatten(),
                rpm: take(&mut body, "rpm")?.flatten(),
                tpm: take(&mut body, "tpm")?.flatten(),
            };
            no_more(&body)?;
            let (key, secret) = store.create_key(new).await.map_err(store_error)?;
            let mut v = json!(key);
            v["key"] = json!(secret.expose());
            Ok(Reply::Json(201, changed(Ok(v)).await?))
        }
        (p, &Method::DELETE) if p.starts_with("/keys/") => {
            query.only(&[])?;
            let id = &p["/keys/".len()..];
            if id.starts_with(crate::access::CONFIG_KEY_PREFIX) {
                return Err(ApiError::Conflict { message: "Keys from the config file are read-only; remove them there.".into() });
            }
            Ok(Reply::Json(200, changed(store.revoke_key(id).await.map(|k| json!(k))).await?))
        }
        ("/usage", &Method::GET) => usage(&store, &query).await,
        ("/usage/summary", &Method::GET) => {
            query.only(&["project", "key", "model", "status", "since", "until"])?;
            let filter = usage_filter(&store, &query, 1).await?;
            Ok(Reply::Json(200, json!(store.usage_summary(filter).await.map_err(store_error)?)))
        }
        ("/projects" | "/keys" | "/usage" | "/usage/summary", _) => Err(not_allowed()),
        (p, _) if p.starts_with("/keys/") => Err(not_allowed()),
        _ => Err(ApiError::NotFound { path: head.path.chars().take(200).collect() }),
    }
}

/// A project as stored, plus `budget_spent_usd`: the period's spend as this instance sees it
/// (its own requests exactly, other instances' as of the last budget sync).
fn project_view(gw: &Gateway, p: &store::Project) -> Value {
    let mut v = json!(p);
    if let Some(b) = gw.registry.load().projects.get(&p.id).and_then(|x| x.budget.clone()) {
        v["budget_spent_usd"] = json!(b.spent());
    }
    v
}

async fn usage(store: &Store, query: &Query) -> Result<Reply, ApiError> {
    query.only(&["project", "key", "model", "status", "since", "until", "limit", "cursor", "format"])?;
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
    let filter = usage_filter(store, query, limit).await?;
    let page = store.usage(filter).await.map_err(store_error)?;
    if csv {
        return Ok(Reply::Csv(to_csv(&page.records), page.next_cursor));
    }
    Ok(Reply::Json(200, json!(page)))
}

async fn usage_filter(store: &Store, query: &Query, limit: u32) -> Result<UsageFilter, ApiError> {
    let int = |name: &'static str| -> Result<Option<i64>, ApiError> {
        query
            .get(name)
            .map(|v| v.parse::<i64>().map_err(|_| ApiError::invalid(format!("`{name}` must be unix milliseconds."), Some(name))))
            .transpose()
    };
    let project_id = match query.get("project") {
        Some(name) => Some(store.project(name).await.map_err(store_error)?.id),
        None => None,
    };
    let status = query
        .get("status")
        .map(|s| s.parse::<u16>().ok().filter(|s| (100..=599).contains(s)).ok_or_else(|| ApiError::invalid("`status` must be an HTTP status code.", Some("status"))))
        .transpose()?;
    let after = query.get("cursor").map(Cursor::decode).transpose().map_err(store_error)?;
    Ok(UsageFilter {
        project_id,
        key_id: query.get("key").map(str::to_string),
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

/// Usage records as CSV, with [`CSV_HEADER`] first.
pub fn to_csv(records: &[crate::usage::UsageRecord]) -> Vec<u8> {
    fn field(out: &mut String, s: &str) {
        if s.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&s.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(s);
        }
    }
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in records {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        let int = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
        let cells = [
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
        ];
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            field(&mut out, c);
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// A parsed query string: every parameter at most once.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Result<Self, ApiError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let (k, v) = (percent_decode(k)?, percent_decode(v)?);
            if out.iter().any(|(x, _)| *x == k) {
                return Err(ApiError::invalid(format!("Query parameter `{}` given twice.", clip(&k)), None));
            }
            out.push((k, v));
        }
        Ok(Query(out))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }

    fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::invalid(
                format!("Unknown query parameter `{}`; allowed here: {}.", clip(k), if allowed.is_empty() { "none".into() } else { allowed.join(", ") }),
                None,
            )),
            None => Ok(()),
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid("Malformed query string.", None);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Reads a JSON object body (at most 64 KiB).
async fn read_object(io: &mut dyn Downstream, head: &RequestHead) -> Result<Map<String, Value>, ApiError> {
    if head.content_length.is_some_and(|n| n > MAX_ADMIN_BODY as u64) {
        return Err(ApiError::BodyTooLarge { limit: MAX_ADMIN_BODY });
    }
    let mut body = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, io.read_body()).await {
            Err(_) => return Err(ApiError::BodyTimeout),
            Ok(Err(_)) => return Err(ApiError::invalid("The request body could not be read.", None)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > MAX_ADMIN_BODY {
                    return Err(ApiError::BodyTooLarge { limit: MAX_ADMIN_BODY });
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("The body must be a JSON object.", None)),
        Err(e) => Err(ApiError::invalid(format!("The body is not valid JSON: {e}"), None)),
    }
}

/// Removes `name` from `body`: absent → `None`, `null` → `Some(None)`, a value of the wrong
/// type → 400.
fn take<T: DeserializeOwned>(body: &mut Map<String, Value>, name: &'static str) -> Result<Option<Option<T>>, ApiError> {
    match body.remove(name) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => serde_json::from_value(v)
            .map(|x| Some(Some(x)))
            .map_err(|e| ApiError::invalid(format!("`{name}`: {e}"), Some(name))),
    }
}

fn no_more(body: &Map<String, Value>) -> Result<(), ApiError> {
    match body.keys().next() {
        Some(k) => Err(ApiError::invalid(format!("Unknown field `{}`.", clip(k)), None)),
        None => Ok(()),
    }
}

fn project_changes(body: &mut Map<String, Value>, rename: bool) -> Result<ProjectChanges, ApiError> {
    let name = if rename {
        match take::<String>(body, "name")? {
            Some(None) => return Err(ApiError::invalid("`name` cannot be null.", Some("name"))),
            n => n.flatten(),
        }
    } else {
        None
    };
    let budget_period = match take::<String>(body, "budget_period")? {
        None | Some(None) => None,
        Some(Some(p)) => Some(BudgetPeriod::parse(&p).map_err(|e| store_error(e.into()))?),
    };
    let c = ProjectChanges {
        name,
        allowed_models: take(body, "allowed_models")?,
        default_strategy: take(body, "default_strategy")?,
        rpm: take(body, "rpm")?,
        tpm: take(body, "tpm")?,
        budget_usd: take(body, "budget_usd")?,
        budget_period,
    };
    c.validate().map_err(|e| store_error(e.into()))?;
    Ok(c)
}

async fn plugin_result(
    io: &mut dyn Downstream,
    rec: &mut Record,
    result: Result<Result<crate::routing::wasm::PluginSummary, RegistryError>, tokio::task::JoinError>,
) -> Result<(), DownstreamError> {
    let err = match result {
        Ok(Ok(summary)) => return send_json(io, rec, serde_json::to_vec(&summary).unwrap_or_default()).await,
        Ok(Err(RegistryError::Io(m))) => {
            tracing::error!(error = %m, "cannot store a strategy plugin");
            ApiError::Internal
        }
        Ok(Err(e @ RegistryError::NoHistory(_))) => ApiError::InvalidRequest { message: e.to_string(), param: None, code: Some("no_earlier_version") },
        Ok(Err(e)) => ApiError::InvalidRequest { message: e.to_string(), param: None, code: Some("invalid_plugin") },
        Err(_) => ApiError::Internal,
    };
    send_error(io, rec, &err).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_and_refuse_repeats() {
        let q = Query::parse(Some("model=llama%2D3&status=200&x=a+b")).unwrap();
        assert_eq!(q.get("model"), Some("llama-3"));
        assert_eq!(q.get("x"), Some("a b"));
        assert!(q.only(&["model", "status"]).is_err());
        assert!(Query::parse(Some("a=1&a=2")).is_err());
        assert!(Query::parse(Some("a=%zz")).is_err());
        assert!(Query::parse(Some("a=%ff")).is_err(), "not UTF-8");
    }

    #[test]
    fn fields_distinguish_absent_null_and_wrong_types() {
        let mut m = json!({"rpm": null, "tpm": 5, "budget_usd": "lots"}).as_object().cloned().unwrap();
        assert_eq!(take::<u32>(&mut m, "rpm").unwrap(), Some(None));
        assert_eq!(take::<u32>(&mut m, "tpm").unwrap(), Some(Some(5)));
        assert_eq!(take::<u32>(&mut m, "missing").unwrap(), None);
        assert!(take::<f64>(&mut m, "budget_usd").is_err());
        let mut m = json!({"rpm": -1}).as_object().cloned().unwrap();
        assert!(take::<u32>(&mut m, "rpm").is_err());
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut r: crate::usage::UsageRecord = serde_json::from_value(json!({
            "id": "req_1", "ts_ms": 5, "instance": "gw", "project_id": null, "key_id": "key_1", "key_name": "a,b",
            "model": "m", "strategy": "price", "deployment": null, "data_center": null, "status": 200, "outcome": "ok",
            "stream": false, "ttft_ms": null, "latency_ms": 1.5, "tokens_in": 3, "tokens_out": 4,
            "price_input": 0.1, "price_output": 0.2, "cost_input": 0.0, "cost_output": 0.0, "cost_fee": 0.0, "cost_total": 0.0
        }))
        .unwrap();
        r.outcome = "say \"hi\"".into();
        let text = String::from_utf8(to_csv(&[r])).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with("req_1,5,gw,,key_1,\"a,b\",m,price,,,200,\"say \"\"hi\"\"\",false,,1.5,3,4,"), "{line}");
        assert_eq!(text.lines().next().unwrap().split(',').count(), line.split(',').count() - 1, "one quoted comma");
    }
}
