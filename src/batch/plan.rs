//! The planner: places the remaining work of every batch into time slots and sites before its
//! deadline, cheapest first, and says what to run now. Pure and deterministic; the gateway's
//! scheduler calls it on every tick with fresh forecasts (a receding horizon: only slot 0 of a
//! plan is ever carried out, then the plan is made again), and the evaluation calls it on a
//! simulated clock.
//!
//! The rule, per tick:
//! 1. Batches are planned earliest deadline first, sharing one capacity grid (requests each
//!    site can run in each slot), so an urgent batch is never crowded out by a lax one.
//! 2. A batch may use the slots that end by its `latest` time (its deadline minus a safety
//!    margin the caller derives from measured throughput). If those slots can hold its work,
//!    it takes the cheapest cells among them (ties: the earlier slot, then the lower site).
//! 3. If they cannot, the batch is behind: it takes all of slot 0 that is left (cheapest site
//!    first) — it runs now whatever the price — and places the rest cheapest-first in the
//!    slots before its hard deadline.
//!
//! With capacity that never binds, step 2 is the exact optimum for each batch (every unit of
//! work goes to the cheapest cell it may use). With binding capacity, earliest-deadline-first
//! greedy is a heuristic; the evaluation's oracle solves the same grid exactly (min-cost flow)
//! to measure the gap.

/// The time slots and sites a plan is made over.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Start of slot 0 (now), pricing-clock seconds.
    pub start: i64,
    /// Slot length, seconds (> 0).
    pub slot: i64,
    pub slots: usize,
    pub sites: usize,
    /// Requests each site can run in each slot for batches, slot-major
    /// (`capacity[k * sites + s]`); `slots × sites` entries.
    pub capacity: Vec<f64>,
}

impl Grid {
    /// A grid with the same capacity per slot at each site.
    pub fn uniform(start: i64, slot: i64, slots: usize, per_site: &[f64]) -> Grid {
        let capacity = (0..slots).flat_map(|_| per_site.iter().copied()).collect();
        Grid { start, slot, slots, sites: per_site.len(), capacity }
    }

    /// Start of slot `k`.
    pub fn slot_start(&self, k: usize) -> i64 {
        self.start + self.slot * k as i64
    }

    /// Slots that end by `t`.
    fn slots_ending_by(&self, t: i64) -> usize {
        if t <= self.start || self.slot <= 0 {
            return 0;
        }
        (((t - self.start) / self.slot) as usize).min(self.slots)
    }
}

/// One batch's remaining work.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Requests left to run (pending lines; those in flight are not counted).
    pub remaining: f64,
    /// The hard deadline, pricing-clock seconds.
    pub deadline: i64,
    /// The deadline minus the safety margin: the plan aims to be done by then.
    pub latest: i64,
    /// Forecast $ per request in each cell, slot-major like [`Grid::capacity`]; a
    /// non-finite cost marks a cell the batch cannot use (a site without its model, or down).
    pub cost: Vec<f64>,
}

/// What the plan says for one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    /// Requests to run in slot 0 (now), per site.
    pub now: Vec<f64>,
    /// Start of the first slot with work, if any work was placed.
    pub start: Option<i64>,
    /// Forecast cost of the placed work, $.
    pub cost: f64,
    /// Work that fits nowhere before the deadline (capacity or sites missing).
    pub unplaced: f64,
    /// The batch could not be placed before `latest` and runs now regardless of price.
    pub behind: bool,
}

const EPS: f64 = 1e-9;

/// Plans every job on one grid; the result is in the order of `jobs`.
pub fn plan(grid: &Grid, jobs: &[Job]) -> Vec<JobPlan> {
    let mut cap = grid.capacity.clone();
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&j| (jobs[j].deadline, j));
    let mut plans: Vec<JobPlan> =
        jobs.iter().map(|_| JobPlan { now: vec![0.0; grid.sites], start: None, cost: 0.0, unplaced: 0.0, behind: false }).collect();
    for j in order {
        plans[j] = place(grid, &jobs[j], &mut cap);
    }
    plans
}

fn place(grid: &Grid, job: &Job, cap: &mut [f64]) -> JobPlan {
    let sites = grid.sites;
    let mut out = JobPlan { now: vec![0.0; sites], start: None, cost: 0.0, unplaced: 0.0, behind: false };
    let mut left = job.remaining.max(0.0);
    if left <= EPS {
        return out;
    }
    let usable = |c: usize| job.cost.get(c).is_some_and(|x| x.is_finite());
    let take = |c: usize, amount: f64, out: &mut JobPlan, cap: &mut [f64]| {
        let k = c / sites;
        cap[c] -= amount;
        out.cost += amount * job.cost[c];
        if k == 0 {
            out.now[c % sites] += amount;
        }
        let t = grid.slot_start(k);
        out.start = Some(out.start.map_or(t, |s: i64| s.min(t)));
    };
    let cells_before = |slots: usize, cap: &[f64]| -> Vec<usize> {
        let mut cells: Vec<usize> = (0..slots * sites).filter(|&c| usable(c) && cap[c] > EPS).collect();
        cells.sort_by(|&a, &b| job.cost[a].total_cmp(&job.cost[b]).then(a.cmp(&b)));
        cells
    };
    let soft = grid.slots_ending_by(job.latest);
    let room: f64 = (0..soft * sites).filter(|&c| usable(c)).map(|c| cap[c].max(0.0)).sum();
    if room + EPS < left {
        out.behind = true;
        // Slot 0 first, whatever it costs.
        let mut now: Vec<usize> = (0..sites).filter(|&c| usable(c) && cap[c] > EPS).collect();
        now.sort_by(|&a, &b| job.cost[a].total_cmp(&job.cost[b]).then(a.cmp(&b)));
        for c in now {
            let a = left.min(cap[c]);
            take(c, a, &mut out, cap);
            left -= a;
            if left <= EPS {
                return out;
            }
        }
        // The rest as cheaply as possible before the hard deadline (slot 0 is full by now).
        let hard = grid.slots_ending_by(job.deadline).max(1);
        for c in cells_before(hard, cap) {
            let a = left.min(cap[c]);
            take(c, a, &mut out, cap);
            left -= a;
            if left <= EPS {
                return out;
            }
        }
        out.unplaced = left;
        return out;
    }
    for c in cells_before(soft, cap) {
        let a = left.min(cap[c]);
        take(c, a, &mut out, cap);
        left -= a;
        if left <= EPS {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;

    /// One site, hourly slots, prices per request by hour.
    fn job(prices: &[f64], remaining: f64, latest_h: i64, deadline_h: i64) -> Job {
        Job { remaining, deadline: deadline_h * H, latest: latest_h * H, cost: prices.to_vec() }
    }

    #[test]
    fn ample_capacity_takes_the_cheapest_hours_before_the_deadline() {
        // Hours 0..6 at 5, 3, 1, 4, 0.5, 2 $/request; deadline after hour 4 (ends at 4 h).
        // By hand: 10 requests, 6 per hour: hour 2 (1 $) takes 6, hour 1 (3 $) the other 4;
        // hour 4 (0.5 $) is past the deadline. Cost 6·1 + 4·3 = 18; nothing now.
        let g = Grid::uniform(0, H, 6, &[6.0]);
        let p = &plan(&g, &[job(&[5.0, 3.0, 1.0, 4.0, 0.5, 2.0], 10.0, 4, 4)])[0];
        assert_eq!(p.now, vec![0.0]);
        assert!((p.cost - 18.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.start, Some(H));
        assert!(!p.behind);
        assert_eq!(p.unplaced, 0.0);
    }

    #[test]
    fn a_cheap_hour_now_runs_now_and_two_sites_split_by_price() {
        // Two sites; slot-major costs. Site 1 is cheapest now (0.2) and at hour 2 (0.1).
        // 8 requests, capacity 3 per site per hour, deadline at 3 h: cells by price are
        // (2,1)=0.1, (0,1)=0.2, (1,0)=0.5 … → 3 at hour 2 site 1, 3 now at site 1, 2 at hour 1
        // site 0. Cost 0.3 + 0.6 + 1.0 = 1.9.
        let cost = vec![1.0, 0.2, 0.5, 0.9, 0.7, 0.1];
        let g = Grid::uniform(0, H, 3, &[3.0, 3.0]);
        let p = &plan(&g, &[Job { remaining: 8.0, deadline: 3 * H, latest: 3 * H, cost }])[0];
        assert_eq!(p.now, vec![0.0, 3.0]);
        assert!((p.cost - 1.9).abs() < 1e-9, "{p:?}");
        assert_eq!(p.start, Some(0));
    }

    #[test]
    fn a_batch_that_cannot_make_its_margin_runs_now_whatever_the_price() {
        // 10 requests, 4 per hour; margin leaves 2 hours (8 requests): behind. Slot 0 (the
        // dearest, 9 $) is filled first, then hours 1–2 cheapest first within the deadline.
        let g = Grid::uniform(0, H, 4, &[4.0]);
        let p = &plan(&g, &[job(&[9.0, 1.0, 2.0, 0.0], 10.0, 2, 3)])[0];
        assert!(p.behind);
        assert_eq!(p.now, vec![4.0]);
        // 4·9 + 4·1 + 2·2 = 44; hour 3 (free) ends after the deadline.
        assert!((p.cost - 44.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.unplaced, 0.0);
    }

    #[test]
    fn work_that_fits_nowhere_is_reported_unplaced() {
        let g = Grid::uniform(0, H, 2, &[1.0]);
        let p = &plan(&g, &[job(&[1.0, f64::INFINITY], 5.0, 2, 2)])[0];
        assert!(p.behind);
        assert!((p.unplaced - 4.0).abs() < 1e-9);
    }

    #[test]
    fn earliest_deadline_goes_first_on_shared_capacity() {
        // Both want the cheap hour 0 (capacity 2); the urgent one (deadline 1 h) gets it, the
        // lax one takes hour 1 and 2.
        let g = Grid::uniform(0, H, 3, &[2.0]);
        let lax = job(&[1.0, 2.0, 3.0], 3.0, 3, 3);
        let urgent = job(&[1.0, 2.0, 3.0], 2.0, 1, 1);
        let plans = plan(&g, &[lax, urgent]);
        assert_eq!(plans[1].now, vec![2.0]);
        assert_eq!(plans[0].now, vec![0.0]);
        assert!((plans[0].cost - (2.0 * 2.0 + 3.0)).abs() < 1e-9);
    }

    #[test]
    fn nothing_left_plans_nothing() {
        let g = Grid::uniform(0, H, 2, &[1.0]);
        let p = &plan(&g, &[job(&[1.0, 1.0], 0.0, 2, 2)])[0];
        assert_eq!(p.start, None);
        assert!(!p.behind);
    }
}
