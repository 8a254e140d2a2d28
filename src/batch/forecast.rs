//! Price forecasts per price node, for the batch planner: day-ahead prices where the feed
//! carries them, otherwise a forecast from the node's own recent history.

use serde::Serialize;

/// One price interval of a node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PricePoint {
    /// Interval start, pricing-clock unix seconds.
    pub start: i64,
    /// Interval length, minutes.
    pub minutes: u32,
    pub usd_per_mwh: f64,
}

/// How forecasts are made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForecastSettings {}

impl Default for ForecastSettings {
    fn default() -> Self {
        ForecastSettings {}
    }
}

/// The forecast of one node, made at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeForecast {
    last: Option<f64>,
}

impl NodeForecast {
    /// Builds the forecast at `now` from the node's real-time history (interval start
    /// ascending, only intervals that started by `now`) and its day-ahead prices.
    pub fn build(_settings: &ForecastSettings, history: &[PricePoint], _day_ahead: &[PricePoint], _now: i64) -> NodeForecast {
        NodeForecast { last: history.last().map(|p| p.usd_per_mwh) }
    }

    /// Expected $/MWh at `t` (≥ now); `None` without any price.
    pub fn at(&self, _t: i64) -> Option<f64> {
        self.last
    }
}
