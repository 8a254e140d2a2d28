//! Price history: a frame of every deployment's token price (and its site's energy price)
//! each time the price book changes, kept for the retention period (≥ 7 days) and served as
//! 4-hour, 24-hour and 7-day windows.
//!
//! Frames live in memory behind `ArcSwap` (readers never lock) and go through a
//! [`HistoryStore`] for durability. The store is written on its own thread, off every request
//! path; frames queued together are appended together, and frames the store refused are
//! retried with the next append. Two stores exist: the gateway's database
//! (the store, table `price_history`; several instances sharing PostgreSQL all
//! append to it, and compaction is a retention delete), and, for gateways without a database,
//! [`FileStore`], which appends one JSON line per frame to `price-history.jsonl` in the data
//! directory, reloads it at start and rewrites it (temp file + rename) to drop expired frames.
//!
//! Frame times are clock times of the price book: the interval start of the prices that made
//! the book (so a replayed or pushed backlog lands where it belongs), or the time a price
//! turned stale.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// One deployment's prices in a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FramePoint {
    pub deployment: Arc<str>,
    /// Client price, $/Mtok.
    pub input: f64,
    pub output: f64,
    /// Energy price used for the site, $/MWh (hosted deployments with a price node).
    pub usd_per_mwh: Option<f64>,
    pub stale: bool,
}

/// Every deployment's prices at time `t`.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Unix seconds.
    pub t: i64,
    pub points: Vec<FramePoint>,
}

/// Why history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("price history {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The store could not be reached right now: worth retrying.
    #[error("price history in the store: {0}")]
    Unavailable(String),
    /// The store refused the frames themselves: retrying cannot help.
    #[error("price history in the store: {0}")]
    Refused(String),
}

/// Durable storage of frames. Called on the history writer thread only.
pub trait HistoryStore: Send {
    /// Frames from `since` to `until` (both included), oldest first.
    ///
    /// # Errors
    /// Storage failures; unreadable records are skipped (and logged), not errors.
    fn load(&mut self, since: i64, until: i64) -> Result<Vec<Frame>, HistoryError>;
    /// Appends frames.
    ///
    /// # Errors
    /// Storage failures.
    fn append(&mut self, frames: &[Arc<Frame>]) -> Result<(), HistoryError>;
    /// Drops stored frames older than `cutoff` (the retention rule). `keep` holds this
    /// process's frames at or after `cutoff`: a store that compacts by rewriting writes them
    /// back; a store shared with other instances just deletes.
    ///
    /// # Errors
    /// Storage failures.
    fn compact(&mut self, cutoff: i64, keep: &[Arc<Frame>]) -> Result<(), HistoryError>;
}

/// One line of the history file.
#[derive(Serialize, Deserialize)]
struct Line {
    t: i64,
    /// deployment → [input, output, $/MWh or null, stale]
    p: std::collections::BTreeMap<String, (f64, f64, Option<f64>, bool)>,
}

impl From<&Frame> for Line {
    fn from(f: &Frame) -> Self {
        Line {
            t: f.t,
            p: f.points.iter().map(|p| (p.deployment.to_string(), (p.input, p.output, p.usd_per_mwh, p.stale))).collect(),
        }
    }
}

impl From<Line> for Frame {
    fn from(l: Line) -> Self {
        Frame {
            t: l.t,
            points: l
                .p
                .into_iter()
                .map(|(d, (input, output, usd_per_mwh, stale))| FramePoint { deployment: d.into(), input, output, usd_per_mwh, stale })
                .collect(),
        }
    }
}

/// Append-only JSON lines file, compacted by rewriting.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl FileStore {
    /// The store in `dir` (created if missing).
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: &Path) -> Result<Self, HistoryError> {
        std::fs::create_dir_all(dir).map_err(|source| HistoryError::Io { path: dir.to_path_buf(), source })?;
        Ok(FileStore { path: dir.join("price-history.jsonl"), file: None })
    }

    fn io(&self, source: std::io::Error) -> HistoryError {
        HistoryError::Io { path: self.path.clone(), source }
    }
}

impl HistoryStore for FileStore {
    fn load(&mut self, since: i64, until: i64) -> Result<Vec<Frame>, HistoryError> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut frames = Vec::new();
        let mut bad = 0usize;
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(|e| self.io(e))?;
            match serde_json::from_str::<Line>(&line) {
                Ok(l) if (since..=until).contains(&l.t) => frames.push(Frame::from(l)),
                Ok(_) => {}
                // A torn last line after a crash is expected; anything else is reported.
                Err(_) => bad += 1,
            }
        }
        if bad > 0 {
            tracing::warn!(path = %self.path.display(), lines = bad, "price history: skipped unreadable lines");
        }
        frames.sort_by_key(|f| f.t);
        Ok(frames)
    }

    fn append(&mut self, frames: &[Arc<Frame>]) -> Result<(), HistoryError> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| self.io(e))?;
            self.file = Some(f);
        }
        let mut buf = Vec::new();
        for f in frames {
            // Serialising plain numbers and strings cannot fail.
            let _ = serde_json::to_writer(&mut buf, &Line::from(f.as_ref()));
            buf.push(b'\n');
        }
        let path = self.path.clone();
        let file = self.file.as_mut().ok_or_else(|| HistoryError::Io { path: path.clone(), source: std::io::ErrorKind::NotFound.into() })?;
        file.write_all(&buf).and_then(|_| file.flush()).map_err(|source| HistoryError::Io { path, source })
    }

    fn compact(&mut self, _cutoff: i64, keep: &[Arc<Frame>]) -> Result<(), HistoryError> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut buf = Vec::new();
        for f in keep {
            let _ = serde_json::to_writer(&mut buf, &Line::from(f.as_ref()));
            buf.push(b'\n');
        }
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| self.io(e))?;
        self.file = None;
        Ok(())
    }
}

enum Msg {
    Append(Arc<Frame>),
    Flush(mpsc::SyncSender<()>),
}

/// Most frames one append carries.
const BATCH: usize = 1000;
/// Most frames kept for a retry while the store refuses appends; older ones are dropped.
const MAX_PENDING: usize = 20_000;

/// The history writer thread's state.
struct Writer {
    store: Box<dyn HistoryStore>,
    retention: i64,
    /// This process's retained frames, for stores that compact by rewriting.
    mirror: std::collections::VecDeque<Arc<Frame>>,
    /// Frames not yet accepted by the store, oldest first.
    pending: Vec<Arc<Frame>>,
    /// Frames appended since the last compaction.
    appended: usize,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            let mut acks = Vec::new();
            let mut next = Some(first);
            // Whatever is already queued goes into the same append.
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(f) => self.add(f),
                    Msg::Flush(ack) => acks.push(ack),
                }
                if self.pending.len() < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.write();
            for ack in acks {
                let _ = ack.send(());
            }
        }
    }

    fn add(&mut self, f: Arc<Frame>) {
        let cutoff = f.t - self.retention;
        while self.mirror.front().is_some_and(|x| x.t < cutoff) {
            self.mirror.pop_front();
        }
        self.mirror.push_back(f.clone());
        self.pending.push(f);
    }

    fn write(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Err(e) = self.store.append(&self.pending) {
            if matches!(e, HistoryError::Refused(_)) {
                // Retrying cannot help: the frames themselves were refused.
                tracing::error!(error = %e, frames = self.pending.len(), "price history: frames refused by the store; dropped");
                self.pending.clear();
                return;
            }
            tracing::warn!(error = %e, frames = self.pending.len(), "price history: append failed; retrying with the next frame");
            if self.pending.len() > MAX_PENDING {
                let drop = self.pending.len() - MAX_PENDING;
                tracing::error!(frames = drop, "price history: store unavailable for too long; oldest unwritten frames dropped");
                self.pending.drain(..drop);
            }
            return;
        }
        self.appended += self.pending.len();
        self.pending.clear();
        // Compact once about as many frames were appended as are retained (a file then holds
        // about twice what is retained).
        if self.appended > self.mirror.len().max(1000) {
            let cutoff = self.mirror.back().map_or(i64::MIN, |f| f.t - self.retention);
            let keep: Vec<Arc<Frame>> = self.mirror.iter().cloned().collect();
            match self.store.compact(cutoff, &keep) {
                Ok(()) => self.appended = 0,
                Err(e) => tracing::warn!(error = %e, "price history: compaction failed"),
            }
        }
    }
}

/// In-memory history with optional durable store.
pub struct History {
    frames: ArcSwap<Vec<Arc<Frame>>>,
    retention: i64,
    writer: Option<mpsc::Sender<Msg>>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("frames", &self.frames.load().len()).finish_non_exhaustive()
    }
}

impl History {
    /// History kept in memory only.
    pub fn in_memory(retention_days: u32) -> Self {
        History { frames: ArcSwap::from_pointee(Vec::new()), retention: retention(retention_days), writer: None }
    }

    /// History backed by `store`: loads what is retained at `now`, compacts the store to it,
    /// and writes later frames on a background thread. Frames after `now` are not loaded: they
    /// belong to another timeline (a replay started again at an earlier trace time on a kept
    /// store), and since frames never go back in time they would pin every new frame to theirs.
    ///
    /// # Errors
    /// The store cannot be read or compacted.
    pub fn with_store(mut store: Box<dyn HistoryStore>, retention_days: u32, now: i64) -> Result<Self, HistoryError> {
        let retention = retention(retention_days);
        let loaded: Vec<Arc<Frame>> = store.load(now - retention, now)?.into_iter().map(Arc::new).collect();
        store.compact(now - retention, &loaded)?;
        tracing::info!(frames = loaded.len(), "price history loaded");
        let (tx, rx) = mpsc::channel::<Msg>();
        let mirror = loaded.iter().cloned().collect();
        std::thread::Builder::new()
            .name("joule-price-history".into())
            .spawn(move || Writer { store, retention, mirror, pending: Vec::new(), appended: 0 }.run(&rx))
            .map_err(|source| HistoryError::Io { path: PathBuf::from("<history thread>"), source })?;
        Ok(History { frames: ArcSwap::from_pointee(loaded), retention, writer: Some(tx) })
    }

    /// File-backed history in `dir` (see [`FileStore`]).
    ///
    /// # Errors
    /// As [`History::with_store`].
    pub fn open(dir: &Path, retention_days: u32, now: i64) -> Result<Self, HistoryError> {
        Self::with_store(Box::new(FileStore::open(dir)?), retention_days, now)
    }

    /// Adds a frame (never earlier than the last one) and drops expired frames. Callers are
    /// serialised by the pricing engine.
    pub fn record(&self, mut frame: Frame) {
        let frames = self.frames.load_full();
        if let Some(last) = frames.last() {
            frame.t = frame.t.max(last.t);
        }
        let cutoff = frame.t - self.retention;
        let frame = Arc::new(frame);
        let mut next: Vec<Arc<Frame>> = Vec::with_capacity(frames.len() + 1);
        next.extend(frames.iter().filter(|f| f.t >= cutoff).cloned());
        next.push(frame.clone());
        self.frames.store(Arc::new(next));
        if let Some(w) = &self.writer {
            let _ = w.send(Msg::Append(frame));
        }
    }

    /// Every retained frame, oldest first.
    pub fn frames(&self) -> Arc<Vec<Arc<Frame>>> {
        self.frames.load_full()
    }

    /// Waits until everything recorded so far reached the store.
    pub fn flush(&self) {
        if let Some(w) = &self.writer {
            let (tx, rx) = mpsc::sync_channel(1);
            if w.send(Msg::Flush(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
    }
}

fn retention(days: u32) -> i64 {
    // An hour more than the days, so the 7d window is full even on a bucket boundary.
    i64::from(days) * 86_400 + 3_600
}

/// A view of the history: the window name, its length and bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    H4,
    H24,
    D7,
}

impl Window {
    /// `4h`, `24h` or `7d`.
    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "4h" => Some(Window::H4),
            "24h" => Some(Window::H24),
            "7d" => Some(Window::D7),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Window::H4 => "4h",
            Window::H24 => "24h",
            Window::D7 => "7d",
        }
    }

    /// Window length, seconds.
    pub fn length(self) -> i64 {
        match self {
            Window::H4 => 4 * 3600,
            Window::H24 => 86_400,
            Window::D7 => 7 * 86_400,
        }
    }

    /// Bucket size, seconds: 48 points for 4h (5 min), 96 for 24h (15 min), 168 for 7d (1 h).
    pub fn step(self) -> i64 {
        match self {
            Window::H4 => 300,
            Window::H24 => 900,
            Window::D7 => 3600,
        }
    }
}

/// One bucket of one deployment's series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Bucket start, Unix seconds.
    pub t: i64,
    /// Mean client price over the frames in the bucket, or the price in force at its start.
    pub input: f64,
    pub output: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usd_per_mwh: Option<f64>,
    /// Any frame in the bucket was stale.
    pub stale: bool,
}

/// The model's best price in a bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BestPoint {
    pub t: i64,
    pub input: f64,
    pub output: f64,
    pub deployment: String,
}

/// Buckets `frames` over the window ending at `now` for the given deployments: one series
/// per deployment (same order) and the best (lowest input + output) per bucket. A bucket
/// without frames carries the price in force at its start; buckets before the first frame
/// are left out.
pub fn series(frames: &[Arc<Frame>], deployments: &[&str], window: Window, now: i64) -> (Vec<Vec<SeriesPoint>>, Vec<BestPoint>) {
    let step = window.step();
    let end = now - now.rem_euclid(step) + step;
    let start = end - window.length();
    let mut out: Vec<Vec<SeriesPoint>> = vec![Vec::new(); deployments.len()];
    let mut best = Vec::new();
    // Index of the first frame at or after `start`; the frame before it is in force at `start`.
    let mut i = frames.partition_point(|f| f.t < start);
    let mut carried: Vec<Option<SeriesPoint>> = vec![None; deployments.len()];
    if i > 0 {
        for (k, d) in deployments.iter().enumerate() {
            carried[k] = point_of(&frames[i - 1], d).map(|p| SeriesPoint { t: start, ..p });
        }
    }
    let mut b = start;
    while b < end && b <= now {
        let j = i + frames[i..].partition_point(|f| f.t < b + step);
        let bucket = &frames[i..j];
        let mut best_here: Option<BestPoint> = None;
        for (k, d) in deployments.iter().enumerate() {
            let pts: Vec<SeriesPoint> = bucket.iter().filter_map(|f| point_of(f, d)).collect();
            let p = if pts.is_empty() {
                carried[k].clone().map(|c| SeriesPoint { t: b, stale: c.stale, ..c })
            } else {
                let n = pts.len() as f64;
                let mwh: Vec<f64> = pts.iter().filter_map(|p| p.usd_per_mwh).collect();
                Some(SeriesPoint {
                    t: b,
                    input: pts.iter().map(|p| p.input).sum::<f64>() / n,
                    output: pts.iter().map(|p| p.output).sum::<f64>() / n,
                    usd_per_mwh: (!mwh.is_empty()).then(|| mwh.iter().sum::<f64>() / mwh.len() as f64),
                    stale: pts.iter().any(|p| p.stale),
                })
            };
            if let Some(last) = pts.last() {
                carried[k] = Some(last.clone());
            }
            if let Some(p) = p {
                if best_here.as_ref().is_none_or(|x| p.input + p.output < x.input + x.output) {
                    best_here = Some(BestPoint { t: b, input: p.input, output: p.output, deployment: d.to_string() });
                }
                out[k].push(p);
            }
        }
        best.extend(best_here);
        i = j;
        b += step;
    }
    (out, best)
}

fn point_of(f: &Frame, deployment: &str) -> Option<SeriesPoint> {
    f.points.iter().find(|p| &*p.deployment == deployment).map(|p| SeriesPoint {
        t: f.t,
        input: p.input,
        output: p.output,
        usd_per_mwh: p.usd_per_mwh,
        stale: p.stale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(t: i64, a: f64, b: f64) -> Frame {
        let pt = |d: &str, v: f64| FramePoint { deployment: d.into(), input: v, output: 2.0 * v, usd_per_mwh: Some(v * 100.0), stale: false };
        Frame { t, points: vec![pt("a", a), pt("b", b)] }
    }

    const T0: i64 = 1_700_000_000 - 1_700_000_000 % 86_400;

    #[test]
    fn windows_bucket_average_and_carry() {
        let h = History::in_memory(7);
        // a is cheap for the first hour, then b; frames every 5 minutes for 2 hours.
        for k in 0..24 {
            let t = T0 + k * 300;
            h.record(if k < 12 { frame(t, 1.0, 2.0) } else { frame(t, 3.0, 2.0) });
        }
        let now = T0 + 2 * 3600 - 1;
        let (s, best) = series(&h.frames(), &["a", "b"], Window::H4, now);
        // 4h window of 5-minute buckets ending in the bucket holding `now`: only buckets from
        // the first frame on are shown.
        assert_eq!(s[0].len(), 24);
        assert_eq!(s[0][0].t, T0);
        assert_eq!(s[0][0].input, 1.0);
        assert_eq!(s[0][0].usd_per_mwh, Some(100.0));
        assert_eq!(s[0][23].input, 3.0);
        assert_eq!(best.len(), 24);
        assert_eq!(best[0].deployment, "a");
        assert_eq!(best[12].deployment, "b");
        assert_eq!(best[12].input, 2.0);

        // 24h: 15-minute buckets average three frames each; a bucket boundary at the switch.
        let (s, _) = series(&h.frames(), &["a"], Window::H24, now);
        assert_eq!(s[0].len(), 8);
        assert_eq!(s[0][3].input, 1.0);
        assert_eq!(s[0][4].input, 3.0);

        // 7d: one hourly bucket per hour; later empty buckets carry the last price.
        let (s, _) = series(&h.frames(), &["a"], Window::D7, T0 + 5 * 3600);
        assert_eq!(s[0].len(), 6);
        assert_eq!(s[0][0].input, 1.0);
        assert_eq!(s[0][1].input, 3.0);
        assert_eq!(s[0][5].input, 3.0, "carried forward");
        assert_eq!(s[0][5].t, T0 + 5 * 3600);
    }

    #[test]
    fn window_starts_with_the_price_in_force() {
        let h = History::in_memory(7);
        h.record(frame(T0, 1.0, 2.0));
        h.record(frame(T0 + 10 * 3600, 5.0, 2.0));
        let now = T0 + 10 * 3600 + 60;
        let (s, best) = series(&h.frames(), &["a", "b"], Window::H4, now);
        assert_eq!(s[0].len(), 48, "the full 4h window, current bucket included");
        assert_eq!(s[0][0].input, 1.0, "carried from before the window");
        assert_eq!(s[0][47].input, 5.0);
        assert_eq!(best[0].deployment, "a");
        assert_eq!(best[47].deployment, "b");
    }

    #[test]
    fn retention_drops_old_frames_and_keeps_seven_days() {
        let h = History::in_memory(7);
        h.record(frame(T0, 1.0, 1.0));
        h.record(frame(T0 + 7 * 86_400, 2.0, 2.0));
        assert_eq!(h.frames().len(), 2, "exactly 7 days old is kept");
        h.record(frame(T0 + 7 * 86_400 + 3_601, 3.0, 3.0));
        assert_eq!(h.frames().len(), 2);
        assert_eq!(h.frames()[0].t, T0 + 7 * 86_400);
        // Frames never go back in time.
        h.record(frame(T0, 4.0, 4.0));
        assert_eq!(h.frames().last().unwrap().t, T0 + 7 * 86_400 + 3_601);
    }

    /// A store that refuses appends while `down` is set and records what it was given.
    #[derive(Clone, Default)]
    struct Flaky {
        down: Arc<std::sync::atomic::AtomicBool>,
        stored: Arc<std::sync::Mutex<Vec<i64>>>,
        compactions: Arc<std::sync::Mutex<Vec<(i64, usize)>>>,
    }

    impl HistoryStore for Flaky {
        fn load(&mut self, _since: i64, _until: i64) -> Result<Vec<Frame>, HistoryError> {
            Ok(Vec::new())
        }
        fn append(&mut self, frames: &[Arc<Frame>]) -> Result<(), HistoryError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(HistoryError::Unavailable("down".into()));
            }
            self.stored.lock().unwrap().extend(frames.iter().map(|f| f.t));
            Ok(())
        }
        fn compact(&mut self, cutoff: i64, keep: &[Arc<Frame>]) -> Result<(), HistoryError> {
            self.compactions.lock().unwrap().push((cutoff, keep.len()));
            Ok(())
        }
    }

    #[test]
    fn refused_frames_are_retried_and_compaction_gets_the_cutoff() {
        let store = Flaky::default();
        let h = History::with_store(Box::new(store.clone()), 7, T0).unwrap();
        assert_eq!(*store.compactions.lock().unwrap(), vec![(T0 - 7 * 86_400 - 3_600, 0)], "compacted at start");
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for k in 0..3 {
            h.record(frame(T0 + k * 300, 1.0, 1.0));
        }
        h.flush();
        assert!(store.stored.lock().unwrap().is_empty());
        store.down.store(false, std::sync::atomic::Ordering::SeqCst);
        h.record(frame(T0 + 900, 1.0, 1.0));
        h.flush();
        assert_eq!(*store.stored.lock().unwrap(), vec![T0, T0 + 300, T0 + 600, T0 + 900], "in order, none lost");

        // Hourly frames: once more were appended than are retained, the store is compacted to
        // the retention cutoff of the newest frame, with what this process still holds.
        for k in 1..=1200 {
            h.record(frame(T0 + 900 + k * 3600, 1.0, 1.0));
        }
        h.flush();
        let newest = T0 + 900 + 1200 * 3600;
        let c = store.compactions.lock().unwrap().clone();
        assert_eq!(c.len(), 2, "{c:?}");
        let (cutoff, kept) = c[1];
        assert!(cutoff <= newest - 7 * 86_400 && cutoff > T0, "{c:?}");
        assert!((7 * 24..=7 * 24 + 2).contains(&kept), "{c:?}");
        assert_eq!(store.stored.lock().unwrap().len(), 1204);
    }

    #[test]
    fn file_store_survives_a_restart_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = History::open(dir.path(), 7, T0).unwrap();
            for k in 0..10 {
                h.record(frame(T0 + k * 300, k as f64, 1.0));
            }
            h.flush();
        }
        let path = dir.path().join("price-history.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 10);
        // A torn line (crash mid-write) is skipped.
        std::fs::write(&path, format!("{text}{{\"t\":17")).unwrap();
        let h = History::open(dir.path(), 7, T0 + 3000).unwrap();
        let frames = h.frames();
        assert_eq!(frames.len(), 10);
        assert_eq!(*frames[3], frame(T0 + 900, 3.0, 1.0));
        drop(h);
        // Frames after the clock's now are not loaded (a replay started again).
        let h = History::open(dir.path(), 7, T0 + 1000).unwrap();
        assert_eq!(h.frames().len(), 4);
        // Eight days later, reopening drops everything expired from memory and from the file.
        drop(h);
        let h = History::open(dir.path(), 7, T0 + 8 * 86_400).unwrap();
        assert!(h.frames().is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 0);
    }
}
