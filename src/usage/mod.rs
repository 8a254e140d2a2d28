//! Usage records: one per authenticated chat request — success, upstream error, client
//! disconnect or mid-stream failure — written off the request path.
//!
//! The request path only builds a [`UsageRecord`] and `try_send`s it into a bounded queue
//! ([`UsageSink::emit`], no lock, no I/O). A writer task on the store runtime drains the queue
//! in batches (up to `batch_size` records or `flush_interval`, whichever comes first) and
//! inserts each batch in one transaction. Records do not wake the writer one by one: it sleeps
//! through the interval unless a full batch is queued or a flush is asked for. If the store
//! refuses, the batch is appended to a local spill file (JSON lines) and retried from there
//! every `retry_interval` until the store takes it; inserts skip ids already stored, so a
//! replay never duplicates. A spill file left by a crash is replayed at start. Shutdown calls
//! [`UsageSink::flush`], which writes (or spills) everything queued before the process exits.
//!
//! Nothing is dropped silently: the only loss is a full queue (the writer cannot keep up
//! even by spilling to disk), which is counted in `joule_usage_dropped_total` and logged.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::metrics::Metrics;

mod record;
pub use record::Record;

/// The durable side could not take a write; the message says why (never a credential).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WriteError(pub String);

/// Where the writer puts usage records: the store implements it. Calls wait on a database,
/// so only the writer task makes them.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Inserts a batch in one transaction, skipping ids already stored.
    async fn insert_usage(&self, records: Arc<Vec<UsageRecord>>) -> Result<(), WriteError>;
    /// Moves keys' last-used times forward (key id, unix ms).
    async fn touch_keys(&self, used: Vec<(String, i64)>) -> Result<(), WriteError>;
    /// Runs the writer task where the store runs its I/O.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

/// One request, as stored. Times are unix ms; prices $/Mtok; costs USD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The request id (`x-request-id`).
    pub id: String,
    pub ts_ms: i64,
    /// The gateway instance that served it.
    pub instance: String,
    pub project_id: Option<String>,
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    /// Base model id (tags stripped).
    pub model: Option<String>,
    /// The strategy set that ranked the deployments (`latency+price`).
    pub strategy: Option<String>,
    pub deployment: Option<String>,
    pub data_center: Option<String>,
    /// HTTP status sent (499: the client went away first).
    pub status: u16,
    /// `ok` or the error label (`upstream_stream_interrupted`, `rate_limited`, …).
    pub outcome: String,
    pub stream: bool,
    pub ttft_ms: Option<f64>,
    pub latency_ms: f64,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    /// Token prices charged, $/Mtok, at decision time.
    pub price_input: Option<f64>,
    pub price_output: Option<f64>,
    pub cost_input: f64,
    pub cost_output: f64,
    /// The routing-fee part of the cost (third-party routes).
    pub cost_fee: f64,
    pub cost_total: f64,
}

/// A finished request's cost parts, USD: input, output and the routing fee. The cost the
/// client was shown (`usage.cost`) when there was one; else from the quote.
fn cost_parts(rec: &Record) -> (f64, f64, f64) {
    let tin = rec.prompt_tokens.unwrap_or(0) as f64;
    let tout = rec.completion_tokens.unwrap_or(0) as f64;
    match (&rec.cost, &rec.quote) {
        (Some(c), _) => (c.input, c.output, c.routing_fee),
        (None, Some(q)) => (tin * q.price.input / 1e6, tout * q.price.output / 1e6, (tin * q.fee.input + tout * q.fee.output) / 1e6),
        (None, None) => (0.0, 0.0, 0.0),
    }
}

impl UsageRecord {
    /// Builds the record of a finished request.
    pub fn from_record(rec: &Record, instance: &str, ts_ms: i64) -> Self {
        let (ci, co, fee) = cost_parts(rec);
        let p = rec.principal.as_ref();
        UsageRecord {
            id: rec.request_id.clone(),
            ts_ms,
            instance: instance.to_string(),
            project_id: p.and_then(|p| p.project.as_ref()).map(|p| p.id.to_string()),
            key_id: p.map(|p| p.key_id.to_string()),
            key_name: rec.key_name.as_deref().map(str::to_string),
            model: rec.model.clone(),
            strategy: rec.strategy.clone(),
            deployment: rec.deployment.clone(),
            data_center: rec.data_center.clone(),
            status: rec.status,
            outcome: rec.error.unwrap_or("ok").to_string(),
            stream: rec.stream,
            ttft_ms: rec.ttft.map(|t| t.as_secs_f64() * 1e3),
            latency_ms: rec.started.elapsed().as_secs_f64() * 1e3,
            tokens_in: rec.prompt_tokens,
            tokens_out: rec.completion_tokens,
            price_input: rec.quote.map(|q| q.price.input),
            price_output: rec.quote.map(|q| q.price.output),
            cost_input: ci,
            cost_output: co,
            cost_fee: fee,
            cost_total: ci + co,
        }
    }
}

/// Writer tuning, from `[store]` in the config.
#[derive(Debug, Clone)]
pub struct UsageSettings {
    /// Records the queue holds. Default 65 536.
    pub queue_capacity: usize,
    /// Most records per insert. Default 500.
    pub batch_size: usize,
    /// Longest a record waits in a partial batch. Default 200 ms.
    pub flush_interval: Duration,
    /// How often a spill file is retried. Default 1 s.
    pub retry_interval: Duration,
    /// Where records go while the store is unavailable.
    pub spill_path: PathBuf,
}

enum Msg {
    Record(Box<UsageRecord>),
    Flush(oneshot::Sender<()>),
}

/// The request path's end of the usage queue. Cheap to clone.
#[derive(Clone)]
pub struct UsageSink {
    tx: Option<mpsc::Sender<Msg>>,
    /// Wakes the writer before its interval ends: a full batch is queued, or a flush asked.
    nudge: Arc<Notify>,
    /// The queue depth that nudges the writer (`batch_size`).
    batch_size: usize,
    /// This process's instance id (random per start).
    pub instance: Arc<str>,
    metrics: Metrics,
}

impl UsageSink {
    /// A sink that records nothing (store disabled).
    pub fn disabled(metrics: Metrics) -> Self {
        UsageSink { tx: None, nudge: Arc::new(Notify::new()), batch_size: usize::MAX, instance: Arc::from(new_instance_id()), metrics }
    }

    /// Starts the writer on the store runtime and returns its sink.
    pub fn start(store: Arc<dyn UsageStore>, settings: UsageSettings, metrics: Metrics, instance: Arc<str>) -> Self {
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let nudge = Arc::new(Notify::new());
        let batch_size = settings.batch_size.max(1);
        let writer = Writer { store: store.clone(), settings, metrics: metrics.clone(), nudge: nudge.clone(), spilled: false, last_retry: None };
        store.spawn(Box::pin(writer.run(rx)));
        UsageSink { tx: Some(tx), nudge, batch_size, instance, metrics }
    }

    /// Whether records are being kept.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record. Never blocks.
    pub fn emit(&self, r: UsageRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Record(Box::new(r))) {
            Ok(()) => {
                let queued = tx.max_capacity() - tx.capacity();
                self.metrics.usage_queue_depth.set(queued as i64);
                if queued >= self.batch_size {
                    self.nudge.notify_one();
                }
            }
            Err(refused) => {
                self.metrics.usage_dropped.inc();
                let id = match refused.into_inner() {
                    Msg::Record(r) => r.id,
                    Msg::Flush(_) => String::new(),
                };
                tracing::error!(request_id = %id, "usage queue full: record dropped");
            }
        }
    }

    /// Writes (or spills) everything queued so far; returns false if that did not finish
    /// within `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (ack, done) = oneshot::channel();
        let sent = tokio::time::timeout(timeout, tx.send(Msg::Flush(ack))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return false;
        }
        self.nudge.notify_one();
        matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(())))
    }
}

/// Accounts a finished request of an authenticated key: its tokens and cost go to the key's
/// and project's limits and budget, and its usage record to the queue. Requests that never
/// authenticated leave no record.
pub fn account(sink: &UsageSink, rec: &Record) {
    let Some(p) = &rec.principal else { return };
    let now = crate::clock::now_ms();
    let (ci, co, _) = cost_parts(rec);
    let tokens = rec.prompt_tokens.unwrap_or(0) + rec.completion_tokens.unwrap_or(0);
    crate::access::limits::settle(p, tokens, ci + co, crate::clock::now_ns(), now);
    // The record's strings are copies: made only when the record is kept.
    if sink.enabled() {
        let started = now - i64::try_from(rec.started.elapsed().as_millis()).unwrap_or(0);
        sink.emit(UsageRecord::from_record(rec, &sink.instance, started));
    }
}

/// A random instance id: `gw_` + 64 random bits.
pub fn new_instance_id() -> String {
    format!("gw_{}", hex::encode(rand::random::<[u8; 8]>()))
}

struct Writer {
    store: Arc<dyn UsageStore>,
    settings: UsageSettings,
    metrics: Metrics,
    nudge: Arc<Notify>,
    /// Whether the spill file may hold records.
    spilled: bool,
    last_retry: Option<Instant>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        self.spilled = self.settings.spill_path.exists();
        let mut batch: Vec<UsageRecord> = Vec::new();
        let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            // Sleep through the interval unless a sender nudges (a full batch is queued, a
            // flush is asked for): records arriving one by one do not wake the writer one by
            // one, which at thousands of requests a second cost more than the inserts.
            let deadline = tokio::time::Instant::now() + self.settings.flush_interval;
            let _ = tokio::time::timeout_at(deadline, self.nudge.notified()).await;
            let closed = loop {
                match rx.try_recv() {
                    Ok(Msg::Record(r)) => {
                        batch.push(*r);
                        if batch.len() >= self.settings.batch_size {
                            self.write(std::mem::take(&mut batch)).await;
                        }
                    }
                    Ok(Msg::Flush(ack)) => acks.push(ack),
                    Err(mpsc::error::TryRecvError::Empty) => break false,
                    Err(mpsc::error::TryRecvError::Disconnected) => break true,
                }
            };
            self.metrics.usage_queue_depth.set(rx.len() as i64);
            if !batch.is_empty() {
                self.write(std::mem::take(&mut batch)).await;
            }
            if self.spilled && (!acks.is_empty() || self.retry_due()) {
                self.replay().await;
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            if closed {
                return;
            }
        }
    }

    fn retry_due(&self) -> bool {
        self.last_retry.is_none_or(|t| t.elapsed() >= self.settings.retry_interval)
    }

    async fn write(&mut self, batch: Vec<UsageRecord>) {
        let touched = last_used(&batch);
        let batch = Arc::new(batch);
        let started = Instant::now();
        match self.store.insert_usage(batch.clone()).await {
            Ok(()) => {
                self.metrics.store_write.with_label_values(&["usage"]).observe(started.elapsed().as_secs_f64());
                self.metrics.usage_written.inc_by(batch.len() as u64);
                // Last-used times are a convenience: a failure here is only logged.
                if let Err(e) = self.store.touch_keys(touched).await {
                    tracing::debug!(error = %e, "could not update keys' last-used times");
                }
            }
            Err(e) => {
                self.metrics.store_errors.with_label_values(&["usage"]).inc();
                tracing::warn!(error = %e, records = batch.len(), "usage store unavailable: spilling to {}", self.settings.spill_path.display());
                self.spill(&batch);
            }
        }
    }

    fn spill(&mut self, batch: &[UsageRecord]) {
        match append_spill(&self.settings.spill_path, batch) {
            Ok(()) => {
                self.spilled = true;
                self.metrics.usage_spilled.inc_by(batch.len() as u64);
            }
            Err(e) => {
                self.metrics.usage_dropped.inc_by(batch.len() as u64);
                tracing::error!(error = %e, records = batch.len(), "cannot write the usage spill file: records lost");
            }
        }
    }

    /// Moves spilled records into the store; keeps the file if the store still refuses.
    async fn replay(&mut self) {
        self.last_retry = Some(Instant::now());
        let records = match read_spill(&self.settings.spill_path) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the usage spill file");
                return;
            }
        };
        for chunk in records.chunks(self.settings.batch_size.max(1)) {
            let started = Instant::now();
            if let Err(e) = self.store.insert_usage(Arc::new(chunk.to_vec())).await {
                tracing::debug!(error = %e, "store still unavailable; spill kept");
                return;
            }
            self.metrics.store_write.with_label_values(&["usage"]).observe(started.elapsed().as_secs_f64());
            self.metrics.usage_written.inc_by(chunk.len() as u64);
        }
        let _ = self.store.touch_keys(last_used(&records)).await;
        match std::fs::remove_file(&self.settings.spill_path) {
            Ok(()) => {
                self.spilled = false;
                tracing::info!(records = records.len(), "spilled usage records written to the store");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.spilled = false,
            Err(e) => tracing::error!(error = %e, "cannot remove the replayed spill file"),
        }
    }
}

/// The latest use of each key in `batch`.
fn last_used(batch: &[UsageRecord]) -> Vec<(String, i64)> {
    let mut m: HashMap<&str, i64> = HashMap::new();
    for r in batch {
        if let Some(k) = r.key_id.as_deref().filter(|k| !k.starts_with(crate::access::CONFIG_KEY_PREFIX)) {
            let e = m.entry(k).or_insert(r.ts_ms);
            *e = (*e).max(r.ts_ms);
        }
    }
    m.into_iter().map(|(k, t)| (k.to_string(), t)).collect()
}

fn append_spill(path: &Path, batch: &[UsageRecord]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut buf = Vec::new();
    for r in batch {
        serde_json::to_writer(&mut buf, r)?;
        buf.push(b'\n');
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(&buf)?;
    f.sync_data()
}

/// Reads a spill file; a torn last line (crash mid-write) is skipped.
fn read_spill(path: &Path) -> std::io::Result<Vec<UsageRecord>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        match serde_json::from_str(&line) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable line of the usage spill file"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, key: Option<&str>, ts: i64) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            ts_ms: ts,
            instance: "gw_1".into(),
            project_id: None,
            key_id: key.map(str::to_string),
            key_name: None,
            model: Some("m".into()),
            strategy: None,
            deployment: None,
            data_center: None,
            status: 200,
            outcome: "ok".into(),
            stream: false,
            ttft_ms: None,
            latency_ms: 1.0,
            tokens_in: Some(1),
            tokens_out: Some(2),
            price_input: None,
            price_output: None,
            cost_input: 0.0,
            cost_output: 0.0,
            cost_fee: 0.0,
            cost_total: 0.0,
        }
    }

    #[test]
    fn spill_round_trips_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.jsonl");
        append_spill(&path, &[rec("a", None, 1), rec("b", None, 2)]).unwrap();
        append_spill(&path, &[rec("c", None, 3)]).unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"id\":\"tor").unwrap();
        let back = read_spill(&path).unwrap();
        assert_eq!(back.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(back[0], rec("a", None, 1));
    }

    /// A store that hands each written batch to the test.
    struct Batches(mpsc::UnboundedSender<Vec<String>>);

    #[async_trait]
    impl UsageStore for Batches {
        async fn insert_usage(&self, records: Arc<Vec<UsageRecord>>) -> Result<(), WriteError> {
            let _ = self.0.send(records.iter().map(|r| r.id.clone()).collect());
            Ok(())
        }
        async fn touch_keys(&self, _: Vec<(String, i64)>) -> Result<(), WriteError> {
            Ok(())
        }
        fn spawn(&self, task: BoxFuture<'static, ()>) {
            tokio::spawn(task);
        }
    }

    /// A sink whose writer's interval is longer than any test (only a nudge gets records
    /// written), handing each written batch to the receiver.
    fn hour_sink(dir: &tempfile::TempDir, queue_capacity: usize, batch_size: usize, metrics: &Metrics) -> (UsageSink, mpsc::UnboundedReceiver<Vec<String>>) {
        let (tx, written) = mpsc::unbounded_channel();
        let settings = UsageSettings {
            queue_capacity,
            batch_size,
            flush_interval: Duration::from_secs(3600),
            retry_interval: Duration::from_secs(3600),
            spill_path: dir.path().join("spill.jsonl"),
        };
        (UsageSink::start(Arc::new(Batches(tx)), settings, metrics.clone(), Arc::from("gw_1")), written)
    }

    #[tokio::test]
    async fn a_full_batch_and_a_flush_are_written_without_waiting_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, mut written) = hour_sink(&dir, 100, 3, &Metrics::new().unwrap());
        let within = Duration::from_secs(20);
        for id in ["a", "b", "c", "d"] {
            sink.emit(rec(id, None, 1));
        }
        let first = tokio::time::timeout(within, written.recv()).await.expect("a full batch is written at once").unwrap();
        assert_eq!(first, ["a", "b", "c"]);
        assert!(sink.flush(within).await, "a flush is answered at once");
        assert_eq!(written.try_recv().unwrap(), ["d"], "the flush wrote the partial batch");
        assert!(written.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new().unwrap();
        let (sink, _written) = hour_sink(&dir, 2, 100, &metrics);
        for id in ["a", "b", "c"] {
            sink.emit(rec(id, None, 1));
        }
        assert_eq!(metrics.usage_dropped.get(), 1);
    }

    #[test]
    fn last_used_keeps_the_latest_per_store_key() {
        let mut v = last_used(&[rec("a", Some("key_1"), 5), rec("b", Some("key_1"), 9), rec("c", Some("config:demo"), 9)]);
        v.sort();
        assert_eq!(v, [("key_1".to_string(), 9)]);
    }
}
