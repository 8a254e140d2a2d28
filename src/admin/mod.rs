//! The admin listener's surface: `GET /metrics` (Prometheus text), `GET /healthz` and the web
//! console's files under `/console/` (see [`crate::console`]), open; and the admin API under
//! `/admin/`, behind a bearer credential (`Authorization: Bearer`): the admin token gives
//! every endpoint (the operator); a joule API key gives the read-only project view — the
//! endpoints marked *key* below, with usage limited to the key's project (or to the key
//! itself when it has none) — and 403 `admin_only` elsewhere. Missing or wrong → 401.
//!
//! | method and path | |
//! |---|---|
//! | `GET /admin/session` | *key* — who the credential is: `role` (`operator` or `project`), `api_base` (the public API's URL), `store`; for a key its `key` (id, name) and `project` |
//! | `GET /admin/models` | *key* — the catalog as `GET /v1/models` shows it (the key's allowed models) |
//! | `GET /admin/prices?window=4h\|24h\|7d` | *key* — price history of every model with a hosted deployment (`GET /v1/models/{id}/prices` for each) |
//! | `GET /admin/data-centers` | *key* — every data center with its current energy price ($/MWh), stale flag and models |
//! | `GET /admin/projects` | every project |
//! | `POST /admin/projects` | create: `{"name", "allowed_models": [..] or null, "default_strategy", "rpm", "tpm", "budget_usd", "budget_period": "day"/"month"}` → 201 |
//! | `GET /admin/projects/{name}` | one project, with `budget_spent_usd` as this instance sees it |
//! | `PATCH /admin/projects/{name}` | change any of the fields above (`null` clears) |
//! | `DELETE /admin/projects/{name}` | delete (409 while it has active keys) |
//! | `GET /admin/keys[?project=P]` | keys (store keys and read-only config keys); never the key itself |
//! | `POST /admin/keys` | create: `{"name", "project", "rpm", "tpm"}` → 201 with `key`, shown this once |
//! | `DELETE /admin/keys/{id or name}` | revoke |
//! | `GET /admin/usage` | *key* — usage records, newest first: `project`, `key` (id), `model`, `status`, `since`, `until` (unix ms), `limit` (default 100, max 10000), `cursor`, `format=csv` |
//! | `GET /admin/usage/summary` | *key* — request count, tokens and cost over the same filters; with `step` (seconds; needs `since`) also a `series` of the same per time bucket |
//! | `GET /admin/deployments` | live telemetry and breaker state of every deployment |
//! | `GET /admin/plugins` | loaded strategy plugins, files refused with the reason, available tags |
//! | `POST /admin/plugins` | a component as the body: validate, store, swap in (400 with the reason if refused) |
//! | `POST /admin/plugins/{tag}/rollback` | put the previous version back |
//! | `POST /admin/energy/prices` | energy price push, when `[energy.push]` is configured, with its own optional token instead of the admin token |
//!
//! One file per resource; [`TABLE`] maps paths (a `matchit` router) and methods to endpoints.
//! An unknown path is 404 `unknown_url`. A known path with another method is 405 for the
//! store-backed resources (projects, keys, usage) and 404 for the others; the store-backed
//! resources also ignore trailing slashes, which make any other path unknown. Path
//! parameters are taken as sent (not percent-decoded). Every request body is read within its
//! route's own size limit; an error answered before the body was read to its end closes the
//! connection.
//!
//! Bind the admin listener to loopback or a private interface. Handlers are pingora-free,
//! like the public API's, over [`Downstream`].

mod catalog;
mod deployments;
mod energy;
mod input;
mod keys;
mod open;
mod plugins;
mod projects;
mod reload;
mod session;
mod usage;

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::Value;

use crate::access::Principal;
use crate::api::error::ApiError;
use crate::console;
use crate::proxy::body::read_body;
use crate::proxy::{send_error, Downstream, DownstreamError, Gateway, Record, RequestHead};
use crate::store::{Store, StoreError};

pub use deployments::deployments_json;
pub use usage::{to_csv, CSV_HEADER};

use input::{JsonBody, Query};

/// Largest JSON body of the admin API (projects, keys).
const MAX_JSON_BODY: usize = 64 * 1024;
/// How long a client may take to send a JSON body.
const JSON_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request asks for, once its path and method are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Metrics,
    Healthz,
    Session,
    Models,
    Prices,
    DataCenters,
    Deployments,
    ListPlugins,
    UploadPlugin,
    RollbackPlugin,
    PushPrices,
    ListProjects,
    CreateProject,
    GetProject,
    UpdateProject,
    DeleteProject,
    ListKeys,
    CreateKey,
    RevokeKey,
    Usage,
    UsageSummary,
    Reload,
}

impl Endpoint {
    /// What an API key may read: the project view.
    fn open_to_keys(self) -> bool {
        matches!(self, Endpoint::Session | Endpoint::Models | Endpoint::Prices | Endpoint::DataCenters | Endpoint::Usage | Endpoint::UsageSummary)
    }
}

/// Who is asking.
enum Viewer {
    /// The admin token: everything.
    Operator,
    /// A joule API key: the read-only view of its project.
    Key(Principal),
}

impl Viewer {
    /// Whether the viewer sees `model` (a key: its project's allowed models).
    fn may_use(&self, model: &str) -> bool {
        match self {
            Viewer::Operator => true,
            Viewer::Key(p) => p.may_use(model),
        }
    }
}

/// One path of the route table and what it answers.
struct Resource {
    /// A `matchit` route: `{x}` one segment, `{*x}` the rest of the path.
    path: &'static str,
    /// The endpoint of each method the path takes.
    methods: &'static [(Method, Endpoint)],
    /// Trailing slashes are ignored (`/admin/projects/` is `/admin/projects`); on the other
    /// resources a trailing slash makes an unknown path.
    trailing_slashes: bool,
    /// Another method gets 405 naming it; `false`: 404, as an unknown path.
    answers_405: bool,
}

/// A resource that answers exactly its path, and 404 to another method.
const fn exact(path: &'static str, methods: &'static [(Method, Endpoint)]) -> Resource {
    Resource { path, methods, trailing_slashes: false, answers_405: false }
}

/// A store-backed resource: trailing slashes ignored, 405 to another method.
const fn stored(path: &'static str, methods: &'static [(Method, Endpoint)]) -> Resource {
    Resource { path, methods, trailing_slashes: true, answers_405: true }
}

/// The route table. Names and ids may hold slashes (`{*name}`): the store refuses them with
/// its own message, as any other malformed name.
static TABLE: &[Resource] = &[
    exact("/metrics", &[(Method::GET, Endpoint::Metrics)]),
    exact("/healthz", &[(Method::GET, Endpoint::Healthz)]),
    exact("/admin/session", &[(Method::GET, Endpoint::Session)]),
    exact("/admin/models", &[(Method::GET, Endpoint::Models)]),
    exact("/admin/prices", &[(Method::GET, Endpoint::Prices)]),
    exact("/admin/data-centers", &[(Method::GET, Endpoint::DataCenters)]),
    exact("/admin/deployments", &[(Method::GET, Endpoint::Deployments)]),
    exact("/admin/plugins", &[(Method::GET, Endpoint::ListPlugins), (Method::POST, Endpoint::UploadPlugin)]),
    exact("/admin/plugins/{tag}/rollback", &[(Method::POST, Endpoint::RollbackPlugin)]),
    exact("/admin/energy/prices", &[(Method::POST, Endpoint::PushPrices)]),
    stored("/admin/projects", &[(Method::GET, Endpoint::ListProjects), (Method::POST, Endpoint::CreateProject)]),
    stored("/admin/projects/{*name}", &[(Method::GET, Endpoint::GetProject), (Method::PATCH, Endpoint::UpdateProject), (Method::DELETE, Endpoint::DeleteProject)]),
    stored("/admin/keys", &[(Method::GET, Endpoint::ListKeys), (Method::POST, Endpoint::CreateKey)]),
    stored("/admin/keys/{*id}", &[(Method::DELETE, Endpoint::RevokeKey)]),
    stored("/admin/usage", &[(Method::GET, Endpoint::Usage)]),
    stored("/admin/usage/summary", &[(Method::GET, Endpoint::UsageSummary)]),
    exact("/admin/reload", &[(Method::POST, Endpoint::Reload)]),
];

static ROUTER: LazyLock<matchit::Router<&'static Resource>> = LazyLock::new(|| {
    let mut router = matchit::Router::new();
    for r in TABLE {
        if let Err(e) = router.insert(r.path, r) {
            // A static table: the unit tests insert every route.
            tracing::error!(path = r.path, error = %e, "admin route table");
        }
    }
    router
});

/// The endpoint of `method` on `path`, and the path's parameter (project name, key id or
/// plugin tag) if it has one.
fn resolve<'p>(path: &'p str, method: &Method) -> Result<(Endpoint, Option<&'p str>), ApiError> {
    let trimmed = path.trim_end_matches('/');
    let found = ROUTER.at(trimmed).ok().filter(|m| trimmed.len() == path.len() || m.value.trailing_slashes);
    let Some(m) = found else { return Err(not_found(path)) };
    let param = m.params.iter().next().map(|(_, v)| v);
    match m.value.methods.iter().find(|(x, _)| x == method) {
        Some(&(_, endpoint)) => Ok((endpoint, param)),
        None if m.value.answers_405 => {
            let allow: Vec<&str> = m.value.methods.iter().map(|(x, _)| x.as_str()).collect();
            Err(ApiError::MethodNotAllowed { method: method.to_string(), path: clip(path, 200), allow: allow.join(", ") })
        }
        None => Err(not_found(path)),
    }
}

fn not_found(path: &str) -> ApiError {
    ApiError::NotFound { path: clip(path, 200) }
}

/// The first `n` characters of `s`, for echoing client input in messages.
fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A successful answer.
enum Reply {
    /// A JSON document and its status.
    Json(u16, Vec<u8>),
    /// Usage records as CSV, and the next page's cursor.
    Csv(Vec<u8>, Option<String>),
    /// Prometheus text.
    Metrics(Vec<u8>),
    /// A console file, a revalidation, a redirect.
    Console(console::Answer),
}

impl Reply {
    fn json(status: u16, v: &Value) -> Self {
        Reply::Json(status, v.to_string().into_bytes())
    }
}

/// One admin request as the handlers see it.
struct Call<'a> {
    gw: &'a Gateway,
    head: &'a RequestHead,
    io: &'a mut dyn Downstream,
    /// The request body has been read to its end: an error answer leaves the connection usable.
    body_read: bool,
    /// Who asks (the admin API's endpoints); the operator on open paths.
    viewer: Viewer,
}

impl Call<'_> {
    /// Reads the whole body: at most `limit` bytes, within `timeout`.
    async fn body(&mut self, limit: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
        let body = read_body(self.io, self.head.content_length, limit, timeout).await?;
        self.body_read = true;
        Ok(body)
    }

    /// Reads a JSON object body (at most [`MAX_JSON_BODY`]) into `T`.
    async fn json<T: JsonBody>(&mut self) -> Result<T, ApiError> {
        let body = self.body(MAX_JSON_BODY, JSON_BODY_TIMEOUT).await?;
        input::parse_json(&body)
    }

    /// The query string, refused if it has a parameter outside `allowed`.
    fn query(&self, allowed: &[&str]) -> Result<Query, ApiError> {
        let q = Query::parse(self.head.query.as_deref())?;
        q.only(allowed)?;
        Ok(q)
    }

    /// The store behind projects, keys and usage.
    fn store(&self) -> Result<Store, ApiError> {
        self.gw
            .store
            .clone()
            .ok_or_else(|| ApiError::ResourceNotFound { message: "No store is configured ([store] backend = \"none\").".into() })
    }
}

/// Serves one admin request.
///
/// # Errors
/// Only downstream I/O failures.
pub async fn handle(gw: &Gateway, head: &RequestHead, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    let mut call = Call { gw, head, io, body_read: false, viewer: Viewer::Operator };
    match serve(&mut call).await {
        Ok(reply) => send(call.io, rec, reply).await,
        Err(e) => {
            if !call.body_read {
                // Whatever body the client sent may be left unread.
                call.io.close_after();
            }
            send_error(call.io, rec, &e).await
        }
    }
}

async fn serve(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    let head = c.head;
    if head.path == "/console" || head.path.starts_with("/console/") {
        return match head.method {
            Method::GET | Method::HEAD => Ok(Reply::Console(console::answer(&head.path, head.if_none_match.as_deref()))),
            _ => Err(ApiError::MethodNotAllowed { method: head.method.to_string(), path: clip(&head.path, 200), allow: "GET, HEAD".into() }),
        };
    }
    let route = resolve(&head.path, &head.method);
    // The energy push has its own optional token; every other `/admin` path needs a
    // credential before anything else, unknown paths included.
    let push = matches!(route, Ok((Endpoint::PushPrices, _)));
    if !push && (head.path == "/admin" || head.path.starts_with("/admin/")) {
        c.viewer = authorize(c.gw, head)?;
    }
    let (endpoint, param) = route?;
    if matches!(c.viewer, Viewer::Key(_)) && !endpoint.open_to_keys() {
        return Err(ApiError::AdminOnly);
    }
    let param = param.unwrap_or_default();
    match endpoint {
        Endpoint::Metrics => Ok(open::metrics(c.gw)),
        Endpoint::Healthz => Ok(open::healthz()),
        Endpoint::Session => session::session(c).await,
        Endpoint::Models => catalog::models(c),
        Endpoint::Prices => catalog::prices(c),
        Endpoint::DataCenters => catalog::data_centers(c),
        Endpoint::Deployments => Ok(deployments::list(c.gw)),
        Endpoint::ListPlugins => Ok(plugins::list(c.gw)),
        Endpoint::UploadPlugin => plugins::upload(c).await,
        Endpoint::RollbackPlugin => plugins::rollback(c.gw, param).await,
        Endpoint::PushPrices => energy::push(c).await,
        Endpoint::ListProjects => projects::list(c).await,
        Endpoint::CreateProject => projects::create(c).await,
        Endpoint::GetProject => projects::get(c, param).await,
        Endpoint::UpdateProject => projects::update(c, param).await,
        Endpoint::DeleteProject => projects::delete(c, param).await,
        Endpoint::ListKeys => keys::list(c).await,
        Endpoint::CreateKey => keys::create(c).await,
        Endpoint::RevokeKey => keys::revoke(c, param).await,
        Endpoint::Usage => usage::records(c).await,
        Endpoint::UsageSummary => usage::summary(c).await,
        Endpoint::Reload => reload::reload(c.gw).await,
    }
}

/// The admin token makes the operator; otherwise a valid API key makes a project viewer.
fn authorize(gw: &Gateway, head: &RequestHead) -> Result<Viewer, ApiError> {
    let token = gw.world.load().admin_token;
    if token.is_some_and(|want| crate::api::bearer::verify_bearer(&want, head.authorization.as_deref())) {
        return Ok(Viewer::Operator);
    }
    gw.registry.load().keys.authenticate(head.authorization.as_deref()).map(Viewer::Key).map_err(|_| ApiError::AdminUnauthorized)
}

async fn send(io: &mut dyn Downstream, rec: &mut Record, reply: Reply) -> Result<(), DownstreamError> {
    let (status, content_type, body, cursor) = match reply {
        Reply::Console(answer) => return send_console(io, rec, answer).await,
        Reply::Json(status, body) => (status, "application/json", body, None),
        Reply::Csv(body, cursor) => (200, "text/csv; charset=utf-8", body, cursor),
        Reply::Metrics(text) => (200, "text/plain; version=0.0.4", text, None),
    };
    rec.status = status;
    let mut headers = vec![("content-type", content_type.to_string()), ("x-request-id", rec.request_id.clone())];
    if let Some(c) = cursor {
        headers.push(("x-next-cursor", c));
    }
    io.send_whole(status, headers, Bytes::from(body)).await
}

/// A console answer, with the security headers on every status.
async fn send_console(io: &mut dyn Downstream, rec: &mut Record, answer: console::Answer) -> Result<(), DownstreamError> {
    let mut headers: Vec<(&'static str, String)> = console::SECURITY_HEADERS.iter().map(|&(k, v)| (k, v.to_string())).collect();
    headers.push(("x-request-id", rec.request_id.clone()));
    let (status, body) = match answer {
        console::Answer::File(a) => {
            headers.extend([("content-type", a.content_type.to_string()), ("etag", a.etag), ("cache-control", "no-cache".to_string())]);
            // Embedded files go out without a copy.
            let body = match a.body {
                std::borrow::Cow::Borrowed(b) => Bytes::from_static(b),
                std::borrow::Cow::Owned(v) => Bytes::from(v),
            };
            (200, body)
        }
        console::Answer::NotModified { etag } => {
            headers.extend([("etag", etag), ("cache-control", "no-cache".to_string())]);
            (304, Bytes::new())
        }
        console::Answer::Redirect(to) => {
            headers.push(("location", to.to_string()));
            (308, Bytes::new())
        }
        console::Answer::NotFound => {
            let e = ApiError::ResourceNotFound { message: "No such console file.".into() };
            headers.push(("content-type", "application/json".to_string()));
            (404, Bytes::from(e.body()))
        }
    };
    rec.status = status;
    io.send_whole(status, headers, body).await
}

/// The client-visible form of a store error.
fn store_error(e: impl Into<StoreError>) -> ApiError {
    match e.into() {
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

/// The result of a stored change, after refreshing the key and project snapshot so the change
/// applies at once on this instance.
async fn changed<T>(gw: &Gateway, result: Result<T, StoreError>) -> Result<T, ApiError> {
    let v = result.map_err(store_error)?;
    if let Err(e) = gw.registry.refresh().await {
        tracing::warn!(error = %e, "change stored, but the snapshot could not be refreshed yet");
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
