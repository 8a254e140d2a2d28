//! Rate limits and budgets, checked on the request path with atomics only.
//!
//! **Rate limits** are token buckets per key and per project, implemented as GCRA (one
//! `AtomicU64` "theoretical arrival time" per bucket, updated by compare-and-swap): a limit of
//! N per minute admits bursts of up to N and refills continuously at N/60 per second.
//! - requests per minute: each request takes one unit before it is forwarded;
//! - tokens per minute: a request's size is unknown until it ends, so admission only requires
//!   the bucket not to be empty, and the request's actual input + output tokens are taken
//!   when it finishes ([`settle`]); the bucket can go into debt, which then delays the
//!   following requests until it has refilled.
//!
//! A refusal is a 429 `rate_limit_exceeded` with `retry-after` (whole seconds, rounded up).
//!
//! **Budgets** are USD per UTC day or month per project. Spend = this instance's own
//! records (counted exactly, at settle time) + other instances' records as last read from the
//! store (every `budget_sync_interval`, default 2 s). Over budget → 429 `insufficient_quota`
//! with `retry-after` = seconds until the period ends. Bound with several instances: spend
//! can exceed the budget by at most what the *other* instances spend in one sync interval
//! plus their usage flush delay (`flush_interval`), plus the cost of requests already in
//! flight when the budget is reached (a request is admitted or refused before its cost is
//! known).
//!
//! **Shared** (`[limits] backend = "redis"`): the same buckets and budgets live in Valkey/Redis,
//! shared by every instance naming the server; each bucket and budget here then also carries
//! its lease and pending counts for [`super::shared`], which decides how a unit is taken.
//!
//! Bucket and budget states live in `Arc`s that survive snapshot refreshes (carried over by
//! key and project id), so a refresh neither resets nor leaks them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::directory::BudgetPeriod;
use super::keys::Principal;
use super::shared::{Mode, SharedLimits};

pub(super) const MINUTE_NS: u64 = 60_000_000_000;

/// One GCRA bucket: `rate` units per minute, bursts up to `rate`.
#[derive(Debug)]
pub struct Bucket {
    /// Theoretical arrival time (ns on [`now_ns`]'s clock) of the local bucket (the only one
    /// with the local backend; the fallback while the shared server is down).
    tat: AtomicU64,
    /// Nanoseconds one unit is worth (60 s / rate).
    interval: AtomicU64,
    /// Shared-mode state.
    pub(super) shared: SharedState,
}

/// What a bucket keeps for the shared backend (unused with the local one).
#[derive(Debug)]
pub(super) struct SharedState {
    pub backend: Option<Arc<SharedLimits>>,
    /// The key in the shared server (`joule:rl:project:<id>:requests`).
    pub name: Arc<str>,
    /// Units granted by the shared server and not used yet; negative: used on credit, to be
    /// paid from the next grant.
    pub lease: AtomicI64,
    /// The shared bucket's theoretical arrival time as of the last answer, on this process's
    /// `now_ns` clock (0: unknown).
    pub tat: AtomicU64,
    /// Tokens charged here and not yet sent (token buckets).
    pub pending: AtomicU64,
    /// A refill is queued or under way.
    pub refilling: AtomicBool,
    /// Last local use (ns) and uses in the current one-second window (for the lease size).
    pub last_use: AtomicU64,
    pub window: AtomicU64,
    pub window_uses: AtomicU64,
    pub last_window_uses: AtomicU64,
}

impl Bucket {
    /// A full bucket for `per_minute` (≥ 1) units, local only.
    pub fn new(per_minute: u32) -> Self {
        Self::named(per_minute, Arc::from(""), None)
    }

    /// A bucket called `name` in the shared server `backend` (local only when `None`).
    pub(super) fn named(per_minute: u32, name: Arc<str>, backend: Option<Arc<SharedLimits>>) -> Self {
        Bucket {
            tat: AtomicU64::new(0),
            interval: AtomicU64::new(Self::interval_for(per_minute)),
            shared: SharedState {
                backend,
                name,
                lease: AtomicI64::new(0),
                tat: AtomicU64::new(0),
                pending: AtomicU64::new(0),
                refilling: AtomicBool::new(false),
                last_use: AtomicU64::new(0),
                window: AtomicU64::new(0),
                window_uses: AtomicU64::new(0),
                last_window_uses: AtomicU64::new(0),
            },
        }
    }

    /// Nanoseconds one unit is worth.
    pub(super) fn interval(&self) -> u64 {
        self.interval.load(Ordering::Relaxed)
    }

    /// Units per minute.
    pub(super) fn per_minute(&self) -> u64 {
        MINUTE_NS / self.interval().max(1)
    }

    fn interval_for(per_minute: u32) -> u64 {
        MINUTE_NS / u64::from(per_minute.max(1))
    }

    /// Changes the rate, keeping the current fill.
    pub fn set_rate(&self, per_minute: u32) {
        self.interval.store(Self::interval_for(per_minute), Ordering::Relaxed);
    }

    /// Takes `n` units if they fit; otherwise returns how long until they would.
    pub fn try_take(&self, now: u64, n: u64) -> Result<(), Duration> {
        self.try_take_scaled(now, n, 1)
    }

    /// As [`Bucket::try_take`] at `1/share` of the rate (the fallback's share of a shared limit).
    pub(super) fn try_take_scaled(&self, now: u64, n: u64, share: u64) -> Result<(), Duration> {
        let add = self.interval.load(Ordering::Relaxed).saturating_mul(share.max(1)).saturating_mul(n);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let new = tat.max(now).saturating_add(add);
            if new - now > MINUTE_NS {
                return Err(Duration::from_nanos(new - now - MINUTE_NS));
            }
            match self.tat.compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Whether at least one unit is left; otherwise how long until one is.
    pub fn check(&self, now: u64) -> Result<(), Duration> {
        self.check_scaled(now, 1)
    }

    /// As [`Bucket::check`] at `1/share` of the rate.
    pub(super) fn check_scaled(&self, now: u64, share: u64) -> Result<(), Duration> {
        let interval = self.interval.load(Ordering::Relaxed).saturating_mul(share.max(1));
        let tat = self.tat.load(Ordering::Acquire).max(now);
        let new = tat.saturating_add(interval);
        if new - now > MINUTE_NS {
            Err(Duration::from_nanos(new - now - MINUTE_NS))
        } else {
            Ok(())
        }
    }

    /// Takes `n` units unconditionally (may leave the bucket in debt).
    pub fn charge(&self, now: u64, n: u64) {
        self.charge_scaled(now, n, 1);
    }

    /// As [`Bucket::charge`] at `1/share` of the rate.
    pub(super) fn charge_scaled(&self, now: u64, n: u64, share: u64) {
        let add = self.interval.load(Ordering::Relaxed).saturating_mul(share.max(1)).saturating_mul(n);
        let _ = self.tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| Some(tat.max(now).saturating_add(add)));
    }

    /// Gives back `n` units taken by [`Bucket::try_take`] (when a later check refused).
    pub fn refund(&self, n: u64) {
        self.refund_scaled(n, 1);
    }

    /// As [`Bucket::refund`] at `1/share` of the rate.
    pub(super) fn refund_scaled(&self, n: u64, share: u64) {
        let sub = self.interval.load(Ordering::Relaxed).saturating_mul(share.max(1)).saturating_mul(n);
        let _ = self.tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| Some(tat.saturating_sub(sub)));
    }
}

/// Requests- and tokens-per-minute buckets of one key or project.
#[derive(Debug, Default)]
pub struct RateLimits {
    pub requests: Option<Arc<Bucket>>,
    pub tokens: Option<Arc<Bucket>>,
}

impl RateLimits {
    /// Local buckets for the given limits; `None` when there is neither.
    pub fn new(rpm: Option<u32>, tpm: Option<u32>) -> Option<Self> {
        Self::shared("", rpm, tpm, None)
    }

    /// Buckets of the key or project `id` (`key:<id>`, `project:<id>`), shared through
    /// `backend` when there is one.
    pub fn shared(id: &str, rpm: Option<u32>, tpm: Option<u32>, backend: Option<&Arc<SharedLimits>>) -> Option<Self> {
        if rpm.is_none() && tpm.is_none() {
            return None;
        }
        let bucket = |rate: u32, kind: &str| Arc::new(Bucket::named(rate, Arc::from(format!("joule:rl:{id}:{kind}")), backend.cloned()));
        Some(RateLimits { requests: rpm.map(|r| bucket(r, "requests")), tokens: tpm.map(|r| bucket(r, "tokens")) })
    }

    /// Whether these buckets have exactly the given limits' presence (rates may differ).
    pub fn same_shape(&self, rpm: Option<u32>, tpm: Option<u32>) -> bool {
        self.requests.is_some() == rpm.is_some() && self.tokens.is_some() == tpm.is_some()
    }

    /// Updates the rates in place.
    pub fn set_rates(&self, rpm: Option<u32>, tpm: Option<u32>) {
        if let (Some(b), Some(r)) = (&self.requests, rpm) {
            b.set_rate(r);
        }
        if let (Some(b), Some(r)) = (&self.tokens, tpm) {
            b.set_rate(r);
        }
    }
}

/// A project's budget state.
#[derive(Debug)]
pub struct Budget {
    /// Limit in nano-USD (costs of single small requests are fractions of a micro-dollar).
    limit: AtomicU64,
    period: std::sync::atomic::AtomicU8,
    /// Start (unix ms) of the period the counters below belong to.
    period_start: AtomicI64,
    /// Its end (unix ms), so that admission need not compute calendar dates.
    period_end: AtomicI64,
    /// This instance's spend in the period, nano-USD.
    local: AtomicU64,
    /// Other instances' spend in the period as last read from the store, nano-USD.
    others: AtomicU64,
    /// Shared mode: the project id (its key in the shared server) and the other instances'
    /// spend in the period as the shared server last said, nano-USD. Admission uses the larger
    /// of this and the store's figure, so a shared server that lost its data (restarted without
    /// persistence) is corrected by the store within `budget_sync_interval_ms`.
    pub(super) project: Arc<str>,
    pub(super) shared_others: AtomicU64,
}

fn nanos(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

fn period_code(p: BudgetPeriod) -> u8 {
    match p {
        BudgetPeriod::Day => 0,
        BudgetPeriod::Month => 1,
    }
}

impl Budget {
    /// A budget of `usd` per `period`, nothing spent yet.
    pub fn new(usd: f64, period: BudgetPeriod) -> Self {
        Self::of_project("", usd, period)
    }

    /// The budget of project `project` (its name in the shared server, when one is used).
    pub fn of_project(project: &str, usd: f64, period: BudgetPeriod) -> Self {
        let (start, end) = period.bounds(crate::clock::now_ms());
        Budget {
            limit: AtomicU64::new(nanos(usd)),
            period: std::sync::atomic::AtomicU8::new(period_code(period)),
            period_start: AtomicI64::new(start),
            period_end: AtomicI64::new(end),
            local: AtomicU64::new(0),
            others: AtomicU64::new(0),
            project: Arc::from(project),
            shared_others: AtomicU64::new(0),
        }
    }

    /// The period.
    pub fn period(&self) -> BudgetPeriod {
        if self.period.load(Ordering::Relaxed) == 0 { BudgetPeriod::Day } else { BudgetPeriod::Month }
    }

    /// Changes limit and period. A period change starts the counters afresh for the new
    /// period: other instances' spend comes back with the next sync; this instance's spend
    /// earlier in the new period is not counted (it only counts its requests as they end).
    pub fn set(&self, usd: f64, period: BudgetPeriod) {
        self.limit.store(nanos(usd), Ordering::Relaxed);
        if self.period.swap(period_code(period), Ordering::AcqRel) != period_code(period) {
            let (start, end) = period.bounds(crate::clock::now_ms());
            self.period_start.store(start, Ordering::Release);
            self.period_end.store(end, Ordering::Release);
            self.local.store(0, Ordering::Relaxed);
            self.others.store(0, Ordering::Relaxed);
            self.shared_others.store(0, Ordering::Relaxed);
        }
    }

    /// The other instances' spend: the larger of the store's and the shared server's figure.
    fn others(&self) -> u64 {
        self.others.load(Ordering::Relaxed).max(self.shared_others.load(Ordering::Relaxed))
    }

    /// Spend known to this instance in the current period, USD.
    pub fn spent(&self) -> f64 {
        (self.local.load(Ordering::Relaxed) + self.others()) as f64 / 1e9
    }

    /// What is left of the limit in the current period, USD (never negative).
    pub fn remaining(&self, now_ms: i64) -> f64 {
        if now_ms >= self.period_end.load(Ordering::Acquire) {
            return self.limit.load(Ordering::Relaxed) as f64 / 1e9;
        }
        (self.limit.load(Ordering::Relaxed) as f64 / 1e9 - self.spent()).max(0.0)
    }

    /// Refuses when the period's spend has reached the limit; the error is the time until
    /// the period ends.
    pub fn check(&self, now_ms: i64) -> Result<(), Duration> {
        let end = self.period_end.load(Ordering::Acquire);
        if now_ms >= end {
            // A new period began and nothing has rolled the counters yet: nothing spent in it.
            return Ok(());
        }
        let spent = self.local.load(Ordering::Relaxed).saturating_add(self.others());
        if spent >= self.limit.load(Ordering::Relaxed) {
            return Err(Duration::from_millis(u64::try_from(end - now_ms).unwrap_or(0)));
        }
        Ok(())
    }

    /// Adds this instance's cost of a finished request.
    pub fn add(&self, usd: f64, now_ms: i64) {
        self.roll(self.period().bounds(now_ms));
        self.local.fetch_add(nanos(usd), Ordering::Relaxed);
    }

    /// This instance's spend in the current period (nano-USD), which the shared server keeps
    /// per instance (an absolute figure: resending it never counts twice).
    pub(super) fn local_nanos(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }

    /// The other instances' spend in the period starting `start`, as the shared server said.
    pub(super) fn set_shared_others(&self, start: i64, nanos: u64) {
        if self.period_start.load(Ordering::Relaxed) == start {
            self.shared_others.store(nanos, Ordering::Relaxed);
        }
    }

    /// The current period's start and end (unix ms).
    pub(super) fn period_bounds(&self) -> (i64, i64) {
        (self.period_start.load(Ordering::Relaxed), self.period_end.load(Ordering::Relaxed))
    }

    /// Starts a new period's counters if `(start, end)` is newer than the current period.
    fn roll(&self, (start, end): (i64, i64)) {
        let cur = self.period_start.load(Ordering::Relaxed);
        if start > cur && self.period_start.compare_exchange(cur, start, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.local.store(0, Ordering::Relaxed);
            self.others.store(0, Ordering::Relaxed);
            self.period_end.store(end, Ordering::Release);
        }
    }

    /// Sets other instances' spend in the period starting at `start`, as read from the store.
    pub fn sync_others(&self, start: i64, usd: f64) {
        self.roll(self.period().bounds(start));
        if self.period_start.load(Ordering::Relaxed) == start {
            self.others.store(nanos(usd), Ordering::Relaxed);
        }
    }

    /// The start of the current period for `now_ms`.
    pub fn period_start(&self, now_ms: i64) -> i64 {
        self.period().bounds(now_ms).0
    }
}

/// Why a request was refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A requests- or tokens-per-minute bucket is empty.
    Rate { scope: Scope, kind: Kind, retry_after: Duration },
    /// The project's budget for the period is spent.
    Budget { retry_after: Duration },
}

/// Whose limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key,
    Project,
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
}

impl Refusal {
    /// Closed-set metric labels `(scope, kind)`.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Refusal::Rate { scope, kind, .. } => (
                if *scope == Scope::Key { "key" } else { "project" },
                if *kind == Kind::Requests { "requests" } else { "tokens" },
            ),
            Refusal::Budget { .. } => ("project", "budget"),
        }
    }
}

/// Checks budget, token buckets and request buckets of `p` (in that order), taking one
/// request unit from each request bucket if all pass. Lock-free; with the shared backend it
/// still makes no network round trip (see [`super::shared`]).
///
/// # Errors
/// The first limit that refuses.
pub fn admit(p: &Principal, now: u64, now_ms: i64) -> Result<(), Refusal> {
    let project = p.project.as_deref();
    if let Some(b) = project.and_then(|p| p.budget.as_deref()) {
        b.check(now_ms).map_err(|retry_after| Refusal::Budget { retry_after })?;
    }
    let key = p.limits.as_deref();
    let plim = project.and_then(|p| p.limits.as_deref());
    for (scope, l) in [(Scope::Key, key), (Scope::Project, plim)] {
        if let Some(t) = l.and_then(|l| l.tokens.as_ref()) {
            check_tokens(t, now).map_err(|retry_after| Refusal::Rate { scope, kind: Kind::Tokens, retry_after })?;
        }
    }
    let key_req = key.and_then(|l| l.requests.as_ref());
    if let Some(b) = key_req {
        take_request(b, now).map_err(|retry_after| Refusal::Rate { scope: Scope::Key, kind: Kind::Requests, retry_after })?;
    }
    if let Some(b) = plim.and_then(|l| l.requests.as_ref()) {
        if let Err(retry_after) = take_request(b, now) {
            if let Some(k) = key_req {
                refund_request(k);
            }
            return Err(Refusal::Rate { scope: Scope::Project, kind: Kind::Requests, retry_after });
        }
    }
    Ok(())
}

fn mode(b: &Bucket) -> Mode<'_> {
    b.shared.backend.as_ref().map_or(Mode::Local, |s| s.mode())
}

fn check_tokens(b: &Arc<Bucket>, now: u64) -> Result<(), Duration> {
    match mode(b) {
        Mode::Local => b.check(now),
        Mode::Fallback(share) => b.check_scaled(now, share),
        Mode::Shared(s) => s.check_tokens(b, now),
    }
}

fn take_request(b: &Arc<Bucket>, now: u64) -> Result<(), Duration> {
    match mode(b) {
        Mode::Local => b.try_take(now, 1),
        Mode::Fallback(share) => b.try_take_scaled(now, 1, share),
        Mode::Shared(s) => s.take_request(b, now),
    }
}

fn refund_request(b: &Arc<Bucket>) {
    match mode(b) {
        Mode::Local => b.refund(1),
        Mode::Fallback(share) => b.refund_scaled(1, share),
        Mode::Shared(_) => {
            b.shared.lease.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Accounts a finished request: its tokens to the token buckets, its cost to the budget.
pub fn settle(p: &Principal, tokens: u64, cost_usd: f64, now: u64, now_ms: i64) {
    let project = p.project.as_deref();
    for l in [p.limits.as_deref(), project.and_then(|p| p.limits.as_deref())].into_iter().flatten() {
        if let (Some(t), true) = (&l.tokens, tokens > 0) {
            match mode(t) {
                Mode::Local => t.charge(now, tokens),
                Mode::Fallback(share) => t.charge_scaled(now, tokens, share),
                Mode::Shared(s) => s.charge_tokens(t, tokens),
            }
        }
    }
    if let (Some(b), true) = (project.and_then(|p| p.budget.as_deref()), cost_usd > 0.0) {
        b.add(cost_usd, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ns;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn bucket_allows_a_burst_then_refills_at_the_rate() {
        let b = Bucket::new(60); // one per second, burst 60
        let t0 = now_ns();
        for _ in 0..60 {
            b.try_take(t0, 1).unwrap();
        }
        let wait = b.try_take(t0, 1).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900), "{wait:?}");
        assert!(b.try_take(t0 + SEC / 2, 1).is_err());
        b.try_take(t0 + SEC, 1).unwrap();
        // A full minute later the whole burst is back.
        for _ in 0..60 {
            b.try_take(t0 + 61 * SEC, 1).unwrap();
        }
    }

    #[test]
    fn token_bucket_goes_into_debt_and_recovers() {
        let b = Bucket::new(600); // 10 tokens per second
        let t0 = now_ns();
        b.check(t0).unwrap();
        b.charge(t0, 1200); // twice the minute's worth
        let wait = b.check(t0).unwrap_err();
        assert!(wait > Duration::from_secs(59) && wait <= Duration::from_secs(61), "{wait:?}");
        b.check(t0 + 61 * SEC).unwrap();
    }

    #[test]
    fn refund_restores_a_unit() {
        let b = Bucket::new(1);
        let t0 = now_ns();
        b.try_take(t0, 1).unwrap();
        assert!(b.try_take(t0, 1).is_err());
        b.refund(1);
        b.try_take(t0, 1).unwrap();
    }

    #[test]
    fn budget_counts_local_and_others_and_resets_each_period() {
        let b = Budget::new(1.0, BudgetPeriod::Day);
        let now = crate::clock::now_ms();
        b.check(now).unwrap();
        b.add(0.6, now);
        b.check(now).unwrap();
        let start = b.period_start(now);
        b.sync_others(start, 0.5);
        let wait = b.check(now).unwrap_err();
        assert!(wait <= Duration::from_secs(86_400));
        assert!((b.spent() - 1.1).abs() < 1e-9);
        // The next day starts from zero.
        let tomorrow = now + 86_400_000;
        b.add(0.1, tomorrow);
        b.check(tomorrow).unwrap();
        assert!((b.spent() - 0.1).abs() < 1e-9);
    }
}
