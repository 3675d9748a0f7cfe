"""The simulator's figures at 100, 1,000 and 10,000 nodes, printed, not asserted (issue 18):
.venv/bin/python bench/bench_scale.py [--quick] [--sizes 100,1000]

Each size runs sim.world's default scenario (LANs of 20, --max-connections 8, a tenth of the
nodes lending, a mean lifetime of 30 min with as many newcomers, a quarter of the LANs cut off
for 30 s mid-measurement, 0.002 jobs per node per second), 60 s of warm-up then 120 s measured
(--quick: 60), and prints per node: connections (median, 99th percentile, max; transient DHT
connections included), neighbours, messages and bytes per second, CPU of the node's cores; and
for the network: DHT lookup rounds and latency, the share of jobs placed within 5 s, jobs left
unplaced that a live worker could have run, seconds until a departed node is out of every
view (99th percentile), live peers declared gone outside the partition's cut, and the network
size estimate over the true size. Then each figure at the larger sizes as a ratio to 100
nodes' (flat: ~1; log N: 1.5 and 2).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.world import Scenario, simulate

RATIOS = ("conns med", "conns p99", "neigh med", "msg/s med", "B/s med", "core ms/s", "hops med")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="60 s measured instead of 120")
    ap.add_argument("--sizes", default="100,1000,10000")
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        report = simulate(Scenario(nodes=n, duration=60 if args.quick else 120))
        row = report.row()
        rows.append(row)
        print(f"{n} nodes simulated in {report.wall:.0f} s", file=sys.stderr, flush=True)
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_cell(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_cell(r[k]).rjust(widths[k]) for k in keys))
    base = rows[0]
    for r in rows[1:]:
        ratios = ", ".join(
            f"{k} {r[k] / base[k]:.2f}x" for k in RATIOS if base[k] and not math.isnan(base[k])
        )
        print(f"{r['nodes']} vs {base['nodes']} nodes: {ratios}")


def _cell(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
