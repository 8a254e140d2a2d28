#!/usr/bin/env python3
"""Can a price predictor rescue routing on delayed prices? A side study for `joule energy evaluate`.

Replays the shared trace for the six sites of config/evaluate.toml (same PUEs, same diurnal load
as `--load` defaults, one-minute steps, prices that arrive `--delay` after their interval
starts) and routes each step to the site with the lowest *estimated* current energy cost, for
several causal estimators (each uses only prices published before the decision). Prints each
estimator's share of the oracle's savings against the best static site. It models only the
energy part of the price (base prices are equal at every site, so they do not change the
ranking), so its figures differ from `joule energy evaluate` by a few tenths of a percent.

    python3 scripts/energy-predictors.py [--data ../shared/data/energy] [--delay 300]

Standard library only.
"""
import argparse
import bisect
import collections
import csv
import datetime
import math
import os

SITES = [("CAISO", "SP-15", 1.2), ("ERCOT", "Houston", 1.35), ("PJM", "Chicago Hub", 1.25),
         ("MISO", "Illinois Hub", 1.25), ("NYISO", "A - West", 1.15), ("SPP", "South Hub", 1.3)]


def load(data):
    series = []
    for iso, loc, _ in SITES:
        name = next(f for f in sorted(os.listdir(data)) if f.startswith(iso + "_") and f.endswith(".csv"))
        rows = []
        with open(os.path.join(data, name)) as fh:
            for r in csv.DictReader(fh):
                if r["location"] == loc:
                    t = int(datetime.datetime.fromisoformat(r["interval_start"].replace("Z", "+00:00")).timestamp())
                    rows.append((t, int(r["interval_minutes"]) * 60, float(r["usd_per_mwh"])))
        rows.sort()
        series.append(rows)
    return series


def rate(t):
    hour = (t % 86400) / 3600
    return 1 + 0.5 * math.cos(2 * math.pi * (hour - 20) / 24)


class Replay:
    def __init__(self, series, delay):
        self.series, self.delay = series, delay
        self.starts = [[r[0] for r in s] for s in series]
        self.t0 = max(s[0][0] for s in series)
        self.t1 = min(s[-1][0] + s[-1][1] for s in series)

    def published(self, i, t):
        """Index of the newest interval of site i whose price is known at t (or -1)."""
        return bisect.bisect_right(self.starts[i], t - self.delay) - 1

    def true(self, i, t):
        return self.series[i][max(0, bisect.bisect_right(self.starts[i], t) - 1)][2]

    def share(self, estimate):
        cost = collections.Counter()
        statics = [0.0] * len(SITES)
        t = self.t0
        while t < self.t1:
            w = rate(t)
            true = [self.true(i, t) * SITES[i][2] for i in range(len(SITES))]
            est = [estimate(self, i, t) * SITES[i][2] for i in range(len(SITES))]
            cost["routed"] += w * true[min(range(len(SITES)), key=lambda i: est[i])]
            cost["oracle"] += w * min(true)
            for i, x in enumerate(true):
                statics[i] += w * x
            t += 60
        best = min(statics)
        return (best - cost["routed"]) / (best - cost["oracle"])


def newest(r, i, t):
    j = max(0, r.published(i, t))
    return j, r.series[i][j]


def last(r, i, t):
    return newest(r, i, t)[1][2]


def recent(k, agg):
    def f(r, i, t):
        j, _ = newest(r, i, t)
        xs = [x[2] for x in r.series[i][max(0, j - k + 1):j + 1]]
        return agg(xs)
    return f


def mean(xs):
    return sum(xs) / len(xs)


def median(xs):
    return sorted(xs)[len(xs) // 2]


def mean_reverting(phi, window):
    """AR(1) toward the mean of the last `window` seconds: mu + phi^h (p - mu), h intervals ahead."""
    def f(r, i, t):
        j, (s0, length, p) = newest(r, i, t)
        h = max(0, (t - s0) // length)
        if h == 0:
            return p
        lo = bisect.bisect_left(r.starts[i], s0 - window)
        mu = mean([x[2] for x in r.series[i][min(lo, j):j + 1]])
        return mu + phi ** h * (p - mu)
    return f


def seasonal(days):
    """Last price plus the change over the same stretch of time on each of the previous `days` days."""
    def f(r, i, t):
        j, (s0, _, p) = newest(r, i, t)
        deltas = []
        for d in range(1, days + 1):
            a = bisect.bisect_right(r.starts[i], s0 - 86400 * d) - 1
            b = bisect.bisect_right(r.starts[i], t - 86400 * d) - 1
            if a >= 0 and b >= 0:
                deltas.append(r.series[i][b][2] - r.series[i][a][2])
        return p + (mean(deltas) if deltas else 0.0)
    return f


def conditional_drift(min_pairs=20):
    """Last price plus the mean next-interval change seen so far after prices in the same band."""
    edges = [0, 20, 30, 40, 50, 70, 100, 200]
    band = lambda p: bisect.bisect_right(edges, p)
    acc = collections.defaultdict(lambda: [0.0, 0])
    done = collections.Counter()

    def f(r, i, t):
        j, (s0, length, p) = newest(r, i, t)
        s = r.series[i]
        while done[i] < j:
            k = done[i]
            a = acc[(i, band(s[k][2]))]
            a[0] += s[k + 1][2] - s[k][2]
            a[1] += 1
            done[i] += 1
        h = max(0, (t - s0) // length)
        a = acc[(i, band(p))]
        return p + h * a[0] / a[1] if h and a[1] >= min_pairs else p
    return f


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data", "energy"))
    ap.add_argument("--delay", type=int, default=300, help="feed delay, seconds (default 300)")
    args = ap.parse_args()
    r = Replay(load(args.data), args.delay)
    estimators = [("last published price (what joule does)", last)]
    estimators += [(f"mean of last {k}", recent(k, mean)) for k in (2, 6)]
    estimators += [(f"median of last {k}", recent(k, median)) for k in (3, 6)]
    estimators += [(f"mean-reverting, phi {phi}, mean of {w // 3600} h", mean_reverting(phi, w))
                   for phi in (0.5, 0.9, 0.95) for w in (6 * 3600, 24 * 3600)]
    estimators += [(f"seasonal, last price + change on the previous {d} day(s)", seasonal(d)) for d in (1, 7)]
    estimators += [("conditional drift by price band", conditional_drift())]
    print(f"feed delay {args.delay} s\n")
    print("| estimator | share of oracle savings |\n|---|---:|")
    for name, f in estimators:
        print(f"| {name} | {100 * r.share(f):.1f} % |", flush=True)


if __name__ == "__main__":
    main()
