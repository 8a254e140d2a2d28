//! The Wasm engine and the sandbox every strategy call runs in.
//!
//! One [`Host`] per process: the wasmtime `Engine` is built once (component model on,
//! `concurrency_support` off — on by default in wasmtime 48 with the async feature, and it
//! triples the cost of a component call —, epoch interruption, pooling allocator) with a
//! background thread advancing the epoch every millisecond while calls run. The thread parks
//! after [`IDLE_TICKS`] ticks without a call (an idle gateway does not wake every millisecond;
//! at most once a second) and the next call wakes it; so under steady traffic a call costs two
//! atomic operations and no wake-up. Loading compiles, validates against the world and
//! pre-instantiates; nothing of that happens on the request path.
//!
//! Each call gets an epoch deadline (`call_timeout`) and runs under a memory cap
//! (`memory_limit`, enforced by a `ResourceLimiter`, with the pool's slot size as the hard
//! ceiling). Any trap, timeout, memory exhaustion or invalid output becomes a [`Fault`]; the
//! caller falls back to the native ranking.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap};

use super::bindings::{self, DecisionInput, StrategyPre};
use super::plugin::{FaultKind, Info, Plugin};
use crate::routing::Candidate;

/// How often the epoch advances: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Ticks without a call after which the epoch thread parks (100 ms).
const IDLE_TICKS: u64 = 100;
/// Largest table a guest may grow to (Rust guests use one small function table).
const MAX_TABLE_ELEMENTS: usize = 10_000;
/// Deadline for instantiation and `describe()` at load: off the request path, so generous
/// enough that a busy machine does not make a good component fail to load.
const LOAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Warm instances kept per thread (oldest dropped first).
const MAX_WARM_PER_THREAD: usize = 32;

/// Whether calls reuse an instance or instantiate afresh.
///
/// Measured with `cargo bench --bench strategy` (a whole decision with one `price` plugin on
/// 16 candidates, release build, 2-core development machine): warm per-thread instance
/// **2.2 µs** (`decision/wasm_one/16`), fresh instance per call **32.7 µs**
/// (`instance_mode/fresh_per_call/16`: store creation, instantiation from the pool, the
/// guest's memory and data-segment initialisation, and tearing it all down on every call).
/// A fresh instance costs several times the whole decision budget, so
/// [`InstanceMode::WarmPerThread`] is the default. Its cost: a guest could keep state between
/// calls on one thread — `joule plugin check` reports that as non-determinism — and a faulted
/// instance is always discarded, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceMode {
    /// One live instance per plugin per thread, reused across calls; dropped after a fault.
    WarmPerThread,
    /// A new instance for every call (strongest isolation, slowest).
    FreshPerCall,
}

/// Sandbox and engine settings.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Longest a call may run. Default 10 ms; past it the call traps (`timeout` fault).
    pub call_timeout: Duration,
    /// Largest linear memory a guest may have. Default 16 MiB; growing past it fails, which
    /// Rust guests turn into a trap (`memory` fault).
    pub memory_limit: usize,
    /// Consecutive faults after which a plugin is disabled until replaced. Default 5.
    pub disable_after: u32,
    /// Fuel per call (instructions, roughly); `None` (the default) disables fuel metering,
    /// which costs time on every call. `joule plugin check` sets it.
    pub fuel: Option<u64>,
    /// Default [`InstanceMode::WarmPerThread`] (see there for the measurement).
    pub instances: InstanceMode,
    /// Pool size: instances (warm ones across all threads included) that can exist at once.
    /// Default 1000; when exhausted a call faults (`instantiate`) and falls back.
    pub max_instances: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            call_timeout: Duration::from_millis(10),
            memory_limit: 16 << 20,
            disable_after: 5,
            fuel: None,
            instances: InstanceMode::WarmPerThread,
            max_instances: 1000,
        }
    }
}

/// Why a component was refused at load. The old version (if any) stays in service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("this is a core WebAssembly module, not a component: build strategies with `joule plugin build` (wasm32-unknown-unknown, then componentised)")]
    CoreModule,
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("the component imports {0}, but the joule:strategy@0.2.0 contract allows no imports (no WASI, clock or randomness: the time and a seed arrive in the input)")]
    Imports(String),
    #[error("the component does not match the world joule:strategy/strategy@0.2.0 (exports `describe: func() -> info` and `score: func(input: decision-input) -> result<list<option<f64>>, string>`): {0}")]
    World(String),
    #[error("describe() failed: {0}")]
    Describe(String),
    #[error("describe() returned an invalid {field}: {message}")]
    Info { field: &'static str, message: String },
}

/// A fault of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    /// Short operator-facing detail (never shown to API clients).
    pub detail: String,
}

/// What one call produced.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    /// One valid score per candidate.
    Scored(Vec<Option<f64>>),
    Fault(Fault),
}

/// Per-store state: the memory cap and whether a guest hit it.
pub(crate) struct GuestState {
    memory_limit: usize,
    memory_exceeded: bool,
}

impl ResourceLimiter for GuestState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// What the epoch thread and the calls share.
#[derive(Default)]
struct TickState {
    stop: AtomicBool,
    /// Calls (and loads) running now.
    active: AtomicUsize,
    /// Calls started so far: the thread sees activity even between its looks at `active`.
    started: AtomicU64,
    /// The thread is parked (or about to): a starting call must wake it.
    parked: AtomicBool,
    /// Loop turns of the thread (each a wake-up), for tests and diagnostics.
    turns: AtomicU64,
}

/// The epoch thread; stops it when the host goes away.
struct Ticker {
    state: Arc<TickState>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> std::io::Result<Ticker> {
        let state = Arc::new(TickState::default());
        let s = state.clone();
        let thread = std::thread::Builder::new().name("joule-wasm-epoch".into()).spawn(move || {
            let mut idle = 0_u64;
            let mut seen = s.started.load(Ordering::Acquire);
            while !s.stop.load(Ordering::Acquire) {
                s.turns.fetch_add(1, Ordering::Relaxed);
                let started = s.started.load(Ordering::Acquire);
                if started != seen || s.active.load(Ordering::Acquire) > 0 {
                    seen = started;
                    idle = 0;
                } else {
                    idle += 1;
                }
                if idle > IDLE_TICKS {
                    s.parked.store(true, Ordering::SeqCst);
                    // Checked after `parked` is set: a call starting now either is seen here
                    // or sees `parked` and unparks (an unpark before the park is kept).
                    if s.active.load(Ordering::SeqCst) == 0 && s.started.load(Ordering::SeqCst) == seen {
                        std::thread::park_timeout(Duration::from_secs(1));
                    }
                    s.parked.store(false, Ordering::SeqCst);
                    // Still idle after a timeout: park again at once (the check above resets
                    // `idle` when a call came).
                    continue;
                }
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
        Ok(Ticker { state, thread: Some(thread) })
    }

    /// Marks a call running until the guard drops, waking the thread if it parked.
    fn enter(&self) -> Active<'_> {
        let s = &self.state;
        s.started.fetch_add(1, Ordering::SeqCst);
        s.active.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
        Active(s)
    }
}

/// A call in progress (see [`Ticker::enter`]).
struct Active<'a>(&'a TickState);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The engine, the empty linker (the world imports nothing) and the sandbox settings.
pub struct Host {
    engine: Engine,
    linker: Linker<GuestState>,
    config: HostConfig,
    deadline_ticks: u64,
    ticker: Ticker,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the Wasm engine: {0}")]
pub struct EngineError(String);

impl Host {
    /// Builds the engine and starts the epoch thread.
    ///
    /// # Errors
    /// The engine rejects the configuration (e.g. the pool cannot reserve address space).
    pub fn new(config: HostConfig) -> Result<Arc<Host>, EngineError> {
        let mut pool = PoolingAllocationConfig::default();
        let slot = config.memory_limit.max(1 << 16);
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances.saturating_mul(2))
            .total_memories(config.max_instances)
            .total_tables(config.max_instances)
            .max_memory_size(slot);
        let mut c = Config::new();
        c.wasm_component_model(true)
            // Sync calls only; see the module docs for why this matters.
            .concurrency_support(false)
            .epoch_interruption(true)
            .consume_fuel(config.fuel.is_some())
            // A reservation as large as the cap keeps the pool's address space small; bounds
            // checks stay explicit, which costs nothing measurable for these tiny guests.
            .memory_reservation(slot as u64)
            .memory_guard_size(64 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c).map_err(|e| EngineError(format!("{e:#}")))?;
        let ticker = Ticker::start(engine.clone()).map_err(|e| EngineError(format!("epoch thread: {e}")))?;
        let deadline_ticks = ticks(config.call_timeout);
        Ok(Arc::new(Host { linker: Linker::new(&engine), engine, config, deadline_ticks, ticker }))
    }

    /// The sandbox settings.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    fn store(&self) -> Store<GuestState> {
        let mut store = Store::new(&self.engine, GuestState { memory_limit: self.config.memory_limit, memory_exceeded: false });
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store
    }

    fn arm(&self, store: &mut Store<GuestState>) {
        self.arm_for(store, self.deadline_ticks);
    }

    fn arm_for(&self, store: &mut Store<GuestState>, ticks: u64) {
        store.set_epoch_deadline(ticks);
        if let Some(fuel) = self.config.fuel {
            // Fuel is enabled on this engine whenever `fuel` is set, so this cannot fail.
            let _ = store.set_fuel(fuel);
        }
    }

    /// Compiles `bytes`, checks it against the world, pre-instantiates it and asks it to
    /// describe itself (under the same sandbox as every call).
    ///
    /// # Errors
    /// [`LoadError`] with a message for the operator.
    pub(crate) fn compile(&self, bytes: &[u8]) -> Result<(StrategyPre<GuestState>, Info), LoadError> {
        if bytes.starts_with(b"\0asm\x01\0\0\0") {
            return Err(LoadError::CoreModule);
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let imports: Vec<String> = component.component_type().imports(&self.engine).map(|(name, _)| format!("`{name}`")).collect();
        if !imports.is_empty() {
            return Err(LoadError::Imports(imports.join(", ")));
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::World(format!("{e:#}")))?;
        let pre = StrategyPre::new(pre).map_err(|e| LoadError::World(format!("{e:#}")))?;
        let mut store = self.store();
        let _active = self.ticker.enter();
        self.arm_for(&mut store, ticks(LOAD_TIMEOUT));
        let instance = pre.instantiate(&mut store).map_err(|e| LoadError::Describe(format!("instantiation failed: {e:#}")))?;
        let info = instance.call_describe(&mut store).map_err(|e| LoadError::Describe(format!("{e:#}")))?;
        Ok((pre, Info::validate(info)?))
    }

    /// Runs `plugin`'s `score` on `input` in the sandbox and checks its output.
    pub(crate) fn call(&self, plugin: &Plugin, input: &DecisionInput) -> CallOutcome {
        match self.config.instances {
            InstanceMode::WarmPerThread => self.timed(plugin, || self.call_warm(plugin, input)),
            InstanceMode::FreshPerCall => self.call_fresh(plugin, input),
        }
    }

    /// As [`Host::call`], on a new instance whatever the mode.
    pub(crate) fn call_fresh(&self, plugin: &Plugin, input: &DecisionInput) -> CallOutcome {
        self.timed(plugin, || {
            let mut store = self.store();
            match plugin.pre.instantiate(&mut store) {
                Ok(instance) => self.invoke(&instance, &mut store, input).0,
                Err(e) => CallOutcome::Fault(Fault { kind: FaultKind::Instantiate, detail: format!("{e:#}") }),
            }
        })
    }

    /// Scores `cands` with `plugin` in the sandbox, as a decision does (same input, same
    /// instance mode, counted in the plugin's calls and faults), for tools that call one plugin
    /// directly (`joule plugin check`).
    pub fn score(&self, plugin: &Plugin, cands: &[Candidate], now_ms: u64, seed: u64) -> CallOutcome {
        self.call(plugin, &bindings::decision_input(cands, now_ms, seed))
    }

    /// As [`Host::score`], on a new instance whatever the mode.
    pub fn score_fresh(&self, plugin: &Plugin, cands: &[Candidate], now_ms: u64, seed: u64) -> CallOutcome {
        self.call_fresh(plugin, &bindings::decision_input(cands, now_ms, seed))
    }

    fn timed(&self, plugin: &Plugin, f: impl FnOnce() -> CallOutcome) -> CallOutcome {
        let started = Instant::now();
        let active = self.ticker.enter();
        let out = f();
        drop(active);
        plugin.record(&out, started.elapsed(), self.config.disable_after);
        out
    }

    fn call_warm(&self, plugin: &Plugin, input: &DecisionInput) -> CallOutcome {
        WARM.with(|warm| {
            let mut warm = warm.borrow_mut();
            let pos = match warm.iter().position(|w| w.uid == plugin.uid) {
                Some(p) => p,
                None => {
                    let mut store = self.store();
                    let instance = match plugin.pre.instantiate(&mut store) {
                        Ok(i) => i,
                        Err(e) => return CallOutcome::Fault(Fault { kind: FaultKind::Instantiate, detail: format!("{e:#}") }),
                    };
                    if warm.len() >= MAX_WARM_PER_THREAD {
                        warm.remove(0);
                    }
                    warm.push(WarmInstance { uid: plugin.uid, store, instance });
                    warm.len() - 1
                }
            };
            let w = &mut warm[pos];
            let (out, reusable) = self.invoke(&w.instance, &mut w.store, input);
            if !reusable {
                warm.remove(pos);
            }
            out
        })
    }

    /// Calls `score`; the flag says whether the instance may be used again (no trap).
    fn invoke(&self, instance: &bindings::Strategy, store: &mut Store<GuestState>, input: &DecisionInput) -> (CallOutcome, bool) {
        self.arm(store);
        let n = bindings::len(input);
        match instance.call_score(&mut *store, input) {
            Ok(Ok(scores)) => (check_scores(scores, n), true),
            Ok(Err(reason)) => {
                let detail: String = reason.chars().take(200).collect();
                (CallOutcome::Fault(Fault { kind: FaultKind::GuestError, detail }), true)
            }
            Err(e) => {
                let kind = if store.data().memory_exceeded {
                    FaultKind::Memory
                } else {
                    match e.downcast_ref::<Trap>() {
                        Some(Trap::Interrupt) => FaultKind::Timeout,
                        Some(Trap::OutOfFuel) => FaultKind::Fuel,
                        _ => FaultKind::Trap,
                    }
                };
                (CallOutcome::Fault(Fault { kind, detail: format!("{e:#}").chars().take(300).collect() }), false)
            }
        }
    }
}

/// Epoch ticks for a timeout: +1 because the deadline may start just before a tick.
fn ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_micros().max(1);
    u64::try_from(timeout.as_micros().div_ceil(tick)).unwrap_or(u64::MAX).max(1).saturating_add(1)
}

fn check_scores(scores: Vec<Option<f64>>, n: usize) -> CallOutcome {
    if scores.len() != n {
        return CallOutcome::Fault(Fault { kind: FaultKind::WrongCount, detail: format!("{} scores for {n} candidates", scores.len()) });
    }
    if let Some(i) = scores.iter().position(|s| s.is_some_and(|x| !x.is_finite())) {
        return CallOutcome::Fault(Fault { kind: FaultKind::NonFinite, detail: format!("score of candidate {i} is {:?}", scores[i]) });
    }
    CallOutcome::Scored(scores)
}

struct WarmInstance {
    uid: u64,
    store: Store<GuestState>,
    instance: bindings::Strategy,
}

thread_local! {
    static WARM: RefCell<Vec<WarmInstance>> = const { RefCell::new(Vec::new()) };
}

/// Drops this thread's warm instances of plugins `keep` refuses (replaced or removed ones),
/// returning their pool slots.
pub(crate) fn retain_warm(keep: impl Fn(u64) -> bool) {
    WARM.with(|w| w.borrow_mut().retain(|w| keep(w.uid)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_epoch_thread_sleeps_when_idle_and_ticks_while_calls_run() {
        let host = Host::new(HostConfig::default()).unwrap();
        let s = host.ticker.state.clone();
        wait_until("parked after 100 idle ticks", || s.parked.load(Ordering::SeqCst));
        let before = s.turns.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
        let idle_turns = s.turns.load(Ordering::Relaxed) - before;
        assert!(idle_turns <= 3, "{idle_turns} wake-ups in an idle second");

        // A call wakes it and it ticks every millisecond while the call runs.
        let active = host.ticker.enter();
        let woke = s.turns.load(Ordering::Relaxed);
        wait_until("ticking while a call runs", || s.turns.load(Ordering::Relaxed) > woke + 20);
        assert!(!s.parked.load(Ordering::SeqCst));
        drop(active);
        wait_until("parked again", || s.parked.load(Ordering::SeqCst));
    }
}
