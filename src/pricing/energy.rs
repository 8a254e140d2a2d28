//! The energy price table: the latest accepted $/MWh per price node (`ISO/location`),
//! immutable and replaced whole on every update, and the rules that decide which feed rows get
//! into it and when a price is stale.
//!
//! **Row rules.** A row is rejected, counted by kind and logged (never applied) when it is
//! malformed (missing field, bad number or time, interval not 1–1440 minutes), not finite,
//! outside the configured sanity range, for a location no data center uses, more than one
//! interval in the future, a second row for the same location and interval (in one batch,
//! or conflicting with the price already held), or older than the price already held for its
//! location (out of order). Rows are checked in arrival order. A row identical to the one held
//! is ignored silently (pollers re-read the latest price). Rejected rows never remove anything:
//! a bad feed never empties the table.
//!
//! **Stale rule.** A price is stale once it is older than two of its own intervals:
//! `now - interval_start > 2 × interval_minutes`. A 5-minute price is fresh for 10 minutes
//! after its interval began, a 60-minute price for 2 hours. A stale price is not trusted to be
//! low: the token price is computed from `max(last price, stale_fallback_usd_per_mwh)`
//! (default 150 $/MWh, above the 95th percentile of every US market in the bundled trace), so
//! an operator is never short-changed by a dead feed and routing drifts away from sites it
//! cannot see. A data center whose node has no price yet is priced at the fallback too. The
//! flag is shown in `/v1/models` and in the `joule_energy_price_stale` metric.
//!
//! **Markets.** Only real-time rows enter this table. Day-ahead rows (market `DA`) are prices
//! cleared in advance, not the price in force: they are kept apart as forecasts
//! (`crate::pricing::day_ahead`) and skipped here.

use std::collections::{HashMap, HashSet};

/// One price: $/MWh for an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnergyPrice {
    /// $/MWh, may be negative.
    pub usd_per_mwh: f64,
    /// Interval start, Unix seconds.
    pub interval_start: i64,
    /// Interval length in minutes (1–1440).
    pub interval_minutes: u32,
}

impl EnergyPrice {
    /// Whether the price is stale at `now` (see the module docs).
    pub fn is_stale(&self, now: i64) -> bool {
        now - self.interval_start > 2 * 60 * i64::from(self.interval_minutes)
    }
}

/// The market a feed row's price comes from (its `market` column or field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Market {
    /// Real-time: the price in force for its interval. `RT`, and also any other value or none
    /// (feeds that predate the column, or name their real-time market otherwise, e.g. `RTM`,
    /// `RT5`, keep working as before).
    #[default]
    RealTime,
    /// Day-ahead (`DA` or `DAM`, any case): cleared the day before, kept as a forecast and never
    /// entered into the real-time table.
    DayAhead,
}

impl Market {
    /// The market a `market` value names (see the variants).
    pub fn parse(s: &str) -> Market {
        let s = s.trim();
        if s.eq_ignore_ascii_case("DA") || s.eq_ignore_ascii_case("DAM") {
            Market::DayAhead
        } else {
            Market::RealTime
        }
    }
}

/// A feed row after parsing.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyRow {
    /// `ISO/location`, e.g. `CAISO/SP-15`.
    pub node: String,
    pub price: EnergyPrice,
    pub market: Market,
}

impl EnergyRow {
    /// A real-time row.
    pub fn real_time(node: impl Into<String>, price: EnergyPrice) -> EnergyRow {
        EnergyRow { node: node.into(), price, market: Market::RealTime }
    }

    /// When a replay hands the row to the engine: a real-time price when its interval starts,
    /// a day-ahead price when the day-ahead market publishes it
    /// ([`crate::pricing::day_ahead::release`]).
    pub fn due(&self) -> i64 {
        match self.market {
            Market::RealTime => self.price.interval_start,
            Market::DayAhead => crate::pricing::day_ahead::release(self.price.interval_start),
        }
    }
}

/// Why a row was rejected; the metric label of `joule_energy_feed_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    Malformed,
    NonFinite,
    OutOfRange,
    UnknownLocation,
    Future,
    Duplicate,
    OutOfOrder,
}

impl RejectKind {
    /// Every kind, for metrics.
    pub const ALL: [RejectKind; 7] = [
        RejectKind::Malformed,
        RejectKind::NonFinite,
        RejectKind::OutOfRange,
        RejectKind::UnknownLocation,
        RejectKind::Future,
        RejectKind::Duplicate,
        RejectKind::OutOfOrder,
    ];

    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            RejectKind::Malformed => "malformed",
            RejectKind::NonFinite => "non_finite",
            RejectKind::OutOfRange => "out_of_range",
            RejectKind::UnknownLocation => "unknown_location",
            RejectKind::Future => "future",
            RejectKind::Duplicate => "duplicate",
            RejectKind::OutOfOrder => "out_of_order",
        }
    }
}

/// A rejected row: its position in the feed input (CSV line number or JSON array index + 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub kind: RejectKind,
    pub row: usize,
    pub message: String,
}

/// A parsed row or why it could not be parsed, with its position in the input.
pub type ParsedRow = (usize, Result<EnergyRow, Rejected>);

/// What row validation checks against.
#[derive(Debug, Clone)]
pub struct RowRules {
    /// Sanity range, $/MWh (inclusive).
    pub min_usd_per_mwh: f64,
    pub max_usd_per_mwh: f64,
    /// Price nodes some data center uses.
    pub known_nodes: HashSet<String>,
}

/// The outcome of applying a batch of rows.
#[derive(Debug, Default)]
pub struct Applied {
    /// The new table, if any row was accepted.
    pub table: Option<EnergyTable>,
    /// Accepted rows in arrival order.
    pub accepted: Vec<EnergyRow>,
    pub rejected: Vec<Rejected>,
    /// Rows identical to the price already held (ignored, not errors).
    pub unchanged: usize,
}

/// The latest accepted price per price node. Immutable: updates build a new table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnergyTable {
    prices: HashMap<String, EnergyPrice>,
}

impl EnergyTable {
    /// The price held for a node.
    pub fn get(&self, node: &str) -> Option<&EnergyPrice> {
        self.prices.get(node)
    }

    /// Number of nodes priced.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// No node priced yet.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// This table with `rows` (already validated) applied in order.
    pub(crate) fn with(&self, rows: &[EnergyRow]) -> EnergyTable {
        let mut t = self.clone();
        for r in rows {
            t.prices.insert(r.node.clone(), r.price);
        }
        t
    }

    /// Checks `rows` (in arrival order) against the rules and this table at time `now`, and
    /// builds the table that holds the accepted ones. Never removes a node.
    pub fn apply(&self, rows: Vec<ParsedRow>, rules: &RowRules, now: i64) -> Applied {
        let mut out = Applied::default();
        // Latest start per node accepted in this batch, to find duplicates and disorder.
        let mut batch: HashMap<String, (i64, f64)> = HashMap::new();
        for (pos, parsed) in rows {
            let row = match parsed {
                Ok(r) => r,
                Err(e) => {
                    out.rejected.push(e);
                    continue;
                }
            };
            if row.market == Market::DayAhead {
                // Not a real-time price (`Pricing::ingest` keeps it in the day-ahead table).
                continue;
            }
            let reject = |kind, message: String| Rejected { kind, row: pos, message };
            let p = row.price;
            if let Err(e) = check_value(&row, rules, pos) {
                out.rejected.push(e);
                continue;
            }
            let interval_s = 60 * i64::from(p.interval_minutes);
            if p.interval_start > now + interval_s.max(300) {
                out.rejected.push(reject(
                    RejectKind::Future,
                    format!("{}: interval {} lies in the future", row.node, crate::clock::format_rfc3339(p.interval_start)),
                ));
                continue;
            }
            let v = p.usd_per_mwh;
            let held = batch.get(&row.node).copied().map(|(t, v)| (t, v, true)).or_else(|| {
                self.prices.get(&row.node).map(|h| (h.interval_start, h.usd_per_mwh, false))
            });
            if let Some((t, held_v, in_batch)) = held {
                if p.interval_start < t {
                    out.rejected.push(reject(
                        RejectKind::OutOfOrder,
                        format!(
                            "{}: interval {} is older than {} already held",
                            row.node,
                            crate::clock::format_rfc3339(p.interval_start),
                            crate::clock::format_rfc3339(t)
                        ),
                    ));
                    continue;
                }
                if p.interval_start == t {
                    if !in_batch && held_v == v {
                        out.unchanged += 1;
                    } else {
                        out.rejected.push(reject(
                            RejectKind::Duplicate,
                            format!("{}: a price for interval {} is already held", row.node, crate::clock::format_rfc3339(t)),
                        ));
                    }
                    continue;
                }
            }
            batch.insert(row.node.clone(), (p.interval_start, v));
            out.accepted.push(row);
        }
        if !out.accepted.is_empty() {
            let mut prices = self.prices.clone();
            for r in &out.accepted {
                prices.insert(r.node.clone(), r.price);
            }
            out.table = Some(EnergyTable { prices });
        }
        out
    }
}

/// The checks every row gets, whatever its market: a finite price in the sanity range, for a
/// node some data center uses.
pub(crate) fn check_value(row: &EnergyRow, rules: &RowRules, pos: usize) -> Result<(), Rejected> {
    let reject = |kind, message: String| Rejected { kind, row: pos, message };
    let v = row.price.usd_per_mwh;
    if !v.is_finite() {
        return Err(reject(RejectKind::NonFinite, format!("{}: price {v} is not finite", row.node)));
    }
    if v < rules.min_usd_per_mwh || v > rules.max_usd_per_mwh {
        return Err(reject(
            RejectKind::OutOfRange,
            format!("{}: {v} $/MWh is outside the sanity range {}..{}", row.node, rules.min_usd_per_mwh, rules.max_usd_per_mwh),
        ));
    }
    if !rules.known_nodes.contains(&row.node) {
        return Err(reject(
            RejectKind::UnknownLocation,
            format!("unknown location `{}` (no data center uses this price_node)", row.node),
        ));
    }
    Ok(())
}

/// The energy price a data center is priced at, at some time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiteEnergy {
    /// The price the token price uses: the held price, or the fallback rule when stale.
    pub usd_per_mwh: f64,
    /// The price held, if any.
    pub held: Option<EnergyPrice>,
    /// The stale rule applied (stale or no price yet).
    pub stale: bool,
}

/// Applies the stale rule (module docs) to the price held for a node.
pub fn site_energy(held: Option<&EnergyPrice>, now: i64, fallback_usd_per_mwh: f64) -> SiteEnergy {
    match held {
        None => SiteEnergy { usd_per_mwh: fallback_usd_per_mwh, held: None, stale: true },
        Some(p) if p.is_stale(now) => {
            SiteEnergy { usd_per_mwh: p.usd_per_mwh.max(fallback_usd_per_mwh), held: Some(*p), stale: true }
        }
        Some(p) => SiteEnergy { usd_per_mwh: p.usd_per_mwh, held: Some(*p), stale: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_688_256_000; // 2023-07-02T00:00:00Z

    fn rules() -> RowRules {
        RowRules {
            min_usd_per_mwh: -1000.0,
            max_usd_per_mwh: 10_000.0,
            known_nodes: ["CAISO/SP-15", "PJM/Chicago Hub"].iter().map(|s| s.to_string()).collect(),
        }
    }

    fn row(pos: usize, node: &str, start: i64, v: f64) -> ParsedRow {
        (pos, Ok(EnergyRow::real_time(node, EnergyPrice { usd_per_mwh: v, interval_start: start, interval_minutes: 5 })))
    }

    #[test]
    fn stale_after_two_intervals() {
        let p = EnergyPrice { usd_per_mwh: 40.0, interval_start: T0, interval_minutes: 5 };
        assert!(!p.is_stale(T0));
        assert!(!p.is_stale(T0 + 600), "exactly two intervals old is still fresh");
        assert!(p.is_stale(T0 + 601));
        let hourly = EnergyPrice { interval_minutes: 60, ..p };
        assert!(!hourly.is_stale(T0 + 7200) && hourly.is_stale(T0 + 7201));
    }

    #[test]
    fn stale_rule_uses_fallback_when_it_is_higher() {
        let cheap = EnergyPrice { usd_per_mwh: 20.0, interval_start: T0, interval_minutes: 5 };
        assert_eq!(site_energy(Some(&cheap), T0 + 60, 150.0), SiteEnergy { usd_per_mwh: 20.0, held: Some(cheap), stale: false });
        let s = site_energy(Some(&cheap), T0 + 3600, 150.0);
        assert_eq!((s.usd_per_mwh, s.stale), (150.0, true));
        // A stale spike stays at the spike: the rule never lowers a price.
        let spike = EnergyPrice { usd_per_mwh: 900.0, ..cheap };
        assert_eq!(site_energy(Some(&spike), T0 + 3600, 150.0).usd_per_mwh, 900.0);
        let none = site_energy(None, T0, 150.0);
        assert_eq!((none.usd_per_mwh, none.stale, none.held), (150.0, true, None));
    }

    #[test]
    fn bad_rows_are_rejected_by_kind_and_never_empty_the_table() {
        let base = EnergyTable::default().apply(vec![row(1, "CAISO/SP-15", T0, 30.0)], &rules(), T0);
        let table = base.table.unwrap();
        let malformed = (2, Err(Rejected { kind: RejectKind::Malformed, row: 2, message: "bad".into() }));
        let rows = vec![
            malformed,
            row(3, "CAISO/SP-15", T0 + 300, f64::NAN),
            row(4, "CAISO/SP-15", T0 + 300, f64::INFINITY),
            row(5, "CAISO/SP-15", T0 + 300, 20_000.0),
            row(6, "CAISO/SP-15", T0 + 300, -1500.0),
            row(7, "ERCOT/Nowhere", T0 + 300, 30.0),
            row(8, "CAISO/SP-15", T0 + 86_400, 30.0),
            row(9, "CAISO/SP-15", T0 - 300, 30.0),
            row(10, "CAISO/SP-15", T0, 31.0),
        ];
        let a = table.apply(rows, &rules(), T0 + 300);
        let kinds: Vec<_> = a.rejected.iter().map(|r| (r.row, r.kind)).collect();
        use RejectKind::*;
        assert_eq!(
            kinds,
            vec![(2, Malformed), (3, NonFinite), (4, NonFinite), (5, OutOfRange), (6, OutOfRange), (7, UnknownLocation), (8, Future), (9, OutOfOrder), (10, Duplicate)]
        );
        assert!(a.table.is_none() && a.accepted.is_empty());
        assert!(a.rejected[5].message.contains("ERCOT/Nowhere"), "{}", a.rejected[5].message);
        assert_eq!(table.get("CAISO/SP-15").unwrap().usd_per_mwh, 30.0, "old price kept");
    }

    #[test]
    fn batches_keep_the_latest_and_reject_in_batch_duplicates_and_disorder() {
        let rows = vec![
            row(1, "CAISO/SP-15", T0, 30.0),
            row(2, "PJM/Chicago Hub", T0, -5.0),
            row(3, "CAISO/SP-15", T0 + 300, 35.0),
            row(4, "CAISO/SP-15", T0 + 300, 36.0),
            row(5, "CAISO/SP-15", T0, 30.0),
        ];
        let a = EnergyTable::default().apply(rows, &rules(), T0 + 300);
        assert_eq!(a.accepted.len(), 3);
        let kinds: Vec<_> = a.rejected.iter().map(|r| (r.row, r.kind)).collect();
        assert_eq!(kinds, vec![(4, RejectKind::Duplicate), (5, RejectKind::OutOfOrder)]);
        let t = a.table.unwrap();
        assert_eq!(t.get("CAISO/SP-15").unwrap().usd_per_mwh, 35.0);
        assert_eq!(t.get("PJM/Chicago Hub").unwrap().usd_per_mwh, -5.0);
        // Re-reading the same latest price is not an error.
        let again = t.apply(vec![row(1, "CAISO/SP-15", T0 + 300, 35.0)], &rules(), T0 + 300);
        assert_eq!((again.unchanged, again.rejected.len(), again.table.is_none()), (1, 0, true));
    }
}
