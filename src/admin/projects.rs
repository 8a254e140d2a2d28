//! Projects: `GET /admin/projects` (every project), `POST /admin/projects` (create → 201),
//! `GET`, `PATCH` and `DELETE /admin/projects/{name}` (show with `budget_spent_usd`; change any
//! field, `null` clearing it and `name` renaming; delete, 409 while it has active keys).

use serde::Deserialize;
use serde_json::{json, Value};

use super::input::{nullable, JsonBody};
use super::{changed, store_error, Call, Reply};
use crate::api::error::ApiError;
use crate::proxy::Gateway;
use crate::store::{self, BudgetPeriod, ProjectChanges};

/// The body of `POST /admin/projects` and `PATCH /admin/projects/{name}`: an absent field is
/// left as it is (POST: its default); `null` clears it (`budget_period`: leaves it).
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectBody {
    /// Required by POST; a rename in PATCH, where it cannot be `null`.
    #[serde(default, deserialize_with = "nullable")]
    name: Option<Option<String>>,
    /// `day` or `month`.
    budget_period: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    allowed_models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    default_strategy: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    tpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    budget_usd: Option<Option<f64>>,
}

impl JsonBody for ProjectBody {
    const FIELDS: &'static [&'static str] = &["name", "budget_period", "allowed_models", "default_strategy", "rpm", "tpm", "budget_usd"];
}

impl ProjectBody {
    /// The changes it asks for (with `name` only when `rename`), checked in form and against
    /// the catalog.
    fn changes(self, gw: &Gateway, rename: bool) -> Result<ProjectChanges, ApiError> {
        let name = match self.name {
            Some(None) if rename => return Err(ApiError::invalid("`name` cannot be null.", Some("name"))),
            n if rename => n.flatten(),
            _ => None,
        };
        let budget_period = self.budget_period.as_deref().map(BudgetPeriod::parse).transpose().map_err(store_error)?;
        let c = ProjectChanges {
            name,
            allowed_models: self.allowed_models,
            default_strategy: self.default_strategy,
            rpm: self.rpm,
            tpm: self.tpm,
            budget_usd: self.budget_usd,
            budget_period,
        };
        c.validate().map_err(store_error)?;
        crate::access::check_models(&gw.world.load().catalog, &c).map_err(store_error)?;
        Ok(c)
    }
}

/// A project as stored, plus `budget_spent_usd`: the period's spend as this instance sees it
/// (its own requests exactly, other instances' as of the last budget sync).
pub(super) fn view(gw: &Gateway, p: &store::Project) -> Value {
    let mut v = json!(p);
    if let Some(b) = gw.registry.load().projects.get(&p.id).and_then(|x| x.budget.clone()) {
        v["budget_spent_usd"] = json!(b.spent());
    }
    v
}

/// `GET /admin/projects`.
pub(super) async fn list(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    let store = c.store()?;
    c.query(&[])?;
    let projects: Vec<Value> = store.projects().await.map_err(store_error)?.iter().map(|p| view(c.gw, p)).collect();
    Ok(Reply::json(200, &json!({ "projects": projects })))
}

/// `POST /admin/projects`.
pub(super) async fn create(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    let store = c.store()?;
    c.query(&[])?;
    let mut body: ProjectBody = c.json().await?;
    let name = body.name.take().flatten().ok_or_else(|| ApiError::invalid("`name` is required.", Some("name")))?;
    let changes = body.changes(c.gw, false)?;
    let p = changed(c.gw, store.create_project(&name, changes).await).await?;
    Ok(Reply::json(201, &json!(p)))
}

/// `GET /admin/projects/{name}`.
pub(super) async fn get(c: &mut Call<'_>, name: &str) -> Result<Reply, ApiError> {
    let store = c.store()?;
    c.query(&[])?;
    let p = store.project(name).await.map_err(store_error)?;
    Ok(Reply::json(200, &view(c.gw, &p)))
}

/// `PATCH /admin/projects/{name}`.
pub(super) async fn update(c: &mut Call<'_>, name: &str) -> Result<Reply, ApiError> {
    let store = c.store()?;
    c.query(&[])?;
    let body: ProjectBody = c.json().await?;
    let changes = body.changes(c.gw, true)?;
    let p = changed(c.gw, store.update_project(name, changes).await).await?;
    Ok(Reply::json(200, &json!(p)))
}

/// `DELETE /admin/projects/{name}`.
pub(super) async fn delete(c: &mut Call<'_>, name: &str) -> Result<Reply, ApiError> {
    let store = c.store()?;
    c.query(&[])?;
    changed(c.gw, store.delete_project(name).await).await?;
    Ok(Reply::json(200, &json!({ "deleted": name })))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::input::parse_json;
    use super::*;

    fn parse(v: Value) -> Result<ProjectBody, ApiError> {
        parse_json(v.to_string().as_bytes())
    }

    #[test]
    fn fields_distinguish_absent_null_and_wrong_types() {
        let b = parse(json!({"rpm": null, "tpm": 5})).unwrap();
        assert_eq!((b.rpm, b.tpm, b.budget_usd), (Some(None), Some(Some(5)), None));
        assert!(parse(json!({"rpm": null, "tpm": 5, "budget_usd": "lots"})).is_err());
        assert!(parse(json!({"rpm": -1})).is_err());
    }

    #[test]
    fn null_clears_and_absent_leaves() {
        let b = parse(json!({"rpm": null, "tpm": 7, "allowed_models": null, "budget_period": null})).unwrap();
        assert_eq!((b.rpm, b.tpm, b.allowed_models, b.budget_usd), (Some(None), Some(Some(7)), Some(None), None));
        assert_eq!((b.budget_period, b.default_strategy, b.name), (None, None, None));
        let b = parse(json!({"name": null, "default_strategy": "latency@price"})).unwrap();
        assert_eq!((b.name, b.default_strategy), (Some(None), Some(Some("latency@price".into()))));
        assert_eq!(parse(json!({})).unwrap(), ProjectBody::default());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let e = parse(json!({"name": "ok", "surprise": 1})).unwrap_err();
        assert_eq!(e, ApiError::invalid("Unknown field `surprise`.", None));
        let e = parse(json!({"name": "ok", "rpm": "many"})).unwrap_err();
        assert_eq!(e, ApiError::invalid("`rpm`: invalid type: string \"many\", expected u32", Some("rpm")));
        let e = parse(json!({"allowed_models": "all"})).unwrap_err();
        assert_eq!(e, ApiError::invalid("`allowed_models`: invalid type: string \"all\", expected a sequence", Some("allowed_models")));
        let e = parse(json!({"budget_period": 3})).unwrap_err();
        assert_eq!(e, ApiError::invalid("`budget_period`: invalid type: integer `3`, expected a string", Some("budget_period")));
    }

    #[test]
    fn every_field_is_known_and_optional() {
        for f in ProjectBody::FIELDS {
            assert!(parse(json!({ *f: null })).is_ok(), "{f}");
        }
    }
}
