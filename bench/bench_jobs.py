"""Benchmarks of jobs across the network, printed, not asserted: python bench/bench_jobs.py

- round trip: `rain submit --wait -- true` (requester to a worker on 127.0.0.1 and back, credit
  settled) against the CLI's own cost (`rain jobs`) plus `true` alone in the local sandbox,
  median of 20 each, as a ratio and as milliseconds of network overhead (also against local
  jobs run back to back, which start faster: see bench_round_trip);
- throughput: 500 trivial jobs through 3 workers (2 CPUs lent each) against the same 500 jobs in
  the local native sandbox with the same concurrency (6 at a time), as a ratio of jobs/s (the
  jobs are one array: they ride task sessions, several to a message, paid in groups).
Anchors from the issue: a libp2p-era compute network measured ~200 ms over `docker run` and 0.75
jobs/s; goal here under 30 ms of overhead per job on a LAN and at least 70% of local throughput.
All on one 2-core machine: the requester, the workers and the jobs share its cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from sandbox import JobSpec, Limits, SandboxConfig, open_backend
from tests.e2e.nodes import Cluster, NodeProcess, requester_and_workers


def _rain(node: NodeProcess, *args: str, timeout: float = 120) -> float:
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "node.cli", "--home", str(node.home), *args],
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    return time.monotonic() - start


def network(workers: int, tmp: Path) -> tuple[Cluster, NodeProcess]:
    cluster = Cluster(tmp)
    requester, _ = requester_and_workers(cluster, workers, timeout=60)
    return cluster, requester


async def _round_trips(
    requester: NodeProcess, local_home: Path, repeats: int
) -> tuple[list[float], ...]:
    """Interleaved (this machine's speed drifts over minutes): `rain submit --wait -- true`,
    `rain jobs`, and `true` alone in the local native sandbox, in-process; then `true` in the
    local sandbox back to back."""
    backend = await open_backend(SandboxConfig.for_home(local_home), "native")
    spec = JobSpec.create(["true"], limits=Limits(wall_seconds=60))
    cli = [sys.executable, "-m", "node.cli", "--home", str(requester.home)]

    async def timed(job: Callable[[], Awaitable[object]]) -> float:
        began = trio.current_time()
        await job()
        return trio.current_time() - began

    def rain(*args: str) -> Callable[[], Awaitable[object]]:
        async def run() -> None:
            await trio.run_process([*cli, *args], capture_stdout=True, capture_stderr=True)

        return run

    remote, own, alone, back_to_back = [], [], [], []
    for _ in range(repeats):
        remote.append(await timed(rain("submit", "--wait", "--", "true")))
        own.append(await timed(rain("jobs")))
        # One job at a time, as a user runs one: moving a process into cgroup v1 hierarchies
        # waits for an RCU grace period unless another move just happened, so back-to-back
        # starts are cheaper (~3 ms against ~11 ms here) than any single job's.
        await trio.sleep(0.2)
        alone.append(await timed(lambda: backend.run(spec)))
    for _ in range(repeats):
        back_to_back.append(await timed(lambda: backend.run(spec)))
    return remote, own, alone, back_to_back


def bench_round_trip(repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster, requester = network(1, Path(tmp))
        try:
            _rain(requester, "submit", "--wait", "--", "true")  # warm-up: first chain sync
            runs = trio.run(_round_trips, requester, Path(tmp) / "local", repeats)
        finally:
            cluster.stop_all()
    r, c, loc, tight = (statistics.median(x) for x in runs)
    print(
        f"round trip of `true` (median of {repeats}): rain submit --wait {r * 1000:.0f} ms; "
        f"baseline = the CLI's own start and one control request (rain jobs) {c * 1000:.0f} ms + "
        f"the job alone in the local sandbox {loc * 1000:.0f} ms = {(c + loc) * 1000:.0f} ms; "
        f"ratio {r / (c + loc):.2f}, network overhead {(r - c - loc) * 1000:.0f} ms "
        f"(goal < 30 ms; anchor ~200 ms); against local jobs back to back ({tight * 1000:.0f} ms "
        f"each): {(r - c - tight) * 1000:.0f} ms"
    )


def bench_throughput(n: int, workers: int, per_worker: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster, requester = network(workers, Path(tmp))
        try:
            _rain(requester, "submit", "--wait", "--", "true")  # warm-up
            # --wait follows the jobs in order with long polls: the first returns when job 1
            # ends, the rest mostly at once. (Polling `rain jobs` instead cost a CLI start every
            # half second, on the same 2 cores as the nodes.)
            start = time.monotonic()
            _rain(
                requester, "submit", "--time", "60s", "--array", f"1-{n}", "--wait", "--json",
                "--", "true", timeout=1800,
            )  # fmt: skip
            remote = time.monotonic() - start
        finally:
            cluster.stop_all()

        concurrency = workers * per_worker

        async def local() -> float:
            backend = await open_backend(SandboxConfig.for_home(Path(tmp) / "local"), "native")
            spec = JobSpec.create(["true"], limits=Limits(wall_seconds=60))
            limiter = trio.CapacityLimiter(concurrency)

            async def one() -> None:
                async with limiter:
                    await backend.run(spec)

            began = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(one)
            return trio.current_time() - began

        loc = trio.run(local)
    print(
        f"throughput of {n} trivial jobs: through {workers} workers {n / remote:.1f} jobs/s, "
        f"local native sandbox ({concurrency} at a time) {n / loc:.1f} jobs/s: ratio "
        f"{loc / remote:.2f} (goal >= 0.70; anchor 0.75 jobs/s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    bench_round_trip(5 if args.quick else 20)
    bench_throughput(100 if args.quick else 500, 3, 2)


if __name__ == "__main__":
    main()
