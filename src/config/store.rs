//! `[store]`: the durable store's backend and location and the usage writer's tuning,
//! validated into [`StoreSettings`] (`None` for `backend = "none"`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::problems::{ms, resolve, Env, Problems};
use crate::secret::Secret;
use crate::store::{StoreLocation, StoreSettings};
use crate::usage::UsageSettings;

/// `[store]`. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `sqlite` (default), `postgres` or `none`.
    pub backend: Option<String>,
    /// SQLite file. Default `joule.db` beside the config file.
    pub path: Option<String>,
    /// PostgreSQL connection string; prefer `url_env` when it holds a password.
    pub url: Option<String>,
    /// Environment variable holding the PostgreSQL connection string.
    pub url_env: Option<String>,
    /// Where usage records wait while the store is unavailable. Default
    /// `<sqlite path>.usage-spill.jsonl`, or `joule.usage-spill.jsonl` beside the config file.
    pub spill_path: Option<String>,
    /// Usage records the queue holds, 1 to 10 000 000. Default 65536.
    pub queue_capacity: Option<usize>,
    /// Most usage records per insert, 1 to 10 000. Default 500.
    pub batch_size: Option<usize>,
    /// > 0. Default 200.
    pub flush_interval_ms: Option<u64>,
    /// > 0. Default 1000.
    pub retry_interval_ms: Option<u64>,
    /// > 0. Default 2000.
    pub budget_sync_interval_ms: Option<u64>,
    /// Days a Responses API response is kept for `GET /v1/responses/{id}` and
    /// `previous_response_id`, 0 to 3650; 0 keeps none. Default 30 (as OpenAI).
    pub responses_retention_days: Option<u64>,
}

/// Validates `[store]`. `None` for `backend = "none"` and for an unknown backend (reported);
/// fields of the other backend and out-of-range numbers are reported (numbers then take their
/// defaults).
pub(super) fn store(p: &mut Problems, raw: &RawStore, base: &Path, env: Env<'_>) -> Option<StoreSettings> {
    let location = match raw.backend.as_deref().unwrap_or("sqlite") {
        "none" => return None,
        "sqlite" => {
            if raw.url.is_some() || raw.url_env.is_some() {
                p.add("store", "url/url_env are for backend = \"postgres\"");
            }
            StoreLocation::Sqlite(resolve(base, raw.path.as_deref().unwrap_or("joule.db")))
        }
        "postgres" => StoreLocation::Postgres(postgres(p, raw, env).unwrap_or_default()),
        other => {
            p.add("store.backend", format!("`{other}` is not one of: sqlite, postgres, none"));
            return None;
        }
    };
    let usage = usage(p, raw, base, &location);
    let days = match raw.responses_retention_days {
        Some(d) if d > 3650 => {
            p.add("store.responses_retention_days", format!("must be 0 to 3650, got {d}"));
            30
        }
        Some(d) => d,
        None => 30,
    };
    let responses_retention = (days > 0).then(|| std::time::Duration::from_secs(days * 86_400));
    Some(StoreSettings { location, usage, budget_sync: ms(raw.budget_sync_interval_ms, 2_000), responses_retention })
}

/// The PostgreSQL connection string: exactly one of `url` and `url_env`, and it must parse.
fn postgres(p: &mut Problems, raw: &RawStore, env: Env<'_>) -> Option<Secret<String>> {
    if raw.path.is_some() {
        p.add("store.path", "path is for backend = \"sqlite\"");
    }
    let url = p.url_or_env("store", &raw.url, &raw.url_env, env, "set exactly one of url or url_env for backend = \"postgres\"");
    if let Some(u) = &url {
        if u.expose().parse::<tokio_postgres::Config>().is_err() {
            p.add("store.url", "not a PostgreSQL connection string (postgres://user@host/db or host=… dbname=…)");
        }
    }
    url
}

/// The usage writer's tuning (the intervals of `[store]` are checked here, the budget sync one
/// included).
fn usage(p: &mut Problems, raw: &RawStore, base: &Path, location: &StoreLocation) -> UsageSettings {
    let spill_default = match location {
        StoreLocation::Sqlite(db) => {
            let mut s = db.clone().into_os_string();
            s.push(".usage-spill.jsonl");
            PathBuf::from(s)
        }
        StoreLocation::Postgres(_) => base.join("joule.usage-spill.jsonl"),
    };
    let mut count = |field: &str, v: Option<usize>, default: usize, max: usize| match v {
        None => default,
        Some(n) if (1..=max).contains(&n) => n,
        Some(n) => {
            p.add(format!("store.{field}"), format!("must be between 1 and {max}, got {n}"));
            default
        }
    };
    let queue_capacity = count("queue_capacity", raw.queue_capacity, 65_536, 10_000_000);
    let batch_size = count("batch_size", raw.batch_size, 500, 10_000);
    p.nonzero(
        "store",
        &[
            ("flush_interval_ms", raw.flush_interval_ms),
            ("retry_interval_ms", raw.retry_interval_ms),
            ("budget_sync_interval_ms", raw.budget_sync_interval_ms),
        ],
    );
    UsageSettings {
        queue_capacity,
        batch_size,
        flush_interval: ms(raw.flush_interval_ms, 200),
        retry_interval: ms(raw.retry_interval_ms, 1_000),
        spill_path: raw.spill_path.as_deref().map_or(spill_default, |s| resolve(base, s)),
    }
}
