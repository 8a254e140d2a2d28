//! The hindsight oracle of the batch evaluation: the cheapest way to run every batch in the
//! (slot, site) cells between its arrival and its deadline, with each cell's capacity shared,
//! solved exactly as a min-cost flow (source → batch → cell → sink) by successive shortest
//! paths with Dijkstra on reduced costs. Flows are fluid (requests are not rounded); with
//! whole-number supplies and capacities the optimum found is whole too.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A batch may run in a cell at this cost per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arc {
    pub batch: usize,
    pub cell: usize,
    /// $ per request; may be negative.
    pub cost: f64,
}

/// The optimum found.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// Requests on each arc, in the order of the arcs given.
    pub flow: Vec<f64>,
    /// Total cost, $.
    pub cost: f64,
    /// Requests of each batch that fit nowhere (0 when the instance is feasible).
    pub unmet: Vec<f64>,
}

const EPS: f64 = 1e-9;

struct Edge {
    to: usize,
    cap: f64,
    cost: f64,
    /// Index of the reverse edge in `edges`.
    rev: usize,
}

#[derive(PartialEq)]
struct Entry(f64, usize);

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // A min-heap on distance.
        other.0.total_cmp(&self.0).then(other.1.cmp(&self.1))
    }
}

/// Min-cost flow of the transport problem: `supply[b]` requests of each batch into cells of
/// `capacity[c]`, over `arcs`. Pushes as much as fits, at least cost.
pub fn solve(supply: &[f64], capacity: &[f64], arcs: &[Arc]) -> Solution {
    let (nb, nc) = (supply.len(), capacity.len());
    let source = 0;
    let batch = |b: usize| 1 + b;
    let cell = |c: usize| 1 + nb + c;
    let sink = 1 + nb + nc;
    let n = sink + 1;
    let mut edges: Vec<Edge> = Vec::with_capacity(2 * (nb + nc + arcs.len()));
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut add = |edges: &mut Vec<Edge>, u: usize, v: usize, cap: f64, cost: f64| -> usize {
        let i = edges.len();
        edges.push(Edge { to: v, cap, cost, rev: i + 1 });
        edges.push(Edge { to: u, cap: 0.0, cost: -cost, rev: i });
        adj[u].push(i);
        adj[v].push(i + 1);
        i
    };
    for (b, &s) in supply.iter().enumerate() {
        add(&mut edges, source, batch(b), s.max(0.0), 0.0);
    }
    let arc_edges: Vec<usize> =
        arcs.iter().map(|a| add(&mut edges, batch(a.batch), cell(a.cell), f64::INFINITY, a.cost)).collect();
    for (c, &k) in capacity.iter().enumerate() {
        add(&mut edges, cell(c), sink, k.max(0.0), 0.0);
    }
    // Potentials: shortest distances in the three-layer network (so reduced costs start ≥ 0,
    // negative costs included).
    let mut pot = vec![0.0f64; n];
    let mut reached = vec![false; nc];
    for a in arcs {
        let p = &mut pot[cell(a.cell)];
        if !reached[a.cell] || a.cost < *p {
            *p = a.cost;
            reached[a.cell] = true;
        }
    }
    pot[sink] = (0..nc).filter(|&c| reached[c]).map(|c| pot[cell(c)]).fold(f64::INFINITY, f64::min);
    if !pot[sink].is_finite() {
        pot[sink] = 0.0;
    }

    let mut dist = vec![f64::INFINITY; n];
    let mut prev = vec![usize::MAX; n];
    let mut done = vec![false; n];
    loop {
        dist.iter_mut().for_each(|d| *d = f64::INFINITY);
        prev.iter_mut().for_each(|p| *p = usize::MAX);
        done.iter_mut().for_each(|d| *d = false);
        dist[source] = 0.0;
        let mut heap = BinaryHeap::new();
        heap.push(Entry(0.0, source));
        while let Some(Entry(d, u)) = heap.pop() {
            if done[u] {
                continue;
            }
            done[u] = true;
            if u == sink {
                break;
            }
            for &e in &adj[u] {
                let edge = &edges[e];
                if edge.cap <= EPS || done[edge.to] {
                    continue;
                }
                // Reduced costs are ≥ 0 up to rounding.
                let nd = d + (edge.cost + pot[u] - pot[edge.to]).max(0.0);
                if nd < dist[edge.to] {
                    dist[edge.to] = nd;
                    prev[edge.to] = e;
                    heap.push(Entry(nd, edge.to));
                }
            }
        }
        if !done[sink] {
            break;
        }
        let ds = dist[sink];
        for v in 0..n {
            pot[v] += if done[v] { dist[v] } else { ds };
        }
        // Bottleneck along the path, then augment.
        let mut push = f64::INFINITY;
        let mut v = sink;
        while v != source {
            let e = prev[v];
            push = push.min(edges[e].cap);
            v = edges[edges[e].rev].to;
        }
        let mut v = sink;
        while v != source {
            let e = prev[v];
            edges[e].cap -= push;
            let r = edges[e].rev;
            edges[r].cap += push;
            v = edges[r].to;
        }
    }
    let flow: Vec<f64> = arc_edges.iter().map(|&e| edges[edges[e].rev].cap).collect();
    let cost = flow.iter().zip(arcs).map(|(f, a)| f * a.cost).sum();
    let mut unmet = supply.iter().map(|s| s.max(0.0)).collect::<Vec<f64>>();
    for (f, a) in flow.iter().zip(arcs) {
        unmet[a.batch] -= f;
    }
    unmet.iter_mut().for_each(|u| *u = if *u < 1e-6 { 0.0 } else { *u });
    Solution { flow, cost, unmet }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every whole-number assignment: the largest total flow, and its least cost.
    fn brute(supply: &[u32], capacity: &[u32], arcs: &[Arc]) -> (u32, f64) {
        fn go(i: usize, arcs: &[Arc], left: &mut [u32], cap: &mut [u32], flow: u32, cost: f64, best: &mut (u32, f64)) {
            if i == arcs.len() {
                if flow > best.0 || (flow == best.0 && cost < best.1 - 1e-9) {
                    *best = (flow, cost);
                }
                return;
            }
            let a = arcs[i];
            let most = left[a.batch].min(cap[a.cell]);
            for x in 0..=most {
                left[a.batch] -= x;
                cap[a.cell] -= x;
                go(i + 1, arcs, left, cap, flow + x, cost + f64::from(x) * a.cost, best);
                left[a.batch] += x;
                cap[a.cell] += x;
            }
        }
        let mut best = (0, f64::INFINITY);
        go(0, arcs, &mut supply.to_vec(), &mut capacity.to_vec(), 0, 0.0, &mut best);
        best
    }

    #[test]
    fn matches_brute_force_on_small_random_instances() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..300 {
            let nb = rng.gen_range(1..=3);
            let nc = rng.gen_range(1..=3);
            let supply: Vec<u32> = (0..nb).map(|_| rng.gen_range(0..=3)).collect();
            let capacity: Vec<u32> = (0..nc).map(|_| rng.gen_range(0..=3)).collect();
            let mut arcs = Vec::new();
            for b in 0..nb {
                for c in 0..nc {
                    if rng.gen_bool(0.7) {
                        arcs.push(Arc { batch: b, cell: c, cost: f64::from(rng.gen_range(-5..=20)) / 2.0 });
                    }
                }
            }
            let s = solve(&supply.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), &capacity.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), &arcs);
            let (flow, cost) = brute(&supply, &capacity, &arcs);
            let got: f64 = s.flow.iter().sum();
            assert!((got - f64::from(flow)).abs() < 1e-9, "round {round}: flow {got} vs {flow}; {supply:?} {capacity:?} {arcs:?}");
            if flow > 0 {
                assert!((s.cost - cost).abs() < 1e-9, "round {round}: cost {} vs {cost}; {supply:?} {capacity:?} {arcs:?}", s.cost);
            }
            let unmet: f64 = s.unmet.iter().sum();
            assert!((unmet - (supply.iter().sum::<u32>() - flow) as f64).abs() < 1e-9);
            // Capacities hold.
            for (c, &cap) in capacity.iter().enumerate() {
                let used: f64 = s.flow.iter().zip(&arcs).filter(|(_, a)| a.cell == c).map(|(f, _)| f).sum();
                assert!(used <= f64::from(cap) + 1e-9);
            }
        }
    }

    #[test]
    fn a_hand_computed_instance_needs_a_reroute() {
        // Batch 0 may use cells 0 (cost 1) and 1 (cost 2); batch 1 only cell 0 (cost 5).
        // Capacity 1 each, one request each. Greedy by cost puts batch 0 in cell 0 and strands
        // batch 1; the optimum moves batch 0 to cell 1: 2 + 5 = 7.
        let arcs = [Arc { batch: 0, cell: 0, cost: 1.0 }, Arc { batch: 0, cell: 1, cost: 2.0 }, Arc { batch: 1, cell: 0, cost: 5.0 }];
        let s = solve(&[1.0, 1.0], &[1.0, 1.0], &arcs);
        assert_eq!(s.flow, vec![0.0, 1.0, 1.0]);
        assert_eq!((s.cost, s.unmet.clone()), (7.0, vec![0.0, 0.0]));
        // Fluid amounts: 1.5 requests of batch 0 into cells of 1 → 1 in the cheaper cell.
        let s = solve(&[1.5], &[1.0, 1.0], &arcs[..2]);
        assert_eq!(s.flow, vec![1.0, 0.5]);
        // Nothing fits: unmet.
        let s = solve(&[2.0], &[0.0], &[Arc { batch: 0, cell: 0, cost: 1.0 }]);
        assert_eq!((s.cost, s.unmet.clone()), (0.0, vec![2.0]));
    }
}
