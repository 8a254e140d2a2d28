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
//!
//! Batches (migration 4): uploaded and output files with their content, batches, and one row
//! per input line whose `state` (`pending`, `leased`, `done`, `failed`) and lease
//! (`lease_owner`, `lease_until_ms`, wall-clock ms) let several instances share a batch's
//! work: a line is leased by one instance at a time, and a lease that runs out makes the line
//! available again.

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
", r"
CREATE TABLE batch_files (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    purpose    TEXT NOT NULL,
    filename   TEXT NOT NULL,
    bytes      BIGINT NOT NULL,
    lines      BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    content    TEXT NOT NULL
);
CREATE INDEX batch_files_owner ON batch_files (owner, created_ms, id);
CREATE TABLE batches (
    id                     TEXT PRIMARY KEY,
    owner                  TEXT NOT NULL,
    project_id             TEXT,
    key_id                 TEXT NOT NULL,
    model                  TEXT NOT NULL,
    input_file_id          TEXT NOT NULL,
    endpoint               TEXT NOT NULL,
    window_s               BIGINT NOT NULL,
    metadata               TEXT,
    status                 TEXT NOT NULL,
    created_ms             BIGINT NOT NULL,
    expires_ms             BIGINT NOT NULL,
    in_progress_ms         BIGINT,
    finalizing_ms          BIGINT,
    completed_ms           BIGINT,
    failed_ms              BIGINT,
    expired_ms             BIGINT,
    cancelling_ms          BIGINT,
    cancelled_ms           BIGINT,
    output_file_id         TEXT,
    error_file_id          TEXT,
    errors                 TEXT,
    planned_start_ms       BIGINT,
    estimate_at_submission DOUBLE PRECISION NOT NULL,
    est_input_tokens       DOUBLE PRECISION NOT NULL,
    est_output_tokens      DOUBLE PRECISION NOT NULL
);
CREATE INDEX batches_owner ON batches (owner, created_ms, id);
CREATE INDEX batches_status ON batches (status);
CREATE TABLE batch_lines (
    batch_id       TEXT NOT NULL,
    line           BIGINT NOT NULL,
    custom_id      TEXT NOT NULL,
    body           TEXT NOT NULL,
    state          TEXT NOT NULL,
    lease_owner    TEXT,
    lease_until_ms BIGINT,
    attempts       BIGINT NOT NULL,
    output         TEXT,
    cost           DOUBLE PRECISION,
    energy_cost    DOUBLE PRECISION,
    site           TEXT,
    finished_ms    BIGINT,
    PRIMARY KEY (batch_id, line)
);
CREATE INDEX batch_lines_state ON batch_lines (batch_id, state);
CREATE INDEX batch_lines_leases ON batch_lines (lease_owner) WHERE state = 'leased';
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

pub const FILE_COLS: &str = "id, owner, purpose, filename, bytes, created_ms, lines";
pub const INSERT_FILE: &str = "INSERT INTO batch_files (id, owner, purpose, filename, bytes, created_ms, lines, content) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub const FILE_CONTENT: &str = "SELECT content FROM batch_files WHERE owner = $1 AND id = $2";
pub const DELETE_FILE: &str = "DELETE FROM batch_files WHERE owner = $1 AND id = $2";

pub const BATCH_COLS: &str = "id, owner, project_id, key_id, model, input_file_id, endpoint, window_s, metadata, status, created_ms, expires_ms, in_progress_ms, finalizing_ms, completed_ms, failed_ms, expired_ms, cancelling_ms, cancelled_ms, output_file_id, error_file_id, errors, planned_start_ms, estimate_at_submission, est_input_tokens, est_output_tokens";
/// Columns in [`BATCH_COLS`].
pub const BATCH_NCOLS: usize = 26;
pub const INSERT_BATCH: &str = "INSERT INTO batches (id, owner, project_id, key_id, model, input_file_id, endpoint, window_s, metadata, status, created_ms, expires_ms, in_progress_ms, finalizing_ms, completed_ms, failed_ms, expired_ms, cancelling_ms, cancelled_ms, output_file_id, error_file_id, errors, planned_start_ms, estimate_at_submission, est_input_tokens, est_output_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)";
pub const SET_PLANNED_START: &str = "UPDATE batches SET planned_start_ms = $2 WHERE id = $1";
/// Rows per multi-row `INSERT` of batch lines: the batch id once, then 3 parameters a row
/// (901 in all: under SQLite's oldest default limit of 999 as well as PostgreSQL's 65 535).
pub const LINE_ROWS_PER_INSERT: usize = 300;

/// The lines a lease may take, lowest first, at most `$2`, of the batch `$1`: pending ones,
/// or leased ones whose lease ran out before `$3`.
macro_rules! leasable {
    () => {
        "batch_id = $1 AND (state = 'pending' OR (state = 'leased' AND lease_until_ms < $3)) ORDER BY line LIMIT $2"
    };
}
/// SQLite: leases the [`leasable!`] lines to `$4` until `$5` in one statement (the write
/// transaction already excludes other writers).
pub const LEASE_LINES_SQLITE: &str = concat!(
    "UPDATE batch_lines SET state = 'leased', lease_owner = $4, lease_until_ms = $5, attempts = attempts + 1 ",
    "WHERE batch_id = $1 AND line IN (SELECT line FROM batch_lines WHERE ",
    leasable!(),
    ") RETURNING line, custom_id, body, attempts"
);
/// PostgreSQL, first step of a lease: chooses and locks the [`leasable!`] lines, skipping
/// those another transaction is leasing at this moment; [`lease_picked_sql`] then leases them
/// in the same transaction. (One `UPDATE … WHERE line IN (SELECT … LIMIT $2 FOR UPDATE SKIP
/// LOCKED)` is not enough: PostgreSQL may rescan the subquery as the inner side of a join, and
/// the contract test saw it lease more than `$2` lines.)
pub const PICK_LINES_PG: &str = concat!("SELECT line FROM batch_lines WHERE ", leasable!(), " FOR UPDATE SKIP LOCKED");

/// Leases `n` lines of the batch `$1` (`$4`…, chosen by [`PICK_LINES_PG`]) to `$2` until `$3`.
pub fn lease_picked_sql(n: usize) -> String {
    let list: Vec<String> = (0..n).map(|i| format!("${}", i + 4)).collect();
    format!(
        "UPDATE batch_lines SET state = 'leased', lease_owner = $2, lease_until_ms = $3, attempts = attempts + 1 \
WHERE batch_id = $1 AND line IN ({}) RETURNING line, custom_id, body, attempts",
        list.join(", ")
    )
}

pub const RENEW_LEASES: &str = "UPDATE batch_lines SET lease_until_ms = $2 WHERE lease_owner = $1 AND state = 'leased'";
/// Lines per [`release_lines_sql`] or [`lease_picked_sql`] statement.
pub const LINES_PER_STATEMENT: usize = 500;
/// Stores a line's result (`$3`: `done` or `failed`) unless it is finished already.
pub const FINISH_LINE: &str = "UPDATE batch_lines SET state = $3, output = $4, cost = $5, energy_cost = $6, site = $7, finished_ms = $8, lease_owner = NULL, lease_until_ms = NULL WHERE batch_id = $1 AND line = $2 AND state NOT IN ('done', 'failed')";
pub const FINISHED_LINES: &str = "SELECT line, custom_id, state, output FROM batch_lines WHERE batch_id = $1 AND state IN ('done', 'failed') ORDER BY line";
pub const UNFINISHED_LINES: &str = "SELECT line, custom_id FROM batch_lines WHERE batch_id = $1 AND state IN ('pending', 'leased') ORDER BY line";

/// Line counts (total, done, failed, leased with a lease outlasting `$now`), cost and energy
/// cost of finished lines, per batch, for the batches `sel` selects (`WHERE … ORDER BY …
/// LIMIT …` on `batches`, its parameters numbered before `now`).
pub fn line_totals_sql(sel: &str, now: usize) -> String {
    format!(
        "SELECT batch_id, COUNT(*), \
SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END), \
SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), \
SUM(CASE WHEN state = 'leased' AND lease_until_ms > ${now} THEN 1 ELSE 0 END), \
CAST(COALESCE(SUM(CASE WHEN state IN ('done', 'failed') THEN cost END), 0) AS DOUBLE PRECISION), \
CAST(COALESCE(SUM(CASE WHEN state IN ('done', 'failed') THEN energy_cost END), 0) AS DOUBLE PRECISION) \
FROM batch_lines WHERE batch_id IN (SELECT id FROM batches {sel}) GROUP BY batch_id"
    )
}

/// The distinct sites finished lines ran at, per batch, for the batches `sel` selects (as
/// [`line_totals_sql`]).
pub fn line_sites_sql(sel: &str) -> String {
    format!(
        "SELECT DISTINCT batch_id, site FROM batch_lines WHERE batch_id IN (SELECT id FROM batches {sel}) \
AND state IN ('done', 'failed') AND site IS NOT NULL"
    )
}

/// Moves the batch `$1` to the status `$2` if its status is one of `from` statuses, setting
/// the output file (`$3`), error file (`$4`) and errors (`$5`) where given (not NULL), and
/// stamping the column `stamp` (a name from a fixed list, never client text) with `$6`. The
/// `from` statuses follow: `$7`… with a stamp, `$6`… without.
pub fn transition_sql(stamp: Option<&'static str>, from: usize) -> String {
    let first = if stamp.is_some() { 7 } else { 6 };
    let list: Vec<String> = (0..from).map(|i| format!("${}", i + first)).collect();
    let stamp = stamp.map(|col| format!(", {col} = $6")).unwrap_or_default();
    format!(
        "UPDATE batches SET status = $2, output_file_id = COALESCE($3, output_file_id), \
error_file_id = COALESCE($4, error_file_id), errors = COALESCE($5, errors){stamp} WHERE id = $1 AND status IN ({})",
        list.join(", ")
    )
}

/// `INSERT … VALUES (…), (…)` for `rows` batch lines of the batch `$1`, each pending with no
/// attempt yet: `($1, $2, $3, $4, 'pending', 0), ($1, $5, $6, $7, 'pending', 0), …` (line,
/// custom id, body).
pub fn insert_lines_sql(rows: usize) -> String {
    let mut s = String::from("INSERT INTO batch_lines (batch_id, line, custom_id, body, state, attempts) VALUES ");
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        let p = 2 + 3 * r;
        s.push_str(&format!("($1, ${}, ${}, ${}, 'pending', 0)", p, p + 1, p + 2));
    }
    s
}

/// Gives `n` lines of the batch `$1` leased by `$2` back (`$3`…: the line numbers): pending
/// again, the attempt not counted.
pub fn release_lines_sql(n: usize) -> String {
    let list: Vec<String> = (0..n).map(|i| format!("${}", i + 3)).collect();
    format!(
        "UPDATE batch_lines SET state = 'pending', lease_owner = NULL, lease_until_ms = NULL, \
attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
WHERE batch_id = $1 AND lease_owner = $2 AND state = 'leased' AND line IN ({})",
        list.join(", ")
    )
}

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
        assert_eq!(BATCH_COLS.split(',').count(), BATCH_NCOLS);
        assert!(INSERT_BATCH.contains(&format!("({BATCH_COLS}) VALUES")) && INSERT_BATCH.ends_with(&format!("${BATCH_NCOLS})")));
        assert!(insert_lines_sql(2).ends_with("VALUES ($1, $2, $3, $4, 'pending', 0), ($1, $5, $6, $7, 'pending', 0)"));
        assert!(release_lines_sql(2).ends_with("line IN ($3, $4)"));
        assert!(transition_sql(Some("completed_ms"), 2).ends_with("errors = COALESCE($5, errors), completed_ms = $6 WHERE id = $1 AND status IN ($7, $8)"));
        assert!(transition_sql(None, 1).ends_with("errors = COALESCE($5, errors) WHERE id = $1 AND status IN ($6)"));
        assert!(line_totals_sql("WHERE id = $1", 2).contains("lease_until_ms > $2 THEN"));
        assert!(PICK_LINES_PG.ends_with("LIMIT $2 FOR UPDATE SKIP LOCKED") && !LEASE_LINES_SQLITE.contains("FOR UPDATE"));
        assert!(lease_picked_sql(2).contains("line IN ($4, $5) RETURNING"));
    }
}
