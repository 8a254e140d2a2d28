//! Rate limits and budgets shared by every instance through Valkey or Redis
//! (`[limits] backend = "redis"`), without a network round trip on the request path.
//!
//! **Buckets.** Each key's and project's GCRA bucket (see [`super::limits`]) lives in the
//! shared server as one number, its theoretical arrival time, changed only by the Lua scripts
//! below on the server's own clock, so instances' clocks do not matter.
//! - *Requests per minute*: an instance takes units from the shared bucket ahead of use, as a
//!   **lease**, and admits requests from it with one atomic decrement. A sync task refills the
//!   lease when it runs low, sized to the instance's own recent traffic (about half a second of
//!   it, at most 1/20 of the limit), so the busy instances hold the larger leases. When the
//!   lease is empty the shared bucket's state from the last answer says whether a unit is
//!   due: if the bucket is empty the request is refused locally with the right `retry-after`;
//!   otherwise it is admitted **on credit** — at most `max(1, limit/200)` units ahead of the
//!   grants — and the next grant pays the debt first. Every admitted request is therefore
//!   covered by a unit the shared bucket granted, except for at most the credit per instance:
//!   **admitted ≤ shared GCRA admissions + N × max(1, limit/200)** at any moment for N
//!   instances, the debt being repaid from the following grants (so over a minute the excess
//!   tends to zero). Units leased but left unused by an instance that went quiet are given back
//!   after 2 s.
//! - *Tokens per minute*: admission needs the shared bucket not empty, as known from the last
//!   sync plus this instance's own unsent charges; finished requests' tokens are sent every
//!   `sync_interval_ms` (default 100 ms). Bound: on top of the local rule's (requests in flight
//!   are admitted before their tokens are known), the other instances' charges of one sync
//!   interval.
//! - *Budgets*: every sync interval each instance writes its own spend in the period (an
//!   absolute figure, in a hash per project and period, so a resend never counts twice) and
//!   reads the others' sum back, so a cost reaches every instance within two sync intervals:
//!   overshoot ≤ the project's spend rate over all instances × 2 × `sync_interval_ms` + the
//!   cost of requests in flight — no longer the store's `budget_sync_interval_ms`. The store's
//!   figure still counts (the larger of the two is used), so a server that lost its data is
//!   corrected within that interval.
//!
//! **Server down or slow.** Every call has `backend_timeout_ms` (default 250 ms) and runs in
//! the sync task, never on the request path, so requests neither fail nor wait because of it.
//! On an error or timeout the instance falls back to its local buckets at its share of each
//! limit (limit ÷ the number of instances seen in the last 10 s through the server's heartbeat
//! set), counts `joule_limits_backend_errors_total`, logs once, retries every sync interval
//! and re-joins when the server answers (leases start empty again). The bounds above hold
//! while the server answers; during an outage each instance's local bucket applies (at most
//! its share's burst plus its refill), and requests admitted meanwhile are not charged to the
//! shared bucket afterwards. Until the first answer after start an instance is in that
//! fallback with a share of 1. One failed command (a key of the wrong type) fails only
//! itself, not the others of the same pass.
//!
//! Keys are `joule:rl:<scope>:<id>:<kind>`, `joule:budget:<project>:<period start>` and
//! `joule:instances`: give each joule deployment its own database (`redis://host/2`).
//! TLS to the server (`rediss://`) is not supported: use a private network or a Unix socket.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::limits::{Budget, Bucket, MINUTE_NS};
use crate::clock::{now_ms, now_ns};
use crate::secret::Secret;

/// `[limits] backend = "redis"`.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// `redis://host:port/db`, `valkey://…` or `unix:///path/to/socket`.
    pub url: Secret<String>,
    /// Longest wait for one answer; past it the server counts as down. Default 250 ms.
    pub timeout: Duration,
    /// How often charges and spend are sent and lease debts paid. Default 100 ms.
    pub sync_interval: Duration,
}

/// How a bucket takes a unit right now.
pub enum Mode<'a> {
    /// The local backend.
    Local,
    /// The shared server is down: local buckets at `1/share` of the rate.
    Fallback(u64),
    /// Through the shared server.
    Shared(&'a SharedLimits),
}

/// Takes up to `ARGV[3]` units of the GCRA bucket `KEYS[1]` (unit = `ARGV[1]` µs, burst
/// window `ARGV[2]` µs); returns the units granted and the bucket's TAT minus now (µs).
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local unit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((now + window - tat) / unit)
local g = math.min(tonumber(ARGV[3]), math.max(room, 0))
if g > 0 then
  tat = tat + g * unit
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return {g, string.format('%.3f', tat - now)}
";

/// Adds `ARGV[2]` units (unit = `ARGV[1]` µs) to bucket `KEYS[1]` unconditionally (debt
/// allowed; 0 only reads); or, with `ARGV[3]` = 1, gives that many back. Returns TAT minus now.
const CHARGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local d = tonumber(ARGV[1]) * tonumber(ARGV[2])
if tonumber(ARGV[3]) == 1 then d = -d end
if d ~= 0 then
  tat = math.max(tat + d, now)
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return string.format('%.3f', tat - now)
";

/// Records this instance's (`ARGV[1]`) spend `ARGV[2]` (nano-USD, absolute) in the period
/// hash `KEYS[1]` (expiring after `ARGV[3]` ms) when it is not 0, and returns the sum of the
/// other instances' fields.
const BUDGET: &str = r"
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local all = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then others = others + tonumber(all[i + 1]) end
end
return string.format('%.0f', others)
";

/// Marks instance `ARGV[1]` alive in `KEYS[1]` on the server's clock, forgets those silent for
/// 10 s, and returns how many are alive.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10000)
redis.call('PEXPIRE', KEYS[1], 60000)
return redis.call('ZCARD', KEYS[1])
";

/// The shared backend of one instance.
pub struct SharedLimits {
    settings: SharedSettings,
    client: redis::Client,
    instance: Arc<str>,
    up: AtomicBool,
    instances: AtomicU64,
    buckets: Mutex<Vec<Weak<Bucket>>>,
    budgets: Mutex<Vec<Weak<Budget>>>,
    refills: tokio::sync::mpsc::Sender<Arc<Bucket>>,
    queue: Mutex<Option<tokio::sync::mpsc::Receiver<Arc<Bucket>>>>,
    errors: prometheus::IntCounter,
    /// Sync passes completed (see [`SharedLimits::synced`]).
    passes: AtomicU64,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits").field("up", &self.up).field("instances", &self.instances).finish_non_exhaustive()
    }
}

/// The entries of a registration list still in use, dropping the others from it.
fn live<T>(list: &Mutex<Vec<Weak<T>>>) -> Vec<Arc<T>> {
    let Ok(mut v) = list.lock() else { return Vec::new() };
    v.retain(|w| w.strong_count() > 0);
    v.iter().filter_map(Weak::upgrade).collect()
}

/// Why the shared backend cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("limits backend: {0}")]
pub struct SharedError(String);

/// A unit in µs with ns precision, for the scripts (whole µs would round large limits' units).
fn micros(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

impl SharedLimits {
    /// The backend for `instance`, counting errors in `errors`. Connects lazily, in [`run`].
    ///
    /// # Errors
    /// The URL does not parse.
    ///
    /// [`run`]: SharedLimits::run
    pub fn new(settings: SharedSettings, instance: Arc<str>, errors: prometheus::IntCounter) -> Result<Arc<Self>, SharedError> {
        let client = redis::Client::open(settings.url.expose().as_str()).map_err(|_| SharedError("the URL is not a redis://, valkey:// or unix:// URL".into()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        Ok(Arc::new(SharedLimits {
            settings,
            client,
            instance,
            up: AtomicBool::new(false),
            instances: AtomicU64::new(1),
            buckets: Mutex::new(Vec::new()),
            budgets: Mutex::new(Vec::new()),
            refills: tx,
            queue: Mutex::new(Some(rx)),
            errors,
            passes: AtomicU64::new(0),
        }))
    }

    /// Waits (at most `within`) until two more sync passes have completed — so that the spend
    /// and tokens of requests finished before the call reached the server — or returns at once
    /// when the server is down. For the shutdown drain.
    pub async fn synced(&self, within: Duration) {
        let target = self.passes.load(Ordering::Acquire) + 2;
        let deadline = tokio::time::Instant::now() + within;
        while self.is_up() && self.passes.load(Ordering::Acquire) < target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How buckets take units now.
    pub fn mode(&self) -> Mode<'_> {
        if self.up.load(Ordering::Acquire) {
            Mode::Shared(self)
        } else {
            Mode::Fallback(self.instances.load(Ordering::Relaxed).max(1))
        }
    }

    /// Whether the shared server answered last time.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Instances seen in the last 10 s (1 until the server first answers).
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Makes `b` part of the sync loop (called once, when the bucket is created).
    pub(super) fn register_bucket(&self, b: &Arc<Bucket>) {
        if let Ok(mut v) = self.buckets.lock() {
            v.push(Arc::downgrade(b));
        }
    }

    /// Makes `b` part of the sync loop (called once, when the budget is created).
    pub(super) fn register_budget(&self, b: &Arc<Budget>) {
        if let Ok(mut v) = self.budgets.lock() {
            v.push(Arc::downgrade(b));
        }
    }

    /// Units a lease aims at: about half a second of this instance's recent use, at least 1,
    /// at most 1/20 of the limit.
    fn lease_target(b: &Bucket) -> i64 {
        let recent = b.shared.last_window_uses.load(Ordering::Relaxed).max(b.shared.window_uses.load(Ordering::Relaxed));
        let cap = (b.per_minute() / 20).max(1);
        (recent / 2 + 1).min(cap) as i64
    }

    /// Units that may be used ahead of the grants.
    fn credit(b: &Bucket) -> i64 {
        (b.per_minute() / 200).max(1) as i64
    }

    fn note_use(b: &Bucket, now: u64) {
        let st = &b.shared;
        st.last_use.store(now, Ordering::Relaxed);
        let second = now / 1_000_000_000;
        let w = st.window.load(Ordering::Relaxed);
        if w != second && st.window.compare_exchange(w, second, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            let uses = st.window_uses.swap(0, Ordering::AcqRel);
            st.last_window_uses.store(if second == w + 1 { uses } else { 0 }, Ordering::Relaxed);
        }
        st.window_uses.fetch_add(1, Ordering::Relaxed);
    }

    /// How long until the shared bucket has a unit, as of the last answer (zero: now or unknown).
    fn wait_for_unit(b: &Bucket, now: u64, extra_units: u64) -> Option<Duration> {
        let tat = b.shared.tat.load(Ordering::Acquire);
        if tat == 0 {
            return None;
        }
        let due = tat.max(now).saturating_add(b.interval().saturating_mul(extra_units.saturating_add(1)));
        (due - now > MINUTE_NS).then(|| Duration::from_nanos(due - now - MINUTE_NS))
    }

    /// Takes one request unit of `b` (module docs): from the lease, else refused when the
    /// shared bucket is known to be empty, else on credit.
    pub(super) fn take_request(&self, b: &Arc<Bucket>, now: u64) -> Result<(), Duration> {
        Self::note_use(b, now);
        let st = &b.shared;
        let low = Self::lease_target(b) / 2;
        let mut l = st.lease.load(Ordering::Acquire);
        while l > 0 {
            match st.lease.compare_exchange_weak(l, l - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if l - 1 <= low {
                        self.request_refill(b);
                    }
                    return Ok(());
                }
                Err(actual) => l = actual,
            }
        }
        if let Some(wait) = Self::wait_for_unit(b, now, 0) {
            return Err(wait);
        }
        let credit = Self::credit(b);
        while l > -credit {
            match st.lease.compare_exchange_weak(l, l - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.request_refill(b);
                    return Ok(());
                }
                Err(actual) => l = actual,
            }
        }
        self.request_refill(b);
        Err(Duration::from_nanos(b.interval()))
    }

    /// Whether the shared token bucket has room, counting this instance's unsent charges.
    pub(super) fn check_tokens(&self, b: &Arc<Bucket>, now: u64) -> Result<(), Duration> {
        Self::note_use(b, now);
        match Self::wait_for_unit(b, now, b.shared.pending.load(Ordering::Relaxed)) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Queues a finished request's tokens for the next sync.
    pub(super) fn charge_tokens(&self, b: &Arc<Bucket>, tokens: u64) {
        Self::note_use(b, now_ns());
        b.shared.pending.fetch_add(tokens, Ordering::Relaxed);
    }

    fn request_refill(&self, b: &Arc<Bucket>) {
        if !b.shared.refilling.swap(true, Ordering::AcqRel) && self.refills.try_send(b.clone()).is_err() {
            b.shared.refilling.store(false, Ordering::Release);
        }
    }

    /// Runs the sync loop until `stop` resolves: refills leases as asked, and every
    /// `sync_interval` sends charges and spend, pays lease debts, returns idle leases and
    /// beats the heartbeat; re-joins when the server is back.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let Some(mut queue) = self.queue.lock().ok().and_then(|mut q| q.take()) else { return };
        let mut conn: Option<MultiplexedConnection> = None;
        let mut tick = tokio::time::interval(self.settings.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_beat = 0_i64;
        tokio::pin!(stop);
        loop {
            let refill = tokio::select! {
                _ = &mut stop => return,
                b = queue.recv() => b,
                _ = tick.tick() => None,
            };
            if conn.is_none() {
                conn = self.connect().await;
                if conn.is_none() {
                    if let Some(b) = refill {
                        b.shared.refilling.store(false, Ordering::Release);
                    }
                    continue;
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let result = match refill {
                Some(b) => {
                    let mut batch = vec![b];
                    while let Ok(more) = queue.try_recv() {
                        batch.push(more);
                    }
                    self.refill(c, &batch).await
                }
                None => {
                    let beat = now_ms() - last_beat >= 1000;
                    let r = self.sync(c, beat).await;
                    if beat && r.is_ok() {
                        last_beat = now_ms();
                    }
                    r
                }
            };
            match result {
                Ok(()) => self.mark_up(),
                Err(e) => {
                    self.mark_down(&e);
                    conn = None;
                }
            }
        }
    }

    async fn connect(&self) -> Option<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new().set_connection_timeout(Some(self.settings.timeout)).set_response_timeout(Some(self.settings.timeout));
        match tokio::time::timeout(self.settings.timeout, self.client.get_multiplexed_async_connection_with_config(&config)).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                self.mark_down(&e.to_string());
                None
            }
            Err(_) => {
                self.mark_down("connect timed out");
                None
            }
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            // Leases and states from before an outage are forgotten: start from the server's.
            for b in self.live_buckets() {
                b.shared.lease.store(0, Ordering::Release);
                b.shared.tat.store(0, Ordering::Release);
            }
            tracing::info!(instances = self.instances(), "limits backend reachable: limits are shared");
        }
    }

    fn mark_down(&self, e: &str) {
        self.errors.inc();
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %e, share = self.instances(), "limits backend unreachable: each limit falls back to this instance's share, locally");
        } else {
            tracing::debug!(error = %e, "limits backend still unreachable");
        }
        for b in self.live_buckets() {
            b.shared.refilling.store(false, Ordering::Release);
        }
    }

    fn live_buckets(&self) -> Vec<Arc<Bucket>> {
        live(&self.buckets)
    }

    fn live_budgets(&self) -> Vec<Arc<Budget>> {
        live(&self.budgets)
    }

    async fn query<T: redis::FromRedisValue>(&self, c: &mut MultiplexedConnection, p: &redis::Pipeline) -> Result<T, String> {
        match tokio::time::timeout(self.settings.timeout, p.query_async::<T>(c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Takes lease units for each bucket: its target plus any debt.
    async fn refill(&self, c: &mut MultiplexedConnection, batch: &[Arc<Bucket>]) -> Result<(), String> {
        let mut p = redis::pipe();
        let mut wants = Vec::with_capacity(batch.len());
        for b in batch {
            let debt = (-b.shared.lease.load(Ordering::Acquire)).max(0);
            let want = Self::lease_target(b) + debt;
            wants.push(want);
            p.cmd("EVAL").arg(TAKE).arg(1).arg(&*b.shared.name).arg(micros(b.interval())).arg(MINUTE_NS / 1000).arg(want);
        }
        let sent_at = now_ns();
        p.ignore_errors();
        let answers: Result<Vec<redis::RedisResult<(i64, String)>>, String> = self.query(c, &p).await;
        let answers = match answers {
            Ok(a) => a,
            Err(e) => {
                for b in batch {
                    b.shared.refilling.store(false, Ordering::Release);
                }
                return Err(e);
            }
        };
        for (b, answer) in batch.iter().zip(answers) {
            match answer {
                Ok((granted, tat)) => {
                    // The grant first, then the flag: a request in between must not ask for
                    // a refill computed from the old lease.
                    b.shared.lease.fetch_add(granted, Ordering::AcqRel);
                    Self::set_tat(b, sent_at, &tat);
                }
                Err(e) => self.command_failed(&b.shared.name, &e),
            }
            b.shared.refilling.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// One command failed (the server answered with an error): counted and logged; the other
    /// commands of the pass stand.
    fn command_failed(&self, key: &str, e: &redis::RedisError) {
        self.errors.inc();
        tracing::warn!(key, error = %e, "limits backend refused a command");
    }

    fn set_tat(b: &Bucket, at: u64, offset_us: &str) {
        let offset = offset_us.parse::<f64>().unwrap_or(0.0).max(0.0);
        b.shared.tat.store(at.saturating_add((offset * 1000.0) as u64).max(1), Ordering::Release);
    }

    /// One sync pass (module docs).
    async fn sync(&self, c: &mut MultiplexedConnection, beat: bool) -> Result<(), String> {
        let now = now_ns();
        let mut p = redis::pipe();
        enum Sent {
            Tokens(Arc<Bucket>, u64),
            Debt(Arc<Bucket>),
            Returned(Arc<Bucket>),
            Spend(Arc<Budget>, i64),
        }
        let mut sent = Vec::new();
        for b in self.live_buckets() {
            let st = &b.shared;
            let recent = now.saturating_sub(st.last_use.load(Ordering::Relaxed)) < MINUTE_NS;
            let unit = micros(b.interval());
            if st.name.ends_with(":tokens") {
                let n = st.pending.swap(0, Ordering::AcqRel);
                if n > 0 || recent {
                    p.cmd("EVAL").arg(CHARGE).arg(1).arg(&*st.name).arg(unit).arg(n).arg(0);
                    sent.push(Sent::Tokens(b.clone(), n));
                }
                continue;
            }
            let lease = st.lease.load(Ordering::Acquire);
            if lease < 0 && !st.refilling.swap(true, Ordering::AcqRel) {
                p.cmd("EVAL").arg(TAKE).arg(1).arg(&*st.name).arg(unit).arg(MINUTE_NS / 1000).arg(-lease);
                sent.push(Sent::Debt(b.clone()));
            } else if lease > 0 && now.saturating_sub(st.last_use.load(Ordering::Relaxed)) > 2_000_000_000 {
                // Idle: give the lease back so that busy instances can use it.
                if st.lease.compare_exchange(lease, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    p.cmd("EVAL").arg(CHARGE).arg(1).arg(&*st.name).arg(unit).arg(lease).arg(1);
                    sent.push(Sent::Returned(b.clone()));
                }
            }
        }
        let now_wall = now_ms();
        for b in self.live_budgets() {
            let (start, end) = b.period_bounds();
            let key = format!("joule:budget:{}:{start}", b.project);
            let ttl = (end - now_wall).max(0) + 86_400_000;
            p.cmd("EVAL").arg(BUDGET).arg(1).arg(&key).arg(&*self.instance).arg(b.local_nanos()).arg(ttl);
            sent.push(Sent::Spend(b.clone(), start));
        }
        if beat {
            p.cmd("EVAL").arg(HEARTBEAT).arg(1).arg("joule:instances").arg(&*self.instance);
        }
        if sent.is_empty() && !beat {
            self.passes.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        }
        p.ignore_errors();
        let answers: Result<Vec<redis::RedisResult<redis::Value>>, String> = self.query(c, &p).await;
        let answers = match answers {
            Ok(a) => a,
            Err(e) => {
                // Unsent charges and spend wait for the next pass.
                for s in sent {
                    match s {
                        Sent::Tokens(b, n) => {
                            b.shared.pending.fetch_add(n, Ordering::Relaxed);
                        }
                        Sent::Debt(b) => b.shared.refilling.store(false, Ordering::Release),
                        Sent::Returned(_) | Sent::Spend(..) => {}
                    }
                }
                return Err(e);
            }
        };
        let mut answers = answers.into_iter();
        for s in sent {
            let v = match answers.next() {
                Some(Ok(v)) => v,
                Some(Err(e)) => {
                    match &s {
                        // Not applied: send the tokens again next time.
                        Sent::Tokens(b, n) => {
                            b.shared.pending.fetch_add(*n, Ordering::Relaxed);
                            self.command_failed(&b.shared.name, &e);
                        }
                        Sent::Debt(b) | Sent::Returned(b) => {
                            b.shared.refilling.store(false, Ordering::Release);
                            self.command_failed(&b.shared.name, &e);
                        }
                        Sent::Spend(b, _) => self.command_failed(&b.project, &e),
                    }
                    continue;
                }
                None => redis::Value::Nil,
            };
            match s {
                Sent::Tokens(b, _) | Sent::Returned(b) => {
                    let tat: String = redis::from_redis_value(v).unwrap_or_default();
                    Self::set_tat(&b, now, &tat);
                }
                Sent::Debt(b) => {
                    let (granted, tat): (i64, String) = redis::from_redis_value(v).unwrap_or((0, String::new()));
                    b.shared.lease.fetch_add(granted, Ordering::AcqRel);
                    Self::set_tat(&b, now, &tat);
                    b.shared.refilling.store(false, Ordering::Release);
                }
                Sent::Spend(b, start) => {
                    let others: String = redis::from_redis_value(v).unwrap_or_default();
                    let nanos = others.parse::<f64>().unwrap_or(0.0).max(0.0) as u64;
                    b.set_shared_others(start, nanos);
                }
            }
        }
        if beat {
            if let Some(Ok(v)) = answers.next() {
                if let Ok(n) = redis::from_redis_value::<u64>(v) {
                    self.instances.store(n.max(1), Ordering::Relaxed);
                }
            }
        }
        self.passes.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}
