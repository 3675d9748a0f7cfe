"""Benchmarks of the idle policy, printed, not asserted: /work/venv/bin/python bench/bench_idle.py

- the node's own CPU cost of watching (sampler + policy + the trio loop), as a share of one core,
  sampling at 1 Hz and at 4 Hz for ~20 s each (goal: below 0.5%); the input "devices" are 20
  files in a temporary directory plus /dev/input if present, the guest counter reads a real
  cgroup cpu.stat file like the node's will. (The node samples at 4 Hz only while guests run,
  at 1 Hz otherwise.) For scale: an empty trio loop waking at the same rate;
- the time from touching an input file (a keystroke) to the policy deciding `suspend`, sampling
  at 4 Hz: median of 20 (goal: within 1 s). The freezer's own latency comes on top once real
  guest jobs are wired in.

Pass --quick for shorter runs.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import trio

from node.owner.config import PolicyConfig
from node.owner.policy import Decision, IdlePolicy
from node.owner.signals import PolicyWatch, Sampler

CGROUP_STAT = Path("/sys/fs/cgroup/cpu.stat")


def guest_counter() -> float:
    """Like the sandbox's cgroup counter: one small file read per call."""
    try:
        text = CGROUP_STAT.read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    return 0.0


def config_for(inputs: Path, hz: float, **overrides: object) -> PolicyConfig:
    values: dict[str, object] = {
        "input_paths": (str(inputs), "/dev/input"),
        "input_interval": 1.0 / hz,
        "load_interval": 1.0,
    }
    values.update(overrides)
    return PolicyConfig(**values)  # type: ignore[arg-type]


def bench_cost(inputs: Path, hz: float, seconds: float) -> float:
    """Share of one core used by the watch loop at `hz` samples per second."""
    config = config_for(inputs, hz)
    watch = PolicyWatch(
        Sampler(config, guest_cpu=guest_counter),
        IdlePolicy(config),
        guests_running=lambda: False,
        on_decision=lambda d: None,
        interval=1.0 / hz,
    )

    async def main() -> float:
        cpu0, wall0 = time.process_time(), time.monotonic()
        with trio.move_on_after(seconds):
            await watch.run()
        return (time.process_time() - cpu0) / (time.monotonic() - wall0)

    return trio.run(main)


def bench_empty_trio(hz: float, seconds: float) -> float:
    """Share of one core used by a trio loop that only wakes up at `hz`."""

    async def main() -> float:
        cpu0, wall0 = time.process_time(), time.monotonic()
        next_at = trio.current_time()
        with trio.move_on_after(seconds):
            while True:
                next_at += 1.0 / hz
                await trio.sleep_until(next_at)
        return (time.process_time() - cpu0) / (time.monotonic() - wall0)

    return trio.run(main)


def bench_reaction(inputs: Path, trials: int) -> list[float]:
    """Seconds from a touched input file to the `suspend` decision, sampling at 4 Hz."""
    keyboard = inputs / "event0"
    then = time.time() - 60
    os.utime(keyboard, (then, then))
    config = config_for(
        inputs,
        4.0,
        start_idle=0.5,
        continue_idle=0.5,
        low_load_for=0.0,
        background_load=1.0,  # CPU load must not matter here: other work shares these CPUs
        high_load=1.0,
        high_load_for=3600.0,
        watch_ttys=False,
    )
    events: list[tuple[float, Decision]] = []
    watch = PolicyWatch(
        Sampler(config),
        IdlePolicy(config),
        guests_running=lambda: True,
        on_decision=lambda d: events.append((time.monotonic(), d)),
    )

    async def wait_for(action: str, after: float) -> float:
        with trio.fail_after(30):
            while True:
                for t, d in events:
                    if t >= after and d.action == action:
                        return t
                await trio.sleep(0.01)

    async def main() -> list[float]:
        latencies = []
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.run)
            await wait_for("resume", 0.0)
            for _ in range(trials):
                await trio.sleep(random.uniform(0.1, 0.6))  # a random phase against the ticks
                touched = time.monotonic()
                keyboard.touch()
                latencies.append(await wait_for("suspend", touched) - touched)
                await wait_for("resume", touched)
            nursery.cancel_scope.cancel()
        return latencies

    return trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    seconds, trials = (5.0, 5) if args.quick else (20.0, 20)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp)
        for i in range(20):
            (inputs / f"event{i}").touch()
        print(f"watch cost over {seconds:.0f} s each (goal < 0.5% of a core):")
        for hz in (1.0, 4.0):
            share = bench_cost(inputs, hz, seconds)
            empty = bench_empty_trio(hz, seconds)
            print(
                f"  {hz:.0f} Hz: {share * 100:.3f}% of a core "
                f"(an empty trio loop at {hz:.0f} Hz: {empty * 100:.3f}%)"
            )
        lat = bench_reaction(inputs, trials)
        print(f"input -> suspend decision at 4 Hz, {trials} touches (goal < 1 s):")
        print(
            f"  median {statistics.median(lat) * 1000:.0f} ms, "
            f"max {max(lat) * 1000:.0f} ms, min {min(lat) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
