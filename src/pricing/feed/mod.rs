//! Energy price feeds: the row formats (the CSV of `shared/data/energy/` and the same columns
//! as JSON) and the three ways rows arrive — file [`replay`], HTTP [`poll`]ing and the admin
//! [`push`] API (served by the admin listener). Every feed hands parsed rows to [`crate::pricing::Pricing::ingest`], which
//! validates them (see `crate::pricing::energy`) and never lets a bad feed empty the table.
//!
//! Columns: `location,iso,market,interval_start,interval_minutes,usd_per_mwh` (`market`
//! optional; the price node is `iso/location`). JSON: an array of such objects, or
//! `{"rows": [...]}`; an object may give `node: "ISO/location"` instead of `iso` and
//! `location`, and `usd_per_mwh` as a number or a numeric string. `market` `DA` (or `DAM`)
//! marks a day-ahead price, kept as a forecast; `RT`, none or any other value a real-time one
//! ([`crate::pricing::energy::Market`]).

pub mod poll;
pub mod push;
pub mod replay;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::clock::{parse_rfc3339, Clock, SystemClock};
use super::energy::{EnergyPrice, EnergyRow, Market, ParsedRow, RejectKind, Rejected};
use super::history::{History, HistoryError, HistoryStore};
use super::{EnergySettings, PollSettings, Pricing};
use crate::catalog::Catalog;
use crate::metrics::Metrics;

/// Why the energy side could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("energy poll client: {0}")]
    Client(String),
}

/// The configured feeds, ready to run next to a pricing engine.
#[derive(Debug)]
pub struct Feeds {
    replay: Option<replay::Replay>,
    polls: Vec<PollSettings>,
    client: Option<reqwest::Client>,
    /// Real time between staleness checks.
    refresh: Duration,
}

/// Builds the pricing engine and its feeds from settings. With a replay, the engine runs on
/// the replay's clock (trace time); otherwise on the system clock. History persists through
/// `durable` (the gateway's database) when given — `data_dir` is then ignored, with a warning —
/// else in `data_dir` when set, else in memory only.
///
/// # Errors
/// See [`StartError`].
pub fn build(
    settings: &EnergySettings,
    catalog: &Catalog,
    metrics: Option<Metrics>,
    durable: Option<Box<dyn HistoryStore>>,
) -> Result<(Arc<Pricing>, Feeds), StartError> {
    let nodes = catalog.data_centers.iter().filter_map(|dc| dc.price_node.clone()).collect();
    let replay = settings.replay.as_ref().map(|r| replay::Replay::new(r, &nodes)).transpose()?;
    let (clock, refresh): (Arc<dyn Clock>, Duration) = match (&replay, &settings.replay) {
        (Some(r), Some(s)) => {
            // Check staleness as often in trace time as without a replay, but at most 10×/s.
            let real = settings.refresh.as_secs_f64() / s.speed;
            (Arc::new(r.clock()), Duration::from_secs_f64(real.min(settings.refresh.as_secs_f64()).max(0.1)))
        }
        _ => (Arc::new(SystemClock), settings.refresh),
    };
    let days = settings.history.retention_days;
    let history = match (durable, &settings.history.data_dir) {
        (Some(store), dir) => {
            if let Some(dir) = dir {
                tracing::warn!(data_dir = %dir.display(), "energy.data_dir is ignored: price history is kept in the store");
            }
            History::with_store(store, days, clock.now())?
        }
        (None, Some(dir)) => History::open(dir, days, clock.now())?,
        (None, None) => History::in_memory(days),
    };
    let client = if settings.polls.is_empty() { None } else { Some(poll::client().map_err(|e| StartError::Client(e.to_string()))?) };
    let pricing = Pricing::new(catalog, settings, clock, history, metrics);
    Ok((pricing, Feeds { replay, polls: settings.polls.clone(), client, refresh }))
}

async fn changed(mut rx: watch::Receiver<bool>) {
    // A closed channel means the server is gone: stop as well.
    let _ = rx.changed().await;
}

impl Feeds {
    /// Runs every feed and the staleness check until `shutdown` changes.
    pub async fn run(self, pricing: Arc<Pricing>, shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(r) = self.replay {
            tasks.spawn(r.run(pricing.clone(), changed(shutdown.clone())));
        }
        if let Some(client) = self.client {
            for p in self.polls {
                tasks.spawn(poll::run(p, client.clone(), pricing.clone(), changed(shutdown.clone())));
            }
        }
        let refresh = self.refresh;
        let p = pricing.clone();
        let stop = changed(shutdown.clone());
        tasks.spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tick.tick() => { p.refresh(); }
                }
            }
        });
        while tasks.join_next().await.is_some() {}
        pricing.history().flush();
    }
}

/// A feed document that could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DocumentError(pub String);

fn malformed(row: usize, message: String) -> Rejected {
    Rejected { kind: RejectKind::Malformed, row, message }
}

/// A row's text fields, as a CSV line or a JSON object gives them.
struct RowText<'a> {
    iso: &'a str,
    location: &'a str,
    market: Option<&'a str>,
    start: &'a str,
    minutes: &'a str,
    price: &'a str,
}

fn build_row(pos: usize, f: RowText<'_>) -> Result<EnergyRow, Rejected> {
    let RowText { iso, location, market, start, minutes, price } = f;
    let (iso, location) = (iso.trim(), location.trim());
    if iso.is_empty() || location.is_empty() {
        return Err(malformed(pos, "empty iso or location".into()));
    }
    let interval_start = parse_rfc3339(start).ok_or_else(|| malformed(pos, format!("interval_start `{start}` is not an RFC 3339 time")))?;
    let interval_minutes = minutes
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|m| (1..=1440).contains(m))
        .ok_or_else(|| malformed(pos, format!("interval_minutes `{minutes}` is not a whole number of minutes in 1..1440")))?;
    // `NaN` and `inf` parse, and are rejected as non-finite by validation.
    let usd_per_mwh = price.trim().parse::<f64>().map_err(|_| malformed(pos, format!("usd_per_mwh `{price}` is not a number")))?;
    let market = market.map_or(Market::RealTime, Market::parse);
    Ok(EnergyRow { node: format!("{iso}/{location}"), price: EnergyPrice { usd_per_mwh, interval_start, interval_minutes }, market })
}

/// Parses a CSV document with a header row. Row positions are line numbers.
///
/// # Errors
/// No header, or a header without the required columns.
pub fn parse_csv(text: &str) -> Result<Vec<ParsedRow>, DocumentError> {
    let mut r = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = r.headers().map_err(|e| DocumentError(format!("CSV header: {e}")))?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let market = col("market");
    let (Some(loc), Some(iso), Some(start), Some(min), Some(price)) =
        (col("location"), col("iso"), col("interval_start"), col("interval_minutes"), col("usd_per_mwh"))
    else {
        return Err(DocumentError(
            "CSV header must name location, iso, interval_start, interval_minutes, usd_per_mwh".into(),
        ));
    };
    let mut rows = Vec::new();
    for rec in r.records() {
        let (pos, parsed) = match rec {
            Err(e) => {
                let pos = e.position().map_or(0, |p| p.line() as usize);
                (pos, Err(malformed(pos, format!("unreadable CSV line: {e}"))))
            }
            Ok(rec) => {
                let pos = rec.position().map_or(0, |p| p.line() as usize);
                let f = |i: usize| rec.get(i);
                match (f(loc), f(iso), f(start), f(min), f(price)) {
                    (Some(location), Some(iso), Some(start), Some(minutes), Some(price)) => {
                        let market = market.and_then(|c| rec.get(c));
                        (pos, build_row(pos, RowText { iso, location, market, start, minutes, price }))
                    }
                    _ => (pos, Err(malformed(pos, format!("expected {} columns, got {}", headers.len(), rec.len())))),
                }
            }
        };
        rows.push((pos, parsed));
    }
    Ok(rows)
}

fn json_row(pos: usize, v: &Value) -> Result<EnergyRow, Rejected> {
    let Some(o) = v.as_object() else {
        return Err(malformed(pos, "a row must be a JSON object".into()));
    };
    let s = |k: &str| o.get(k).and_then(Value::as_str);
    let (iso, location) = match (s("node").and_then(|n| n.split_once('/')), s("iso"), s("location")) {
        (Some((i, l)), _, _) => (i, l),
        (None, Some(i), Some(l)) => (i, l),
        _ => return Err(malformed(pos, "missing iso and location (or node)".into())),
    };
    let start = s("interval_start").ok_or_else(|| malformed(pos, "missing interval_start".into()))?;
    let minutes = match o.get("interval_minutes") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(x)) => x.clone(),
        _ => return Err(malformed(pos, "missing interval_minutes".into())),
    };
    let price = match o.get("usd_per_mwh") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(x)) => x.clone(),
        _ => return Err(malformed(pos, "missing usd_per_mwh".into())),
    };
    build_row(pos, RowText { iso, location, market: s("market"), start, minutes: &minutes, price: &price })
}

/// Parses a JSON document: an array of rows or `{"rows": [...]}`. Row positions count from 1.
///
/// # Errors
/// Not JSON, or neither shape.
pub fn parse_json(body: &[u8]) -> Result<Vec<ParsedRow>, DocumentError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| DocumentError(format!("not JSON: {e}")))?;
    let rows = match &v {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("rows") {
            Some(Value::Array(a)) => a,
            _ => return Err(DocumentError("expected an array of rows or {\"rows\": [...]}".into())),
        },
        _ => return Err(DocumentError("expected an array of rows or {\"rows\": [...]}".into())),
    };
    Ok(rows.iter().enumerate().map(|(i, r)| (i + 1, json_row(i + 1, r))).collect())
}

/// Parses a body as JSON when it looks like JSON (first non-blank byte `[` or `{`), else CSV.
///
/// # Errors
/// As [`parse_json`] / [`parse_csv`].
pub fn parse_any(body: &[u8]) -> Result<Vec<ParsedRow>, DocumentError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[' | b'{') => parse_json(body),
        _ => parse_csv(std::str::from_utf8(body).map_err(|_| DocumentError("CSV is not UTF-8".into()))?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(rows: &[ParsedRow]) -> Vec<(usize, Option<RejectKind>)> {
        rows.iter().map(|(p, r)| (*p, r.as_ref().err().map(|e| e.kind))).collect()
    }

    #[test]
    fn csv_rows_and_a_corpus_of_bad_ones() {
        let text = "location,iso,market,interval_start,interval_minutes,usd_per_mwh
SP-15,CAISO,RT,2023-07-02T00:00:00Z,15,33.86234
Chicago Hub,PJM,RT,2023-07-02T00:05:00Z,5,-12.5
SP-15,CAISO,RT,2023-07-02T00:15:00Z,15,NaN
SP-15,CAISO,RT,2023-07-02T00:15:00Z,15,inf
SP-15,CAISO,RT,yesterday,15,30
SP-15,CAISO,RT,2023-07-02T00:15:00Z,0,30
SP-15,CAISO,RT,2023-07-02T00:15:00Z,15,thirty
SP-15,CAISO,RT,2023-07-02T00:15:00Z
,CAISO,RT,2023-07-02T00:15:00Z,15,30
\"Quoted, Hub\",PJM,RT,2023-07-02T00:05:00Z,5,\"1,5\"
";
        let rows = parse_csv(text).unwrap();
        let ok = rows[0].1.as_ref().unwrap();
        assert_eq!(ok.node, "CAISO/SP-15");
        assert_eq!(ok.price, EnergyPrice { usd_per_mwh: 33.86234, interval_start: 1_688_256_000, interval_minutes: 15 });
        assert_eq!(rows[1].1.as_ref().unwrap().price.usd_per_mwh, -12.5);
        assert!(rows[2].1.as_ref().unwrap().price.usd_per_mwh.is_nan(), "NaN parses; validation rejects it");
        assert!(rows[3].1.as_ref().unwrap().price.usd_per_mwh.is_infinite());
        let m = Some(RejectKind::Malformed);
        assert_eq!(kinds(&rows[4..]), vec![(6, m), (7, m), (8, m), (9, m), (10, m), (11, m)]);
        assert!(rows[5].1.as_ref().unwrap_err().message.contains("interval_minutes"));
        assert!(parse_csv("a,b,c\n1,2,3\n").is_err());
        assert!(parse_csv("").is_err());
    }

    #[test]
    fn the_market_column_and_field() {
        let csv = "location,iso,market,interval_start,interval_minutes,usd_per_mwh
SP-15,CAISO,DA,2023-07-02T00:00:00Z,60,30
SP-15,CAISO,dam,2023-07-02T00:00:00Z,60,30
SP-15,CAISO,RT,2023-07-02T00:00:00Z,15,31
SP-15,CAISO,,2023-07-02T00:00:00Z,15,31
SP-15,CAISO,HASP,2023-07-02T00:00:00Z,15,31
";
        let markets: Vec<Market> = parse_csv(csv).unwrap().into_iter().map(|(_, r)| r.unwrap().market).collect();
        use Market::{DayAhead as Da, RealTime as Rt};
        assert_eq!(markets, vec![Da, Da, Rt, Rt, Rt]);
        let no_column = "location,iso,interval_start,interval_minutes,usd_per_mwh\nSP-15,CAISO,2023-07-02T00:00:00Z,15,1\n";
        assert_eq!(parse_csv(no_column).unwrap()[0].1.as_ref().unwrap().market, Rt);
        let json = br#"[{"node":"CAISO/SP-15","market":"DA","interval_start":"2023-07-02T00:00:00Z","interval_minutes":60,"usd_per_mwh":30},
                       {"node":"CAISO/SP-15","market":"RT","interval_start":"2023-07-02T00:00:00Z","interval_minutes":15,"usd_per_mwh":30},
                       {"node":"CAISO/SP-15","interval_start":"2023-07-02T00:00:00Z","interval_minutes":15,"usd_per_mwh":30}]"#;
        let markets: Vec<Market> = parse_json(json).unwrap().into_iter().map(|(_, r)| r.unwrap().market).collect();
        assert_eq!(markets, vec![Da, Rt, Rt]);
    }

    #[test]
    fn json_shapes() {
        let body = br#"{"rows":[
            {"location":"SP-15","iso":"CAISO","market":"RT","interval_start":"2023-07-02T00:00:00Z","interval_minutes":15,"usd_per_mwh":33.5},
            {"node":"PJM/Chicago Hub","interval_start":"2023-07-02T00:05:00Z","interval_minutes":5,"usd_per_mwh":"NaN"},
            {"iso":"CAISO","interval_start":"2023-07-02T00:00:00Z","interval_minutes":15,"usd_per_mwh":1},
            {"location":"SP-15","iso":"CAISO","interval_start":"2023-07-02T00:00:00Z","interval_minutes":15.5,"usd_per_mwh":1},
            {"location":"SP-15","iso":"CAISO","interval_start":"2023-07-02T00:00:00Z","interval_minutes":15,"usd_per_mwh":true},
            7
        ]}"#;
        let rows = parse_json(body).unwrap();
        assert_eq!(rows[0].1.as_ref().unwrap().node, "CAISO/SP-15");
        assert_eq!(rows[1].1.as_ref().unwrap().node, "PJM/Chicago Hub");
        assert!(rows[1].1.as_ref().unwrap().price.usd_per_mwh.is_nan());
        let m = Some(RejectKind::Malformed);
        assert_eq!(kinds(&rows[2..]), vec![(3, m), (4, m), (5, m), (6, m)]);
        assert_eq!(rows[0].1.as_ref().unwrap().market, Market::RealTime);
        assert_eq!(parse_json(b"[]").unwrap().len(), 0);
        assert!(parse_json(b"{\"prices\":[]}").is_err());
        assert!(parse_json(b"{nope").is_err());
        assert_eq!(parse_any(b"  [ ]").unwrap().len(), 0);
        assert_eq!(parse_any(b"location,iso,interval_start,interval_minutes,usd_per_mwh\nSP-15,CAISO,2023-07-02T00:00:00Z,15,1\n").unwrap().len(), 1);
    }
}
