//! Pricing: the token-price formula of DESIGN.md, the [`PriceBook`] holding every
//! deployment's current quote, and the [`Pricing`] engine that owns the energy price table and
//! rebuilds the book whenever the table changes (or a price turns stale) — never per request.
//!
//! Hosted deployment, per token direction (input = prefill, output = decode):
//!
//! ```text
//! energy $/Mtok = ($/MWh ÷ 1000) × node_kW × PUE ÷ (3600 × tokens_per_s) × 1e6
//! token price   = max(base $/Mtok + energy $/Mtok, floor)
//! ```
//!
//! Negative energy prices lower the token price, down to the floor. Provider routes cost their
//! list price plus the routing fee; free models cost the client 0 and are ranked by what they
//! cost us. The request path reads the book with one `ArcSwap` load and never locks.
//!
//! Day-ahead feed rows (market `DA`) never reach the table or the book: the engine keeps them
//! apart per price node ([`day_ahead`], [`Pricing::day_ahead`]) for the batch scheduler's
//! forecasts.

pub mod cost;
pub mod day_ahead;
pub mod energy;

pub mod feed;
pub mod history;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::catalog::{Catalog, Category, DeploymentKind, GpuProfile, Model, Quote, TokenPrice};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::clock::{self, Clock};
use day_ahead::DayAheadTable;
use energy::{site_energy, EnergyPrice, EnergyTable, Market, ParsedRow, RejectKind, Rejected, RowRules, SiteEnergy};
use history::{Frame, FramePoint, History};

// ---------------------------------------------------------------- settings

/// Validated `[energy]` settings.
#[derive(Debug, Clone)]
pub struct EnergySettings {
    /// Sanity range for feed rows, $/MWh. Default −1000..10000.
    pub min_usd_per_mwh: f64,
    pub max_usd_per_mwh: f64,
    /// Price assumed for a stale or missing site when higher than its last price. Default 150.
    pub stale_fallback_usd_per_mwh: f64,
    /// How often prices are re-checked for staleness. Default 10 s.
    pub refresh: Duration,
    pub history: HistorySettings,
    pub replay: Option<ReplaySettings>,
    pub polls: Vec<PollSettings>,
    pub push: Option<PushSettings>,
}

impl Default for EnergySettings {
    fn default() -> Self {
        EnergySettings {
            min_usd_per_mwh: -1000.0,
            max_usd_per_mwh: 10_000.0,
            stale_fallback_usd_per_mwh: 150.0,
            refresh: Duration::from_secs(10),
            history: HistorySettings::default(),
            replay: None,
            polls: Vec::new(),
            push: None,
        }
    }
}

/// Price history retention and persistence.
#[derive(Debug, Clone)]
pub struct HistorySettings {
    /// Directory for the durable history file, used when the gateway has no store (a store
    /// wins); none and no store keeps history in memory only.
    pub data_dir: Option<PathBuf>,
    /// Days kept (≥ 7). Default 7.
    pub retention_days: u32,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings { data_dir: None, retention_days: 7 }
    }
}

/// A CSV trace to replay.
#[derive(Debug, Clone)]
pub enum ReplaySource {
    File(PathBuf),
    /// Compiled into the binary (the demo's excerpt).
    Embedded { name: &'static str, text: &'static str },
}

/// Where in the trace a replay starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReplayStart {
    TraceStart,
    /// At this trace time (Unix seconds).
    At(i64),
    /// This many seconds after the trace's first row.
    Offset(i64),
}

/// File replay of energy price traces.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    pub sources: Vec<ReplaySource>,
    /// Trace seconds per real second. Default 1 (real time).
    pub speed: f64,
    pub start: ReplayStart,
    /// Start over at the end, shifted by the trace length so time keeps moving forward.
    pub repeat: bool,
}

/// Body format of a polled endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedFormat {
    Json,
    Csv,
}

/// An HTTP endpoint polled for prices.
#[derive(Debug, Clone)]
pub struct PollSettings {
    pub url: String,
    pub format: FeedFormat,
    /// Default 60 s.
    pub interval: Duration,
    /// Default 5 s.
    pub timeout: Duration,
}

/// The admin push API (`POST /admin/energy/prices`).
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Bearer token required by the push API, if set.
    pub token: Option<Secret<String>>,
}

// ---------------------------------------------------------------- formula

/// Energy $/Mtok for one direction: `($/MWh ÷ 1000) × node_kW × PUE ÷ (3600 × tokens_per_s) × 1e6`.
pub fn energy_per_mtok(usd_per_mwh: f64, node_kw: f64, pue: f64, tokens_per_s: f64) -> f64 {
    usd_per_mwh / 1000.0 * node_kw * pue / (3600.0 * tokens_per_s) * 1e6
}

/// Energy $/Mtok per direction for a GPU profile in a data center with this PUE.
pub fn energy_price(usd_per_mwh: f64, gpu: &GpuProfile, pue: f64) -> TokenPrice {
    TokenPrice {
        input: energy_per_mtok(usd_per_mwh, gpu.node_kw, pue, gpu.prefill_tokens_per_s),
        output: energy_per_mtok(usd_per_mwh, gpu.node_kw, pue, gpu.decode_tokens_per_s),
    }
}

/// `max(base + energy, floor)` per direction.
pub fn token_price(base: TokenPrice, energy: TokenPrice, floor: TokenPrice) -> TokenPrice {
    TokenPrice { input: (base.input + energy.input).max(floor.input), output: (base.output + energy.output).max(floor.output) }
}

// ---------------------------------------------------------------- price book

/// Every deployment's quote at one moment, plus the energy state of each data center.
/// Immutable; the engine swaps whole books.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    /// `[model index][deployment index]`, as in the catalog.
    quotes: Vec<Vec<Quote>>,
    /// `[data center index]`; `None` for a data center without a price node.
    sites: Vec<Option<SiteEnergy>>,
    /// Time the book was computed for (clock time, Unix seconds).
    pub at: i64,
    /// [`Catalog::version`] of the catalog the indexes refer to.
    catalog: u64,
}

impl PriceBook {
    /// Computes the book for `catalog` from `table` at time `now`, applying the stale rule
    /// with `fallback_usd_per_mwh` (`f64::NEG_INFINITY` disables the fallback).
    pub fn build(catalog: &Catalog, table: &EnergyTable, fallback_usd_per_mwh: f64, now: i64) -> Self {
        let sites: Vec<Option<SiteEnergy>> = catalog
            .data_centers
            .iter()
            .map(|dc| dc.price_node.as_deref().map(|n| site_energy(table.get(n), now, fallback_usd_per_mwh)))
            .collect();
        let quotes = catalog
            .models
            .iter()
            .map(|m| m.deployments.iter().map(|d| quote_with(catalog, &sites, m, d)).collect())
            .collect();
        PriceBook { quotes, sites, at: now, catalog: catalog.version() }
    }

    /// The quotes of a model's deployments (catalog order), if the book knows the model —
    /// and was built for this catalog: across a config reload, a request may still hold the
    /// previous catalog while the engine prices the new one (or the other way round), and the
    /// indexes of the two need not agree.
    pub fn quotes_of(&self, catalog: &Catalog, model: &Model) -> Option<&[Quote]> {
        if self.catalog != catalog.version() {
            return None;
        }
        let q = self.quotes.get(catalog.model_index(&model.id)?)?;
        (q.len() == model.deployments.len()).then_some(q.as_slice())
    }

    /// A deployment's quote; the catalog's base quote if the book does not know it.
    pub fn quote(&self, catalog: &Catalog, model: &Model, deployment: usize) -> Quote {
        self.quotes_of(catalog, model)
            .and_then(|q| q.get(deployment))
            .copied()
            .unwrap_or_else(|| model.deployments.get(deployment).map(|d| catalog.quote(model, d)).unwrap_or_default())
    }

    /// Energy state of a data center (by its index in `catalog`), if it has a price node and
    /// the book was built for `catalog` (see [`PriceBook::quotes_of`]).
    pub fn site(&self, catalog: &Catalog, data_center: usize) -> Option<&SiteEnergy> {
        if self.catalog != catalog.version() {
            return None;
        }
        self.sites.get(data_center).and_then(Option::as_ref)
    }

    /// The deployment with the lowest client price (input + output), ties by catalog order.
    pub fn best(&self, catalog: &Catalog, model: &Model) -> Option<(usize, Quote)> {
        (0..model.deployments.len())
            .map(|i| (i, self.quote(catalog, model, i)))
            .min_by(|a, b| (a.1.price.input + a.1.price.output).total_cmp(&(b.1.price.input + b.1.price.output)))
    }

    fn same_prices(&self, other: &PriceBook) -> bool {
        self.quotes == other.quotes && self.sites == other.sites
    }
}

fn quote_with(catalog: &Catalog, sites: &[Option<SiteEnergy>], model: &Model, d: &crate::catalog::Deployment) -> Quote {
    let site = match &d.kind {
        DeploymentKind::Hosted { data_center, .. } => sites.get(*data_center).copied().flatten(),
        DeploymentKind::Provider { .. } => None,
    };
    let mut q = quote_at(catalog, model, d, site.map(|s| s.usd_per_mwh));
    q.stale = site.is_some_and(|s| s.stale) && matches!(&d.kind, DeploymentKind::Hosted { gpu: Some(_), .. });
    q
}

/// A deployment's quote if its data center's energy price were `usd_per_mwh` (`None`: no
/// energy part), by the formula above: what the book holds for the price now, and what the
/// batch scheduler expects for a forecast price. Provider routes (list price + fee) and hosted
/// deployments without a GPU profile ignore the price. Never stale.
pub fn quote_at(catalog: &Catalog, model: &Model, d: &crate::catalog::Deployment, usd_per_mwh: Option<f64>) -> Quote {
    let DeploymentKind::Hosted { data_center, base_price, gpu, floor, .. } = &d.kind else {
        return catalog.quote(model, d);
    };
    let pue = catalog.data_centers.get(*data_center).map_or(1.0, |dc| dc.pue);
    let energy = match (usd_per_mwh, gpu) {
        (Some(p), Some(g)) => energy_price(p, g, pue),
        _ => TokenPrice::default(),
    };
    let price = token_price(*base_price, energy, *floor);
    if model.category == Category::Free {
        return Quote { cost: price, ..Quote::default() };
    }
    let part = TokenPrice { input: price.input - base_price.input, output: price.output - base_price.output };
    Quote { price, fee: TokenPrice::default(), cost: price, energy: part, stale: false, cache: None }
}

// ---------------------------------------------------------------- engine

/// Which feed rows came from (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Replay,
    Poll,
    Push,
}

impl Feed {
    /// Every feed, for metrics.
    pub const ALL: [Feed; 3] = [Feed::Replay, Feed::Poll, Feed::Push];

    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            Feed::Replay => "replay",
            Feed::Poll => "poll",
            Feed::Push => "push",
        }
    }
}

/// What became of a batch of feed rows.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IngestReport {
    pub accepted: usize,
    pub unchanged: usize,
    pub rejected: Vec<RejectedRow>,
}

/// A rejected row as reported to the push API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedRow {
    pub row: usize,
    pub kind: &'static str,
    pub message: String,
}

/// Owns the energy price table and the price book, both behind `ArcSwap`. Feeds call
/// [`Pricing::ingest`]; a periodic [`Pricing::refresh`] applies the stale rule as time passes.
/// Writers are serialised by a mutex that the request path never touches.
pub struct Pricing {
    /// The catalog priced, with the row rules and history ids derived from it; replaced whole
    /// by [`Pricing::set_catalog`] on a config reload.
    scope: ArcSwap<Scope>,
    /// Sanity range of accepted rows, $/MWh.
    range: (f64, f64),
    fallback: f64,
    clock: Arc<dyn Clock>,
    table: ArcSwap<EnergyTable>,
    /// Day-ahead prices (rows of market `DA`), kept apart from the real-time table.
    day_ahead: ArcSwap<DayAheadTable>,
    book: ArcSwap<PriceBook>,
    history: History,
    metrics: Option<Metrics>,
    push: Option<PushSettings>,
    writer: Mutex<()>,
}

/// What the engine derives from one catalog.
struct Scope {
    catalog: Catalog,
    rules: RowRules,
    /// Deployment ids `[model][deployment]`, shared by every history frame.
    ids: Vec<Vec<Arc<str>>>,
}

impl Scope {
    fn new(catalog: &Catalog, (min_usd_per_mwh, max_usd_per_mwh): (f64, f64)) -> Self {
        let known_nodes: HashSet<String> = catalog.data_centers.iter().filter_map(|dc| dc.price_node.clone()).collect();
        let ids = catalog.models.iter().map(|m| m.deployments.iter().map(|d| Arc::from(d.id.as_str())).collect()).collect();
        Scope { catalog: catalog.clone(), rules: RowRules { min_usd_per_mwh, max_usd_per_mwh, known_nodes }, ids }
    }
}

impl std::fmt::Debug for Pricing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pricing").field("at", &self.book.load().at).finish_non_exhaustive()
    }
}

impl Pricing {
    /// An engine for `catalog` with an empty table (every priced site at the fallback until
    /// a feed delivers).
    pub fn new(
        catalog: &Catalog,
        settings: &EnergySettings,
        clock: Arc<dyn Clock>,
        history: History,
        metrics: Option<Metrics>,
    ) -> Arc<Self> {
        let range = (settings.min_usd_per_mwh, settings.max_usd_per_mwh);
        let now = clock.now();
        let fallback = settings.stale_fallback_usd_per_mwh;
        let book = PriceBook::build(catalog, &EnergyTable::default(), fallback, now);
        let p = Arc::new(Pricing {
            scope: ArcSwap::from_pointee(Scope::new(catalog, range)),
            range,
            fallback,
            clock,
            table: ArcSwap::from_pointee(EnergyTable::default()),
            day_ahead: ArcSwap::from_pointee(DayAheadTable::default()),
            book: ArcSwap::from_pointee(book),
            history,
            metrics,
            push: settings.push.clone(),
            writer: Mutex::new(()),
        });
        if let Some(m) = &p.metrics {
            for f in Feed::ALL {
                for k in RejectKind::ALL.iter().map(|k| k.label()).chain(["fetch"]) {
                    m.energy_feed_errors.with_label_values(&[f.label(), k]);
                }
                m.energy_rows.with_label_values(&[f.label()]);
            }
        }
        p.observe(&p.book.load(), now);
        p
    }

    /// An engine without feeds or persistence, on the system clock (tests, tools).
    pub fn unfed(catalog: &Catalog) -> Arc<Self> {
        let s = EnergySettings::default();
        Self::new(catalog, &s, Arc::new(clock::SystemClock), History::in_memory(s.history.retention_days), None)
    }

    /// The current price book (one atomic load).
    pub fn book(&self) -> Arc<PriceBook> {
        self.book.load_full()
    }

    /// The current energy price table.
    pub fn table(&self) -> Arc<EnergyTable> {
        self.table.load_full()
    }

    /// The day-ahead prices held (every node).
    pub fn day_ahead_table(&self) -> Arc<DayAheadTable> {
        self.day_ahead.load_full()
    }

    /// A node's day-ahead intervals (start ascending): the coming day or two, and up to a day
    /// of the past (see [`day_ahead`]). Empty when the feeds carry no day-ahead rows.
    pub fn day_ahead(&self, node: &str) -> Vec<EnergyPrice> {
        self.day_ahead.load().get(node).to_vec()
    }

    /// The clock staleness and history use.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// Price history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The push API settings, when push is enabled.
    pub fn push_settings(&self) -> Option<&PushSettings> {
        self.push.as_ref()
    }

    /// The catalog the book is computed for.
    pub fn catalog(&self) -> Catalog {
        self.scope.load().catalog.clone()
    }

    /// Prices `catalog` from now on (a config reload): rows for price nodes it no longer uses
    /// are refused, and the book is rebuilt at once from the current table. Books built for
    /// the previous catalog answer only base quotes for it ([`PriceBook::quotes_of`]).
    pub fn set_catalog(&self, catalog: &Catalog) {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let scope = Arc::new(Scope::new(catalog, self.range));
        let now = self.clock.now();
        let book = PriceBook::build(&scope.catalog, &self.table.load(), self.fallback, now);
        self.scope.store(scope);
        if let Some(m) = &self.metrics {
            // Gauges of deployments and data centers the new catalog no longer has go away.
            for g in [&m.token_price, &m.energy_price, &m.energy_price_age] {
                g.reset();
            }
            m.energy_price_stale.reset();
        }
        self.observe(&book, now);
        self.history.record(self.frame(&book, now));
        self.book.store(Arc::new(book));
    }

    /// Applies a batch of feed rows: rejected rows are counted and logged, accepted ones
    /// replace the table and rebuild the book; each distinct interval start also becomes a
    /// history frame (so a backlog fills history as it happened). Day-ahead rows go to the
    /// day-ahead table instead (no book, no history).
    pub fn ingest(&self, feed: Feed, rows: Vec<ParsedRow>) -> IngestReport {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        let scope = self.scope.load_full();
        let (rows, ahead): (Vec<ParsedRow>, Vec<ParsedRow>) =
            rows.into_iter().partition(|(_, r)| !matches!(r, Ok(r) if r.market == Market::DayAhead));
        let ahead = self.day_ahead.load().apply(ahead.into_iter().filter_map(|(p, r)| r.ok().map(|r| (p, r))).collect(), &scope.rules, now);
        if let Some(t) = ahead.table {
            self.day_ahead.store(Arc::new(t));
        }
        let old = self.table.load_full();
        let mut applied = old.apply(rows, &scope.rules, now);
        applied.rejected.extend(ahead.rejected);
        applied.rejected.sort_by_key(|r| r.row);
        let accepted = applied.accepted.len() + ahead.accepted;
        self.report_rejections(feed, &applied.rejected, accepted);
        if let Some(m) = &self.metrics {
            m.energy_rows.with_label_values(&[feed.label()]).inc_by(accepted as u64);
        }
        if let Some(table) = applied.table {
            let mut accepted = applied.accepted.clone();
            accepted.sort_by_key(|r| r.price.interval_start);
            let mut t = (*old).clone();
            let mut i = 0;
            let mut last = None;
            while i < accepted.len() {
                let start = accepted[i].price.interval_start;
                let j = i + accepted[i..].iter().take_while(|r| r.price.interval_start == start).count();
                t = t.with(&accepted[i..j]);
                let at = start.min(now);
                let book = PriceBook::build(&scope.catalog, &t, self.fallback, at);
                self.history.record(self.frame(&book, at));
                last = Some(book);
                i = j;
            }
            let book = PriceBook::build(&scope.catalog, &table, self.fallback, now);
            // Judged at `now`, a price may already be stale that was fresh at its start.
            if last.is_some_and(|l| !l.same_prices(&book)) {
                self.history.record(self.frame(&book, now));
            }
            self.table.store(Arc::new(table));
            self.observe(&book, now);
            self.book.store(Arc::new(book));
        }
        IngestReport {
            accepted,
            unchanged: applied.unchanged + ahead.unchanged,
            rejected: applied
                .rejected
                .into_iter()
                .map(|r| RejectedRow { row: r.row, kind: r.kind.label(), message: r.message })
                .collect(),
        }
    }

    /// Re-applies the stale rule at the current time; swaps the book (and records a history
    /// frame) only if a price changed. Returns whether it did.
    pub fn refresh(&self) -> bool {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        let scope = self.scope.load();
        let book = PriceBook::build(&scope.catalog, &self.table.load(), self.fallback, now);
        self.observe(&book, now);
        if book.same_prices(&self.book.load()) {
            return false;
        }
        for (i, dc) in scope.catalog.data_centers.iter().enumerate() {
            if let (Some(new), Some(old)) = (book.site(&scope.catalog, i), self.book.load().site(&scope.catalog, i)) {
                if new.stale && !old.stale {
                    tracing::warn!(
                        data_center = %dc.id,
                        node = dc.price_node.as_deref().unwrap_or(""),
                        usd_per_mwh = new.usd_per_mwh,
                        "energy price is stale (older than 2 intervals): pricing at max(last, fallback)"
                    );
                }
            }
        }
        self.history.record(self.frame(&book, now));
        self.book.store(Arc::new(book));
        true
    }

    /// A rejection that happened outside row validation (e.g. a poll that failed).
    pub fn count_feed_error(&self, feed: Feed, kind: &'static str) {
        if let Some(m) = &self.metrics {
            m.energy_feed_errors.with_label_values(&[feed.label(), kind]).inc();
        }
    }

    fn frame(&self, book: &PriceBook, t: i64) -> Frame {
        let mut points = Vec::new();
        let scope = self.scope.load();
        for (mi, m) in scope.catalog.models.iter().enumerate() {
            for (di, d) in m.deployments.iter().enumerate() {
                let q = book.quote(&scope.catalog, m, di);
                let site = match &d.kind {
                    DeploymentKind::Hosted { data_center, .. } => book.site(&scope.catalog, *data_center).copied(),
                    DeploymentKind::Provider { .. } => None,
                };
                points.push(FramePoint {
                    deployment: scope.ids[mi][di].clone(),
                    input: q.price.input,
                    output: q.price.output,
                    usd_per_mwh: site.map(|s| s.usd_per_mwh),
                    stale: q.stale,
                });
            }
        }
        Frame { t, points }
    }

    fn report_rejections(&self, feed: Feed, rejected: &[Rejected], accepted: usize) {
        if rejected.is_empty() {
            return;
        }
        let mut counts = std::collections::BTreeMap::<RejectKind, usize>::new();
        for r in rejected {
            *counts.entry(r.kind).or_default() += 1;
            tracing::debug!(feed = feed.label(), row = r.row, kind = r.kind.label(), "energy feed row rejected: {}", r.message);
        }
        if let Some(m) = &self.metrics {
            for (k, n) in &counts {
                m.energy_feed_errors.with_label_values(&[feed.label(), k.label()]).inc_by(*n as u64);
            }
        }
        let kinds: Vec<String> = counts.iter().map(|(k, n)| format!("{}={n}", k.label())).collect();
        let first = &rejected[0];
        tracing::warn!(
            feed = feed.label(),
            accepted,
            rejected = rejected.len(),
            kinds = %kinds.join(" "),
            "energy feed rows rejected; first: row {}: {}",
            first.row,
            first.message
        );
    }

    fn observe(&self, book: &PriceBook, now: i64) {
        let Some(m) = &self.metrics else { return };
        let scope = self.scope.load();
        for (i, dc) in scope.catalog.data_centers.iter().enumerate() {
            let Some(site) = book.site(&scope.catalog, i) else { continue };
            m.energy_price_stale.with_label_values(&[&dc.id]).set(i64::from(site.stale));
            if let Some(h) = site.held {
                m.energy_price.with_label_values(&[&dc.id]).set(h.usd_per_mwh);
                m.energy_price_age.with_label_values(&[&dc.id]).set((now - h.interval_start) as f64);
            }
        }
        for model in &scope.catalog.models {
            for (di, d) in model.deployments.iter().enumerate() {
                let q = book.quote(&scope.catalog, model, di);
                m.token_price.with_label_values(&[&d.id, "input"]).set(q.price.input);
                m.token_price.with_label_values(&[&d.id, "output"]).set(q.price.output);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
