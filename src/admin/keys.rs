//! API keys: `GET /admin/keys[?project=P]` (store keys, `source: store`, and the config's
//! read-only keys, `source: config`; never a key or its hash), `POST /admin/keys` (create → 201
//! with `key`, shown this once), `DELETE /admin/keys/{id or name}` (revoke; 409 for a config
//! key).

use serde::Deserialize;
use serde_json::{json, Value};

use super::input::JsonBody;
use super::{changed, store_error, Call, Reply};
use crate::api::error::ApiError;
use crate::access::CONFIG_KEY_PREFIX;
use crate::store::NewKey;

/// The body of `POST /admin/keys`; `null` is as absent.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    /// Required.
    name: Option<String>,
    /// The project's name.
    project: Option<String>,
    rpm: Option<u32>,
    tpm: Option<u32>,
}

impl JsonBody for KeyBody {
    const FIELDS: &'static [&'static str] = &["name", "project", "rpm", "tpm"];
}

/// `GET /admin/keys`.
pub(super) async fn list(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    let store = c.store()?;
    let query = c.query(&["project"])?;
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
    for k in c.gw.registry.config_keys().iter() {
        if project.is_none() || k.project.as_deref() == project {
            keys.push(json!({
                "id": format!("{CONFIG_KEY_PREFIX}{}", k.name),
                "name": k.name,
                "project": k.project,
                "source": "config",
            }));
        }
    }
    Ok(Reply::json(200, &json!({ "keys": keys })))
}

/// `POST /admin/keys`.
pub(super) async fn create(c: &mut Call<'_>) -> Result<Reply, ApiError> {
    let store = c.store()?;
    c.query(&[])?;
    let body: KeyBody = c.json().await?;
    let new = NewKey {
        name: body.name.ok_or_else(|| ApiError::invalid("`name` is required.", Some("name")))?,
        project: body.project,
        rpm: body.rpm,
        tpm: body.tpm,
    };
    let (key, secret) = store.create_key(new).await.map_err(store_error)?;
    let mut v = json!(key);
    v["key"] = json!(secret.expose());
    Ok(Reply::json(201, &changed(c.gw, Ok(v)).await?))
}

/// `DELETE /admin/keys/{id or name}`.
pub(super) async fn revoke(c: &mut Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let store = c.store()?;
    c.query(&[])?;
    if id.starts_with(CONFIG_KEY_PREFIX) {
        return Err(ApiError::Conflict { message: "Keys from the config file are read-only; remove them there.".into() });
    }
    let k = changed(c.gw, store.revoke_key(id).await).await?;
    Ok(Reply::json(200, &json!(k)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::input::parse_json;
    use super::*;

    #[test]
    fn key_bodies() {
        let parse = |v: Value| parse_json::<KeyBody>(v.to_string().as_bytes());
        let b = parse(json!({"name": "dev", "project": null, "rpm": 5})).unwrap();
        assert_eq!(b, KeyBody { name: Some("dev".into()), project: None, rpm: Some(5), tpm: None });
        assert_eq!(parse(json!({"name": "dev", "scope": "all"})).unwrap_err(), ApiError::invalid("Unknown field `scope`.", None));
        assert_eq!(parse(json!({"tpm": 1.5})).unwrap_err().status(), 400);
        for f in KeyBody::FIELDS {
            assert!(parse(json!({ *f: null })).is_ok(), "{f}");
        }
    }
}
