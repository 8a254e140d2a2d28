//! The schema, as an ordered list of migrations shared by SQLite and PostgreSQL, and the SQL
//! both backends run. Statements use PostgreSQL's `$n` placeholders; the SQLite backend
//! rewrites them to `?n` ([`sqlite_sql`]). Only portable types are used: `TEXT`, `BIGINT`
//! (also for booleans and statuses) and `DOUBLE PRECISION`.
//!
//! Times are unix milliseconds. Usage records carry the id of the gateway instance that wrote
//! them, so budgets can add other instances' spend to their own exact local count.
//!
//! Price history is one row per frame and deployment, keyed by `(ts_ms, deployment)`: several
//! gateway instances sharing a database all append the frames they compute, and a frame
//! written again at the same time replaces the earlier one (the later frame is the state in
//! force), so loads never see duplicates.

/// Migrations, applied in order; `joule_meta.schema_version` counts the applied ones.
/// Append only: never edit a released migration.
pub const MIGRATIONS: &[&str] = &[r"
CREATE TABLE projects (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    allowed_models   TEXT,
    default_strategy TEXT,
    rpm              BIGINT,
    tpm              BIGINT,
    budget_usd       DOUBLE PRECISION,
    budget_period    TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    project_id   TEXT,
    rpm          BIGINT,
    tpm          BIGINT,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_project ON api_keys (project_id);
CREATE TABLE usage_records (
    id          TEXT PRIMARY KEY,
    ts_ms       BIGINT NOT NULL,
    instance    TEXT NOT NULL,
    project_id  TEXT,
    key_id      TEXT,
    key_name    TEXT,
    model       TEXT,
    strategy    TEXT,
    deployment  TEXT,
    data_center TEXT,
    status      BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    stream      BIGINT NOT NULL,
    ttft_ms     DOUBLE PRECISION,
    latency_ms  DOUBLE PRECISION NOT NULL,
    tokens_in   BIGINT,
    tokens_out  BIGINT,
    price_input  DOUBLE PRECISION,
    price_output DOUBLE PRECISION,
    cost_input  DOUBLE PRECISION NOT NULL,
    cost_output DOUBLE PRECISION NOT NULL,
    cost_fee    DOUBLE PRECISION NOT NULL,
    cost_total  DOUBLE PRECISION NOT NULL
);
CREATE INDEX usage_ts ON usage_records (ts_ms, id);
CREATE INDEX usage_project_ts ON usage_records (project_id, ts_ms);
CREATE INDEX usage_key_ts ON usage_records (key_id, ts_ms);
", r"
CREATE TABLE price_history (
    ts_ms       BIGINT NOT NULL,
    deployment  TEXT NOT NULL,
    price_input  DOUBLE PRECISION NOT NULL,
    price_output DOUBLE PRECISION NOT NULL,
    usd_per_mwh DOUBLE PRECISION,
    stale       BIGINT NOT NULL,
    PRIMARY KEY (ts_ms, deployment)
);
", r"
CREATE TABLE responses (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    expires_ms   BIGINT NOT NULL,
    object       TEXT NOT NULL,
    conversation TEXT NOT NULL
);
CREATE INDEX responses_expires ON responses (expires_ms);
"];

/// The bookkeeping table, created before migrations run.
pub const META: &str = "CREATE TABLE IF NOT EXISTS joule_meta (k TEXT PRIMARY KEY, v BIGINT NOT NULL)";
pub const GET_META: &str = "SELECT v FROM joule_meta WHERE k = $1";
pub const SET_META: &str = "INSERT INTO joule_meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v";
pub const BUMP_SEQ: &str = "INSERT INTO joule_meta (k, v) VALUES ('change_seq', 1) ON CONFLICT (k) DO UPDATE SET v = joule_meta.v + 1";

pub const PROJECT_COLS: &str =
    "id, name, allowed_models, default_strategy, rpm, tpm, budget_usd, budget_period, created_at, updated_at";
pub const INSERT_PROJECT: &str = "INSERT INTO projects (id, name, allowed_models, default_strategy, rpm, tpm, budget_usd, budget_period, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub const UPDATE_PROJECT: &str = "UPDATE projects SET name = $2, allowed_models = $3, default_strategy = $4, rpm = $5, tpm = $6, budget_usd = $7, budget_period = $8, updated_at = $9 WHERE id = $1";
pub const DELETE_PROJECT: &str = "DELETE FROM projects WHERE id = $1";
pub const ACTIVE_KEYS_OF: &str = "SELECT COUNT(*) FROM api_keys WHERE project_id = $1 AND revoked_at IS NULL";
pub const PROJECT_ID_BY_NAME: &str = "SELECT id FROM projects WHERE name = $1";

pub const KEY_SELECT: &str = "SELECT k.id, k.name, k.prefix, k.project_id, p.name, k.rpm, k.tpm, k.created_at, k.last_used_at, k.revoked_at, k.hash FROM api_keys k LEFT JOIN projects p ON p.id = k.project_id";
pub const INSERT_KEY: &str = "INSERT INTO api_keys (id, name, hash, prefix, project_id, rpm, tpm, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub const REVOKE_KEY: &str = "UPDATE api_keys SET revoked_at = $2 WHERE id = $1";
pub const TOUCH_KEY: &str =
    "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)";

pub const USAGE_COLS: &str = "id, ts_ms, instance, project_id, key_id, key_name, model, strategy, deployment, data_center, status, outcome, stream, ttft_ms, latency_ms, tokens_in, tokens_out, price_input, price_output, cost_input, cost_output, cost_fee, cost_total";
/// Columns in [`USAGE_COLS`].
pub const USAGE_NCOLS: usize = 23;
/// Rows per multi-row `INSERT` (23 parameters each, well under both databases' limits).
pub const USAGE_ROWS_PER_INSERT: usize = 200;

/// One record's cost as summed: clamped to `[0, 1e15]` USD, so no stored value (however it got
/// there: an old record of an absurd upstream report, a hand edit) can overflow a sum —
/// PostgreSQL raises an error when a `DOUBLE PRECISION` sum overflows. Summed in
/// `DOUBLE PRECISION` on both backends; see also [`SUMMED_TOKENS_IN`].
macro_rules! summed_cost {
    () => {
        "SUM(CASE WHEN cost_total > CAST(1e15 AS DOUBLE PRECISION) THEN CAST(1e15 AS DOUBLE PRECISION) WHEN cost_total < 0 THEN CAST(0 AS DOUBLE PRECISION) ELSE cost_total END)"
    };
}
/// The cost sum of [`summed_cost!`].
pub const SUMMED_COST: &str = summed_cost!();
/// Token sums in `DOUBLE PRECISION` (exact to 2^53 ≈ 9·10^15 tokens, then rounded), never an
/// integer sum: SQLite's and PostgreSQL's `BIGINT` sums fail with "integer overflow" past
/// `i64::MAX`, which a few records of absurd upstream counts (stored before they were
/// validated) reach. Converted to `u64` with saturation when read.
pub const SUMMED_TOKENS_IN: &str = "SUM(CAST(tokens_in AS DOUBLE PRECISION))";
/// As [`SUMMED_TOKENS_IN`], for completion tokens.
pub const SUMMED_TOKENS_OUT: &str = "SUM(CAST(tokens_out AS DOUBLE PRECISION))";

pub const SPEND_SINCE: &str = concat!("SELECT project_id, ", summed_cost!(), " FROM usage_records WHERE ts_ms >= $1 AND instance <> $2 AND project_id IS NOT NULL GROUP BY project_id");

pub const PRICE_COLS: &str = "ts_ms, deployment, price_input, price_output, usd_per_mwh, stale";
/// Columns in [`PRICE_COLS`].
pub const PRICE_NCOLS: usize = 6;
/// Rows per multi-row price history `INSERT`.
pub const PRICE_ROWS_PER_INSERT: usize = 500;
pub const PRICES_BETWEEN: &str = "SELECT ts_ms, deployment, price_input, price_output, usd_per_mwh, stale FROM price_history WHERE ts_ms >= $1 AND ts_ms <= $2 ORDER BY ts_ms, deployment";
pub const DELETE_PRICES_BEFORE: &str = "DELETE FROM price_history WHERE ts_ms < $1";

pub const INSERT_RESPONSE: &str = "INSERT INTO responses (id, owner, created_ms, expires_ms, object, conversation) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING";
/// A kept response by id, for its owner, while not expired.
pub const SELECT_RESPONSE: &str = "SELECT object, conversation FROM responses WHERE id = $1 AND owner = $2 AND expires_ms > $3";
pub const DELETE_RESPONSE: &str = "DELETE FROM responses WHERE id = $1 AND owner = $2 AND expires_ms > $3";
pub const DELETE_EXPIRED_RESPONSES: &str = "DELETE FROM responses WHERE expires_ms <= $1";

/// `INSERT … VALUES (…), (…) ON CONFLICT (id) DO NOTHING` for `rows` usage records.
pub fn insert_usage_sql(rows: usize) -> String {
    multi_row_insert("usage_records", USAGE_COLS, USAGE_NCOLS, rows, "ON CONFLICT (id) DO NOTHING")
}

/// `INSERT … VALUES (…), (…)` for `rows` price history rows; a row already stored for the same
/// time and deployment is replaced.
pub fn insert_prices_sql(rows: usize) -> String {
    multi_row_insert(
        "price_history",
        PRICE_COLS,
        PRICE_NCOLS,
        rows,
        "ON CONFLICT (ts_ms, deployment) DO UPDATE SET price_input = excluded.price_input, price_output = excluded.price_output, usd_per_mwh = excluded.usd_per_mwh, stale = excluded.stale",
    )
}

fn multi_row_insert(table: &str, cols: &str, ncols: usize, rows: usize, tail: &str) -> String {
    let mut s = format!("INSERT INTO {table} ({cols}) VALUES ");
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..ncols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push_str(&format!("${}", r * ncols + c + 1));
        }
        s.push(')');
    }
    s.push(' ');
    s.push_str(tail);
    s
}

/// Rewrites `$n` placeholders to SQLite's `?n`.
pub fn sqlite_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_rewrite_for_sqlite() {
        assert_eq!(sqlite_sql("a = $1 AND b = $12 AND c = '$x'"), "a = ?1 AND b = ?12 AND c = '$x'");
        let s = insert_usage_sql(2);
        assert!(s.contains("$23), ($24,") && s.ends_with("$46) ON CONFLICT (id) DO NOTHING"), "{s}");
        assert_eq!(USAGE_COLS.split(',').count(), USAGE_NCOLS);
        assert_eq!(PRICE_COLS.split(',').count(), PRICE_NCOLS);
        let s = insert_prices_sql(2);
        assert!(s.contains("$6), ($7,") && s.contains("$12) ON CONFLICT (ts_ms, deployment) DO UPDATE"), "{s}");
    }
}
