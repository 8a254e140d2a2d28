//! Day-ahead prices: feed rows of market `DA` (see [`Market`]), kept per price node as a
//! forecast for the batch scheduler and never entered into the real-time table.
//!
//! **Rules.** A day-ahead row gets the value checks every row gets (finite, in the sanity
//! range, a node some data center uses). It is rejected as `future` when its interval starts
//! more than [`MAX_AHEAD_S`] (2 days) after now. A row for an interval already held replaces it
//! (a market may publish revisions; the last one wins); the same value again is counted as
//! unchanged, not an error. Intervals that ended more than [`KEEP_PAST_S`] (1 day) ago are
//! dropped on every update, so the table holds the coming day or two and a little past (the
//! past part lets a forecast compare the last real-time price with its day-ahead price).
//!
//! **Release.** Day-ahead markets clear around midday for the next day. A replayed trace hands
//! a day-ahead row to the engine at [`release`]: 12:00 UTC of the day before its interval's
//! UTC day (US markets publish between about 11:00 and 14:00 local, and a local day starts
//! 4–8 hours after the UTC one).

use std::collections::HashMap;

use super::energy::{check_value, EnergyPrice, EnergyRow, Market, RejectKind, Rejected, RowRules};

/// How far ahead a day-ahead interval may start, seconds (2 days).
pub const MAX_AHEAD_S: i64 = 2 * 86_400;
/// How long after its end a day-ahead interval is kept, seconds (1 day).
pub const KEEP_PAST_S: i64 = 86_400;

/// When the day-ahead price of the interval starting at `interval_start` becomes known:
/// 12:00 UTC of the previous UTC day.
pub fn release(interval_start: i64) -> i64 {
    interval_start.div_euclid(86_400) * 86_400 - 12 * 3600
}

/// Day-ahead prices per price node, interval start ascending. Immutable: updates build a new
/// table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayAheadTable {
    nodes: HashMap<String, Vec<EnergyPrice>>,
}

/// The outcome of applying day-ahead rows.
#[derive(Debug, Default)]
pub struct AppliedAhead {
    /// The new table, if anything changed (a row accepted or an interval pruned).
    pub table: Option<DayAheadTable>,
    pub accepted: usize,
    /// Rows equal to the price already held.
    pub unchanged: usize,
    pub rejected: Vec<Rejected>,
}

impl DayAheadTable {
    /// A node's day-ahead intervals, start ascending.
    pub fn get(&self, node: &str) -> &[EnergyPrice] {
        self.nodes.get(node).map_or(&[], Vec::as_slice)
    }

    /// Intervals held over all nodes.
    pub fn len(&self) -> usize {
        self.nodes.values().map(Vec::len).sum()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks day-ahead `rows` (position, row; in arrival order) at time `now` and builds the
    /// table that holds the accepted ones, pruned (module docs).
    pub fn apply(&self, rows: Vec<(usize, EnergyRow)>, rules: &RowRules, now: i64) -> AppliedAhead {
        let mut out = AppliedAhead::default();
        let mut nodes = self.nodes.clone();
        let mut changed = false;
        for (pos, row) in rows {
            debug_assert_eq!(row.market, Market::DayAhead);
            if let Err(e) = check_value(&row, rules, pos) {
                out.rejected.push(e);
                continue;
            }
            let p = row.price;
            if p.interval_start > now + MAX_AHEAD_S {
                out.rejected.push(Rejected {
                    kind: RejectKind::Future,
                    row: pos,
                    message: format!(
                        "{}: day-ahead interval {} lies more than 2 days ahead",
                        row.node,
                        crate::clock::format_rfc3339(p.interval_start)
                    ),
                });
                continue;
            }
            let held = nodes.entry(row.node).or_default();
            match held.binary_search_by_key(&p.interval_start, |h| h.interval_start) {
                Ok(i) if held[i] == p => out.unchanged += 1,
                Ok(i) => {
                    held[i] = p;
                    out.accepted += 1;
                    changed = true;
                }
                Err(i) => {
                    held.insert(i, p);
                    out.accepted += 1;
                    changed = true;
                }
            }
        }
        for held in nodes.values_mut() {
            let before = held.len();
            held.retain(|h| h.interval_start + 60 * i64::from(h.interval_minutes) + KEEP_PAST_S > now);
            changed |= held.len() != before;
        }
        nodes.retain(|_, v| !v.is_empty());
        if changed {
            out.table = Some(DayAheadTable { nodes });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_688_256_000; // 2023-07-02T00:00:00Z

    fn rules() -> RowRules {
        RowRules { min_usd_per_mwh: -1000.0, max_usd_per_mwh: 10_000.0, known_nodes: ["CAISO/SP-15".to_string()].into() }
    }

    fn da(pos: usize, node: &str, start: i64, v: f64) -> (usize, EnergyRow) {
        let price = EnergyPrice { usd_per_mwh: v, interval_start: start, interval_minutes: 60 };
        (pos, EnergyRow { node: node.into(), price, market: Market::DayAhead })
    }

    #[test]
    fn release_is_noon_utc_the_day_before() {
        assert_eq!(release(T0), T0 - 12 * 3600);
        assert_eq!(release(T0 + 23 * 3600), T0 - 12 * 3600);
        assert_eq!(release(T0 + 86_400), T0 + 12 * 3600);
    }

    #[test]
    fn rows_are_checked_sorted_revised_and_pruned() {
        let now = T0;
        let a = DayAheadTable::default().apply(
            vec![
                da(1, "CAISO/SP-15", T0 + 7200, 30.0),
                da(2, "CAISO/SP-15", T0 + 3600, 20.0),
                da(3, "ERCOT/Nowhere", T0, 1.0),
                da(4, "CAISO/SP-15", T0, f64::NAN),
                da(5, "CAISO/SP-15", T0 + 3 * 86_400, 1.0),
                da(6, "CAISO/SP-15", T0 - 3 * 86_400, 9.0),
            ],
            &rules(),
            now,
        );
        let kinds: Vec<_> = a.rejected.iter().map(|r| (r.row, r.kind)).collect();
        assert_eq!(kinds, vec![(3, RejectKind::UnknownLocation), (4, RejectKind::NonFinite), (5, RejectKind::Future)]);
        assert_eq!(a.accepted, 3, "the old row is valid, then pruned");
        let t = a.table.unwrap();
        let starts: Vec<i64> = t.get("CAISO/SP-15").iter().map(|p| p.interval_start).collect();
        assert_eq!(starts, vec![T0 + 3600, T0 + 7200]);
        // A revision replaces; the same value again is unchanged.
        let b = t.apply(vec![da(1, "CAISO/SP-15", T0 + 3600, 25.0), da(2, "CAISO/SP-15", T0 + 7200, 30.0)], &rules(), now);
        assert_eq!((b.accepted, b.unchanged), (1, 1));
        let t = b.table.unwrap();
        assert_eq!(t.get("CAISO/SP-15")[0].usd_per_mwh, 25.0);
        // Two days on, both intervals are more than a day old: pruned.
        let c = t.apply(Vec::new(), &rules(), T0 + 2 * 86_400 + 7200);
        assert!(c.table.unwrap().is_empty());
        assert!(t.apply(Vec::new(), &rules(), now).table.is_none(), "nothing changed");
    }
}
