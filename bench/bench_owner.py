"""Benchmarks of owner-first lending with real nodes, printed, not asserted (needs root, as the
native sandbox does): /work/venv/bin/python bench/bench_owner.py [--quick]

- reaction: time from owner input (touching a file in the worker's input directory) to the
  guest's CPU use stopping, read from the guest's own cgroup CPU counter (the one credit is paid
  by), polled every 2 ms: median of 10 keystrokes at random moments (goal: within 1 s). Split
  into detection (the worker's policy transition, at 4 Hz sampling while busy) and freezing.
- cost of watching: CPU share of one core of whole worker processes over 20 s, measured side by
  side on the same peers: a worker sampling as shipped (1 Hz while not busy; input from 20 files
  and the ttys of logged-in users), the same worker watching only once a minute
  (input_interval = load_interval = 60 s: the baseline, a node that hardly watches), one with
  `--lend never` (it still watches, at 1 Hz, to report its state), and one running a guest that
  sleeps (4 Hz sampling, plus the job's supervision and progress reports). Goal: watching costs
  below 0.5% of a core (the first minus the baseline).

Everything runs on 127.0.0.1; other load on the machine shows up in the figures.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from node.control import channel as control
from node.home import CONTROL_SOCKET
from tests.e2e.nodes import Cluster, NodeProcess, wait_until
from tests.e2e.owner_helpers import (
    GuestCgroup,
    Worker,
    join,
    network,
    start_worker,
    stop_gracefully,
    time_to_stop,
)

BUSY_LOOP = ("python3", "-c", "while True: pass")


def ask_policy(node: NodeProcess) -> dict[str, Any]:
    """The node's policy report over its control socket (no CLI process to perturb timings)."""
    return control.request(node.home / CONTROL_SOCKET, "policy", timeout=5.0)


def bench_reaction(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            requester = network(cluster)
            # Resumes after 1 s without input, so keystrokes can follow each other quickly.
            worker = start_worker(cluster, "w", "--bootstrap", requester.addr, continue_idle="1s")
            join(requester, worker)
            requester.rain("submit", "--time", "30m", "--", *BUSY_LOOP)
            cg = GuestCgroup(worker.node.home).wait_job(30)
            stops: list[float] = []
            detects: list[float] = []
            for _ in range(runs):
                wait_until(
                    lambda: ask_policy(worker.node)["state"] == "busy" and not cg.is_frozen(),
                    30,
                    "the guest runs again",
                    interval=0.05,
                )
                time.sleep(0.5 + random.random() * 0.5)  # land anywhere in the 4 Hz sampling
                touched_at = time.time()
                stops.append(time_to_stop(cg, worker.touch(), quiet=0.5))
                report = ask_policy(worker.node)
                suspend = [t for t in report["transitions"] if t["action"] == "suspend"][-1]
                detects.append(suspend["at"] - touched_at)
            _print_spread("owner input -> guest CPU stopped", stops, "goal < 1 s")
            _print_spread("  of which: input -> policy decides", detects, "4 Hz sampling")
        finally:
            stop_gracefully(cluster)
            cluster.stop_all()


def _print_spread(label: str, values: list[float], note: str) -> None:
    ms = sorted(v * 1000 for v in values)
    print(
        f"{label}: median {statistics.median(ms):.0f} ms, min {ms[0]:.0f}, max {ms[-1]:.0f} "
        f"(n={len(ms)}; {note})"
    )


def bench_cost(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            requester = network(cluster)
            boot = ("--bootstrap", requester.addr)
            # Sampling as shipped (20 input "devices", as in bench_idle.py, and the ttys of
            # logged-in users), but lending at once: no input for hours, loads ignored.
            shipped: dict[str, Any] = {"watch_ttys": True, "devices": 20}
            # A guest that sleeps: the worker samples at 4 Hz while it runs. Started first, so
            # the requester has no other worker to give the job to.
            busy = start_worker(cluster, "busy", *boot, **shipped)
            join(requester, busy)
            requester.rain("submit", "--time", "30m", "--", "sleep", "3600")
            wait_until(lambda: ask_policy(busy.node)["state"] == "busy", 30, "the guest runs")
            workers: dict[str, Worker] = {"busy (4 Hz)": busy}
            workers["idle (1 Hz)"] = start_worker(cluster, "idle", *boot, **shipped)
            workers["lend never (1 Hz)"] = start_worker(
                cluster, "never", *boot, "--lend", "never", **shipped
            )
            workers["baseline (1/min)"] = start_worker(
                cluster, "base", *boot, input_interval="60s", load_interval="60s", **shipped
            )
            procs = {name: psutil.Process(_pid(w.node)) for name, w in workers.items()}
            time.sleep(5.0)  # let start-up (sandbox probe, DHT bootstrap) settle
            before = {name: _cpu(p) for name, p in procs.items()}
            wall0 = time.monotonic()
            time.sleep(seconds)
            wall = time.monotonic() - wall0
            shares = {name: (_cpu(p) - before[name]) / wall for name, p in procs.items()}
            print(f"whole worker processes over {wall:.0f} s, share of one core:")
            for name, share in shares.items():
                print(f"  {name:<20} {share * 100:.2f}%")
            base = shares["baseline (1/min)"]
            idle = shares["idle (1 Hz)"]
            ratio = f"{idle / base:.2f}x" if base > 0 else "n/a"
            print(
                f"cost of watching at 1 Hz (idle minus baseline): {(idle - base) * 100:.2f}% "
                f"of a core (ratio {ratio}; goal < 0.5%)"
            )
            print(
                f"busy minus baseline (4 Hz watching + job supervision): "
                f"{(shares['busy (4 Hz)'] - base) * 100:.2f}% of a core"
            )
        finally:
            stop_gracefully(cluster)
            cluster.stop_all()


def _pid(node: NodeProcess) -> int:
    assert node.proc is not None
    return node.proc.pid


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, shorter measurements")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_owner: needs root (native sandbox, cgroup reads)", file=sys.stderr)
        return 2
    bench_reaction(5 if args.quick else 10)
    bench_cost(10.0 if args.quick else 20.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
