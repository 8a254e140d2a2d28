//! Batches: the OpenAI Batch API's files and batches as joule keeps them, and the scheduler
//! that runs a batch's requests when and where energy is cheapest before its deadline.
//!
//! - this module: the records ([`FileObject`], [`BatchRecord`], lines), their statuses, and
//!   [`BatchStore`], the persistence interface the store implements (files, batches and
//!   per-line state with row leases, so several instances share the work and a crash resends
//!   at most the lines that were in flight);
//! - [`input`]: reading and checking an uploaded JSONL file, line by line;
//! - [`plan`]: the planner — work into time slots and sites before each deadline, cheapest
//!   first, from a price forecast (pure, no I/O; the gateway and the evaluation share it);
//! - [`schedule`]: one scheduling decision (forecast → cell costs → plan), shared by the
//!   gateway and the evaluation;
//! - [`forecast`]: the price forecast per price node (day-ahead prices when the feed has
//!   them, else a profile of the recent days blended with the last price);
//! - [`evaluate`]: `joule energy evaluate-batch`, the scheduler on a simulated clock against
//!   a price trace, compared with running at submission and with the hindsight oracle;
//! - [`oracle`]: that oracle, an exact min-cost flow over (batch → slot and site) cells.
//!
//! Scheduling times are pricing-clock seconds (the energy feed's clock: wall time in
//! production, trace time under a replay); leases are wall-clock milliseconds (they measure
//! whether an instance is alive).

pub mod evaluate;
pub mod forecast;
pub mod input;
pub mod oracle;
pub mod plan;
pub mod schedule;

use async_trait::async_trait;
use serde::Serialize;

/// A batch's status, as OpenAI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    /// Every status.
    pub const ALL: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::Failed,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// The status of a wire or database name.
    pub fn parse(s: &str) -> Option<BatchStatus> {
        BatchStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// No more work will happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, BatchStatus::Failed | BatchStatus::Completed | BatchStatus::Expired | BatchStatus::Cancelled)
    }
}

/// What a file is for (`purpose`).
pub const PURPOSE_BATCH: &str = "batch";
/// A batch's output file.
pub const PURPOSE_OUTPUT: &str = "batch_output";

/// A stored file's metadata (the content is read separately).
#[derive(Debug, Clone, PartialEq)]
pub struct FileObject {
    /// `file-…`.
    pub id: String,
    /// Who may read it: `project:<id>`, or `key:<id>` for a key outside any project.
    pub owner: String,
    /// `batch` (uploaded input) or `batch_output` (a batch's output or error file).
    pub purpose: String,
    pub filename: String,
    pub bytes: i64,
    /// Wall-clock unix ms.
    pub created_ms: i64,
    /// JSONL lines in the file.
    pub lines: i64,
}

/// How a batch's lines stand, counted from the lines themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LineCounts {
    pub total: i64,
    /// Finished with a 2xx answer.
    pub completed: i64,
    /// Finished with an error (an answer ≥ 400, or no answer after every attempt).
    pub failed: i64,
    /// Leased by an instance right now (lease not expired).
    pub in_flight: i64,
}

impl LineCounts {
    /// Lines not finished yet (pending or in flight).
    pub fn unfinished(&self) -> i64 {
        self.total - self.completed - self.failed
    }
}

/// One batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    /// `batch_…`.
    pub id: String,
    /// As [`FileObject::owner`].
    pub owner: String,
    /// The project whose budget pays, if any.
    pub project_id: Option<String>,
    /// The key that created it (store id or `config:<name>`).
    pub key_id: String,
    /// The `model` every line names (tags included).
    pub model: String,
    pub input_file_id: String,
    /// `/v1/chat/completions`.
    pub endpoint: String,
    /// The completion window, seconds.
    pub window_s: i64,
    /// The client's `metadata` object as JSON text.
    pub metadata: Option<String>,
    pub status: BatchStatus,
    /// Pricing-clock unix ms of each status change (`created_ms` = submission).
    pub created_ms: i64,
    /// `created_ms + window`: the deadline.
    pub expires_ms: i64,
    pub in_progress_ms: Option<i64>,
    pub finalizing_ms: Option<i64>,
    pub completed_ms: Option<i64>,
    pub failed_ms: Option<i64>,
    pub expired_ms: Option<i64>,
    pub cancelling_ms: Option<i64>,
    pub cancelled_ms: Option<i64>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// Validation errors (OpenAI's `errors` object) as JSON text.
    pub errors: Option<String>,
    /// When the plan starts the batch's work (pricing-clock unix ms), as last planned.
    pub planned_start_ms: Option<i64>,
    /// Estimated total cost had every line run at submission, $ (the saving's reference).
    pub estimate_at_submission: f64,
    /// Estimated tokens over all lines (input from the body, output from `max_tokens` or a
    /// default), for planning and budget checks.
    pub est_input_tokens: f64,
    pub est_output_tokens: f64,
    /// From the lines (filled on every read).
    pub counts: LineCounts,
    /// Finished lines' cost and its energy part, $ (filled on every read).
    pub cost: f64,
    pub energy_cost: f64,
    /// Data centers (or provider ids) finished lines ran at, sorted (filled on every read).
    pub sites: Vec<String>,
}

/// One input line, as stored when the batch is created.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLine {
    /// 1-based line number in the input file.
    pub line: i64,
    pub custom_id: String,
    /// The request body (JSON text).
    pub body: String,
}

/// A line an instance has leased to send.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedLine {
    pub line: i64,
    pub custom_id: String,
    pub body: String,
    /// Times it was leased, this one included.
    pub attempts: i64,
}

/// What became of a line.
#[derive(Debug, Clone, PartialEq)]
pub struct LineResult {
    pub line: i64,
    /// A 2xx answer (goes to the output file) or not (the error file).
    pub ok: bool,
    /// The output or error file's JSON line (without the newline).
    pub output: String,
    pub cost: f64,
    pub energy_cost: f64,
    /// Where it ran, if it reached a deployment.
    pub site: Option<String>,
    /// Wall-clock unix ms.
    pub finished_ms: i64,
}

/// A finished line, as the output and error files list them.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedLine {
    pub line: i64,
    pub custom_id: String,
    pub ok: bool,
    pub output: String,
}

/// Fields set with a status change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub errors: Option<String>,
}

/// Why a batch store operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchStoreError {
    /// The database cannot be reached right now (retry later; 503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A duplicate id or another refusal of the data itself (500: ids are generated).
    #[error("store error: {0}")]
    Backend(String),
}

/// Persistence of files, batches and their lines. Implemented by `store::Store`; every method
/// is one transaction. `owner` arguments restrict reads to that owner (`None`: any — the
/// scheduler's view).
#[async_trait]
pub trait BatchStore: Send + Sync {
    /// Stores a file and its content (UTF-8 JSONL text).
    async fn insert_file(&self, file: &FileObject, content: String) -> Result<(), BatchStoreError>;
    /// A file's metadata.
    async fn file(&self, owner: &str, id: &str) -> Result<Option<FileObject>, BatchStoreError>;
    /// The owner's files, ordered by `(created_ms, id)` descending (or ascending), after the
    /// file `after` in that order, at most `limit`, only of `purpose` when given.
    async fn files(&self, owner: &str, purpose: Option<&str>, after: Option<&str>, limit: u32, ascending: bool) -> Result<Vec<FileObject>, BatchStoreError>;
    /// A file's content.
    async fn file_content(&self, owner: &str, id: &str) -> Result<Option<String>, BatchStoreError>;
    /// Deletes a file; whether there was one.
    async fn delete_file(&self, owner: &str, id: &str) -> Result<bool, BatchStoreError>;

    /// Stores a new batch and its lines (state pending).
    async fn insert_batch(&self, batch: &BatchRecord, lines: &[NewLine]) -> Result<(), BatchStoreError>;
    /// A batch with its counts, cost and sites.
    async fn batch(&self, owner: Option<&str>, id: &str) -> Result<Option<BatchRecord>, BatchStoreError>;
    /// The owner's batches, newest first (`(created_ms, id)` descending), after the batch
    /// `after`, at most `limit`.
    async fn batches(&self, owner: &str, after: Option<&str>, limit: u32) -> Result<Vec<BatchRecord>, BatchStoreError>;
    /// Every batch not in a terminal status, oldest first (the scheduler's work list).
    async fn active_batches(&self) -> Result<Vec<BatchRecord>, BatchStoreError>;
    /// Moves a batch from one of `from` to `to`, stamping `to`'s `*_ms` with `at_ms` and
    /// setting `change`'s fields that are `Some`; whether it moved (another instance may have
    /// moved it first).
    async fn transition(&self, id: &str, from: &[BatchStatus], to: BatchStatus, at_ms: i64, change: &Transition) -> Result<bool, BatchStoreError>;
    /// Records the planned start (pricing-clock ms).
    async fn set_planned_start(&self, id: &str, planned_start_ms: Option<i64>) -> Result<(), BatchStoreError>;

    /// Leases up to `n` unfinished lines of a batch — pending ones, or leased ones whose lease
    /// ran out before `now_ms` — to `instance` until `until_ms`, lowest line first. Several
    /// instances leasing at once never get the same line (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
    async fn lease_lines(&self, batch_id: &str, n: u32, instance: &str, now_ms: i64, until_ms: i64) -> Result<Vec<LeasedLine>, BatchStoreError>;
    /// Extends every lease `instance` holds to `until_ms`.
    async fn renew_leases(&self, instance: &str, until_ms: i64) -> Result<(), BatchStoreError>;
    /// Gives leased lines back (pending again) without counting the attempt.
    async fn release_lines(&self, batch_id: &str, lines: &[i64], instance: &str) -> Result<(), BatchStoreError>;
    /// Stores a line's result unless the line is already finished; whether it was stored.
    async fn finish_line(&self, batch_id: &str, result: &LineResult) -> Result<bool, BatchStoreError>;
    /// Finished lines, in line order.
    async fn finished_lines(&self, batch_id: &str) -> Result<Vec<FinishedLine>, BatchStoreError>;
    /// Unfinished lines' numbers and custom ids, in line order.
    async fn unfinished_lines(&self, batch_id: &str) -> Result<Vec<(i64, String)>, BatchStoreError>;
}

/// Shortest and longest `completion_window`, seconds (OpenAI has only `24h`; joule accepts
/// any window from 1 hour to 7 days).
pub const MIN_WINDOW_S: i64 = 3600;
pub const MAX_WINDOW_S: i64 = 7 * 86_400;

/// The batch API's settings. Validated from `[batch]` in the config.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSettings {
    /// Input file limits (OpenAI's 50 000 lines and 200 MB by default).
    pub input: input::InputLimits,
    /// Batch requests in flight at once per deployment, per instance. Default 4.
    pub concurrency: u32,
    /// Requests a deployment serves at once, batch and interactive together. Batch requests
    /// only take what interactive traffic leaves of it: a deployment with `capacity` or more
    /// requests in flight gets no new batch request. Default 32.
    pub deployment_capacity: u32,
    /// Share taken off every batch line's price, 0 to 0.9. Default 0.
    pub discount: f64,
    /// Lines a project may have waiting (unfinished) over all its batches — the batch limit,
    /// separate from the interactive rate limits. Default 1 000 000.
    pub max_queued_lines: i64,
    /// Times a line is sent before it is given up as failed (an instance that dies while
    /// sending it counts too). Default 3.
    pub max_attempts: i64,
    /// Real time between scheduler ticks. Default 1 s.
    pub tick: std::time::Duration,
    /// How long a leased line stays with an instance that stopped renewing. Default 60 s.
    pub lease: std::time::Duration,
    pub schedule: schedule::ScheduleSettings,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            input: input::InputLimits::default(),
            concurrency: 4,
            deployment_capacity: 32,
            discount: 0.0,
            max_queued_lines: 1_000_000,
            max_attempts: 3,
            tick: std::time::Duration::from_secs(1),
            lease: std::time::Duration::from_secs(60),
            schedule: schedule::ScheduleSettings::default(),
        }
    }
}

/// Parses a completion window: `24h`, `90m`, `2d`, `3600s` (1 hour to 7 days).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_window(s: &str) -> Result<i64, String> {
    let secs = crate::clock::parse_duration(s).filter(|d| *d > 0);
    match secs {
        Some(d) if (MIN_WINDOW_S..=MAX_WINDOW_S).contains(&d) => Ok(d),
        _ => Err(format!("completion_window `{}` is not a window from 1h to 7d (e.g. \"24h\")", s.chars().take(40).collect::<String>())),
    }
}
