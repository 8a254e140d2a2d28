//! `[[keys]]` (API keys kept in the config, by hash) and `[admin]` (the admin API token),
//! validated into [`KeyEntry`]s and the token's [`KeyHash`].

use std::collections::HashSet;

use serde::Deserialize;

use super::problems::{Env, Problems};
use crate::access::KeyEntry;
use crate::secret::KeyHash;

/// `[[keys]]`: an API key from the config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: String,
    /// Hex SHA-256 of the key (`joule hash-key KEY` prints it); unique.
    pub sha256: String,
    /// Project (by name) the key belongs to; default none.
    pub project: Option<String>,
}

/// `[admin]`: set at most one of the two; neither disables the admin API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Environment variable holding the admin token; it must be set.
    pub token_env: Option<String>,
    /// Hex SHA-256 of the admin token (`joule hash-key TOKEN`).
    pub token_sha256: Option<String>,
}

/// Validates `[[keys]]`: a key whose hash is not 64 hex characters is reported and left out;
/// duplicate hashes and bad project names are reported.
pub(super) fn keys(p: &mut Problems, raw: &[RawKey]) -> Vec<KeyEntry> {
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for (i, k) in raw.iter().enumerate() {
        let path = format!("keys[{i}]");
        match KeyHash::from_hex(&k.sha256) {
            Some(h) => {
                if !seen.insert(h) {
                    p.add(format!("{path}.sha256"), "duplicate key hash");
                }
                if let Some(pname) = &k.project {
                    if let Err(e) = crate::store::check_name("project", pname) {
                        p.add(format!("{path}.project"), e.to_string());
                    }
                }
                keys.push(KeyEntry { name: k.name.clone(), hash: h, project: k.project.clone() });
            }
            None => p.add(format!("{path}.sha256"), "must be 64 hex characters (see `joule hash-key`)"),
        }
    }
    keys
}

/// Validates `[admin]` into the token's hash; `None` (the admin API refuses every request)
/// when neither field is set, and, with a problem, when both are or the one set is unusable.
pub(super) fn admin_token(p: &mut Problems, raw: &RawAdmin, env: Env<'_>) -> Option<KeyHash> {
    match (&raw.token_env, &raw.token_sha256) {
        (None, None) => None,
        (Some(_), None) => p.secret_env("admin.token_env", &raw.token_env, env).map(|t| KeyHash::of(t.expose())),
        (None, Some(h)) => {
            let hash = KeyHash::from_hex(h);
            if hash.is_none() {
                p.add("admin.token_sha256", "must be 64 hex characters (see `joule hash-key`)");
            }
            hash
        }
        (Some(_), Some(_)) => {
            p.add("admin", "set token_env or token_sha256, not both");
            None
        }
    }
}
