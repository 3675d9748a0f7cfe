"""Helpers for the owner-first tests and bench: workers with a `[policy]` table and a "keyboard"
(a file in their input directory: touching it is owner input), and direct reads of a worker's
guest cgroup (its CPU counter, the one credit is paid by, and its freezer).

Reading cgroups needs root, as running native sandboxes does.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import cgroups
from sandbox.config import SandboxConfig
from tests.e2e.nodes import (
    LOOPBACK,
    REQUESTER,
    Cluster,
    NodeProcess,
    all_see_each_other,
    wait_until,
)

BURN_CPU = 4.0  # CPU-seconds the guest burns before it exits
# The guest: a busy loop that stops at BURN_CPU seconds of its own CPU time, however long it was
# frozen in between, so the CPU it is paid for is known in advance.
GUEST = ("python3", "-c", f"import time\nwhile time.process_time() < {BURN_CPU}: pass")
LONG_AGO = 2 * 3600.0  # input file atimes are set this far back: the owner left long ago

# Seconds where the defaults say minutes. Loads are ignored (lending needs load <= 100%, and
# suspending 100% for an hour): other engineers' tests share this 2-core machine, and their load
# is owner load to our workers; tests of load set their own thresholds. No hard limits: this
# machine's sensors and free memory are not the tests' business.
FAST_POLICY: dict[str, Any] = {
    "lend": "idle",
    "watch_ttys": False,
    "start_idle": "1s",
    "low_load_for": "1s",
    "continue_idle": "2s",
    "max_suspend": "5m",
    "background_load": 1.0,
    "high_load": 1.0,
    "high_load_for": "1h",
    "max_temperature": False,
    "min_free_memory": 0,
    "pause_on_battery": False,
}


@dataclass
class Worker:
    node: NodeProcess
    keyboard: Path  # touching it is a keystroke of this worker's owner

    def touch(self) -> float:
        """A keystroke; returns when it happened (monotonic)."""
        at = time.monotonic()
        os.utime(self.keyboard)
        return at

    def policy(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.node.rain("policy", "--json").stdout)
        return data

    def state(self) -> str:
        return str(self.policy()["state"])


def start_worker(
    cluster: Cluster,
    name: str,
    *args: str,
    last_input: float = LONG_AGO,
    devices: int = 1,
    **policy: Any,
) -> Worker:
    """A worker with a `[policy]` table (FAST_POLICY updated by `policy`) and an input directory
    holding `devices` files (the first is the "keyboard") last used `last_input` seconds ago."""
    home = cluster.root / name
    inputs = cluster.root / f"{name}-input"
    home.mkdir(parents=True)
    inputs.mkdir()
    past = time.time() - last_input
    for i in range(devices):
        (inputs / f"event{i}").touch()
        os.utime(inputs / f"event{i}", (past, past))
    keyboard = inputs / "event0"
    table = {**FAST_POLICY, "input_paths": [str(inputs)], **policy}
    lines = ["[policy]", *(f"{key} = {json.dumps(value)}" for key, value in table.items())]
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    node = cluster.start("--listen", LOOPBACK, "--no-mdns", *args, name=name)
    node.wait_ready()
    return Worker(node, keyboard)


def jobs(node: NodeProcess) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(node.rain("jobs", "--json").stdout)
    return data


def credit(node: NodeProcess) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(node.rain("credit", "--json").stdout)
    return data


def state_seen_by(node: NodeProcess, peer_id: str) -> str | None:
    """`peer_id`'s state in `node`'s view (its signed record, as requesters rank workers by)."""
    return next((p["state"] for p in node.peers() if p["peer_id"] == peer_id), None)


class GuestCgroup:
    """The cgroup of the one guest job running on a worker, read directly (we are root): the CPU
    counter the worker is paid by, and whether the freezer holds it."""

    def __init__(self, home: Path) -> None:
        self.layout = cgroups.detect_layout()
        self.base = SandboxConfig.for_home(home).cgroup_base

    def job(self) -> cgroups.JobCgroup | None:
        names = sorted(cgroups.children(self.layout, self.base))
        if len(names) != 1:
            return None
        relpath = self.base / names[0]
        return cgroups.JobCgroup(self.layout, relpath, self.layout.job_dirs(relpath))

    def wait_job(self, timeout: float) -> cgroups.JobCgroup:
        found: list[cgroups.JobCgroup] = []

        def running() -> bool:
            job = self.job()
            if job is not None and _cpu(job) > 0.2:
                found.append(job)
                return True
            return False

        wait_until(running, timeout, "the guest runs and burns CPU", interval=0.1)
        return found[0]


def _cpu(job: cgroups.JobCgroup) -> float:
    try:
        return job.cpu_seconds()
    except (OSError, ValueError):
        return 0.0


def time_to_stop(job: cgroups.JobCgroup, since: float, quiet: float = 1.0) -> float:
    """Seconds from `since` (monotonic) until the guest's CPU counter last moved, once it has
    stood still for `quiet` seconds with the freezer holding it (bounded: 60 s)."""
    last, last_change = _cpu(job), time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.002)
        now, cpu = time.monotonic(), _cpu(job)
        if cpu != last:
            last, last_change = cpu, now
        elif now - last_change >= quiet:
            try:
                frozen = job.is_frozen()
            except FileNotFoundError:  # given up (killed, its cgroup removed) meanwhile: stopped
                frozen = True
            if frozen:
                return max(0.0, last_change - since)
    raise AssertionError("the guest's CPU use did not stop within 60 s")


def network(cluster: Cluster) -> NodeProcess:
    requester = cluster.start(*REQUESTER, name="req")
    requester.wait_ready()
    return requester


def join(requester: NodeProcess, *workers: Worker) -> None:
    """Wait until the requester knows each worker, with its sandbox, in state `idle`."""
    nodes = [w.node for w in workers]
    wait_until(lambda: all_see_each_other([requester, *nodes]), 30, "the network forms")

    def ready() -> bool:
        peers = {p["peer_id"]: p for p in requester.peers()}
        return all(
            w.peer_id in peers
            and peers[w.peer_id]["backends"]
            and peers[w.peer_id]["state"] == "idle"
            for w in nodes
        )

    wait_until(ready, 30, "the requester sees the workers idle")


def stop_gracefully(cluster: Cluster) -> None:
    """SIGTERM every node first, so workers kill and remove their guests (a SIGKILLed worker
    would leave a frozen guest behind)."""
    for node in cluster.nodes:
        node.stop()
