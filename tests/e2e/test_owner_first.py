"""Owner first, with real processes (issue 5, "What must be shown"): guest jobs on a worker are
suspended when its owner types (a file touched in the worker's input directory) or loads the CPU
(a busy loop the test starts outside the sandbox), resumed when the owner has gone again, and
given back to the requester when suspended too long; a worker whose owner is busy takes no offer.

Each worker gets a `[policy]` table in HOME/config.toml before it starts, with seconds where the
defaults say minutes, and loads ignored except in the load test (see tests/owner_helpers.py:
other engineers' tests share this 2-core machine, and their load is owner load to our workers).
The load test skips, saying why, when that other load keeps the worker from lending at all.
The guest's CPU is read from its cgroup, the counter it is paid by, so this needs root (as the
native sandbox does).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.nodes import PYTHON, WORKER, Cluster, NodeProcess, all_see_each_other, wait_until
from tests.e2e.owner_helpers import (
    BURN_CPU,
    GUEST,
    GuestCgroup,
    Worker,
    credit,
    jobs,
    join,
    network,
    start_worker,
    state_seen_by,
    stop_gracefully,
    time_to_stop,
)

# (alone: the owner's CPU load is the machine's, so another test's load would be the owner's)
pytestmark = [
    pytest.mark.alone,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="needs root: guests run in native sandboxes, whose cgroups we read",
    ),
]


def last_transition(worker: Worker, action: str) -> dict[str, Any] | None:
    """The worker's latest policy transition with `action` (suspend, resume, give_up)."""
    found = [t for t in worker.policy()["transitions"] if t["action"] == action]
    return found[-1] if found else None


# -- (3) a worker in owner state takes no offer ------------------------------------------------


QUEUE_LIMIT = 40  # seconds the lone owner's job may wait (`--queue-limit`)


@dataclass
class LoneOwner:
    """A requester whose only peer is a worker in `owner` state, and a `rain submit --wait` to it.

    The network lives for the whole module: the only worker may lend later, so the job waits,
    saying why, until its queue limit (QUEUE_LIMIT here), which passes while the other tests run
    (the first test here submits, the last one reads the verdict).
    """

    requester: NodeProcess
    worker: Worker
    submit: subprocess.Popen[str] | None = None
    submitted: float = 0.0
    verdict: tuple[float, str, str] | None = None  # seconds it took, stdout, stderr
    _waiter: threading.Thread | None = None

    def submit_and_wait(self) -> None:
        cmd = [PYTHON, "-m", "node.cli", "--home", str(self.requester.home), "submit", "--wait"]
        self.submitted = time.monotonic()
        self.submit = subprocess.Popen(
            [*cmd, "--queue-limit", f"{QUEUE_LIMIT:g}s", "--", "echo", "never runs"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc = self.submit

        def wait() -> None:  # so that we know when it ended, whenever we look
            out, err = proc.communicate()
            self.verdict = (time.monotonic() - self.submitted, out, err)

        self._waiter = threading.Thread(target=wait, daemon=True)
        self._waiter.start()

    def wait_verdict(self, timeout: float) -> tuple[float, str, str]:
        assert self._waiter is not None
        self._waiter.join(max(timeout, 5.0))
        assert self.verdict is not None, f"rain submit --wait still running after {timeout} s"
        return self.verdict


@pytest.fixture(scope="module")
def lone_owner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoneOwner]:
    cluster = Cluster(tmp_path_factory.mktemp("lone"))
    lone: LoneOwner | None = None
    try:
        requester = network(cluster)
        # The owner typed a moment ago and lending needs an hour without input.
        worker = start_worker(
            cluster, "owner", "--bootstrap", requester.addr, last_input=0.0, start_idle="1h"
        )
        wait_until(lambda: all_see_each_other([requester, worker.node]), 30, "the pair meets")
        lone = LoneOwner(requester, worker)
        yield lone
    finally:
        if lone is not None and lone.submit is not None and lone.submit.poll() is None:
            lone.submit.kill()
            lone.submit.wait(timeout=10)
        stop_gracefully(cluster)
        cluster.stop_all()


def test_a_worker_in_owner_state_is_skipped(lone_owner: LoneOwner) -> None:
    requester, worker = lone_owner.requester, lone_owner.worker
    report = worker.policy()
    assert report["state"] == "owner" and report["start_allowed"] is False, report
    assert report["reason"].startswith("owner input"), report
    assert "lends after 1 h without input" in report["reason"]
    status = json.loads(worker.node.rain("status", "--json").stdout)
    assert status["state"] == "owner"
    # Its signed record says so: the requester sees it in state owner...
    wait_until(
        lambda: state_seen_by(requester, worker.node.peer_id) == "owner",
        15,
        "the requester sees the worker in owner state",
    )
    # ... and so never offers it the job (the worker would decline: see `Node._may_start`).
    lone_owner.submit_and_wait()
    wait_until(lambda: len(jobs(requester)) == 1, 15, "the job is submitted")
    time.sleep(2.0)
    (job,) = jobs(requester)
    assert job["state"] == "queued" and job["attempts"] == 0 and job["worker"] is None, job
    assert job["pending_reason"] == "1 worker is in owner state", job


# -- (1) owner input ----------------------------------------------------------------------------


def test_owner_input_suspends_the_guest_and_idleness_resumes_it(nodes: Cluster) -> None:
    requester = network(nodes)
    worker = start_worker(nodes, "w", "--bootstrap", requester.addr, continue_idle="3s")
    join(requester, worker)
    guest = GuestCgroup(worker.node.home)

    job_id = requester.rain("submit", "--time", "60s", "--", *GUEST).stdout.strip()
    cg = guest.wait_job(30)
    wait_until(lambda: worker.state() == "busy", 10, "the worker reports itself busy")

    touched = worker.touch()
    stopped = time_to_stop(cg, touched)
    # Issue 5 asks for 1 s: measured 0.1-0.3 s here, and bench/bench_owner.py reports it; not
    # asserted (timings on a shared machine are measured, not tested).
    print(f"owner input -> guest CPU stopped: {stopped * 1000:.0f} ms")
    suspended = last_transition(worker, "suspend")
    assert suspended is not None and suspended["from"] == "busy", suspended
    assert suspended["reason"].startswith("owner input"), suspended

    # No input for continue_idle (3 s): resumed, and it finishes its loop.
    wait_until(lambda: last_transition(worker, "resume") is not None, 15, "the guest resumes")
    resumed = last_transition(worker, "resume")
    assert resumed is not None
    frozen_for = resumed["at"] - suspended["at"]
    wait_until(lambda: jobs(requester)[0]["state"] in ("done", "failed"), 60, "the job ends", 0.5)
    (job,) = jobs(requester)
    assert job["job_id"] == job_id and job["state"] == "done", job
    assert job["worker"] == worker.node.peer_id and job["exit_code"] == 0
    paid = job["cpu_seconds"]
    print(f"paid {paid:.3f} CPU-s; wall {job['elapsed']:.1f} s, of which {frozen_for:.1f} frozen")
    # Paid for the loop's CPU (plus python's start-up), not for the time it was frozen: the
    # job's wall time holds both (less 0.5 s for the policy's 4 Hz sampling).
    assert BURN_CPU <= paid < BURN_CPU + 1.0
    assert frozen_for >= 2.5  # continue_idle (3 s) after the keystroke, less that sampling
    assert job["elapsed"] >= paid + frozen_for - 0.5
    assert credit(requester)["spent"] == pytest.approx(paid, abs=0.001)
    assert credit(worker.node)["earned"] == pytest.approx(paid, abs=0.001)


# -- (2) owner CPU load -------------------------------------------------------------------------


@contextlib.contextmanager
def skip_if_too_busy(worker: Worker) -> Iterator[None]:
    """Skip the test if a wait inside fails while other tests' load on this machine (owner load,
    to the worker: it cannot tell theirs from ours) keeps the worker from lending."""
    try:
        yield
    except AssertionError:
        report = worker.policy()
        blamed = [t["reason"] for t in report["transitions"] if t["to"] != "idle"]
        reasons = [report["reason"], *blamed]
        if any("owner load" in r for r in reasons):
            pytest.skip(f"this machine is too busy for a load test: {reasons[0]}")
        raise


def test_owner_cpu_load_suspends_the_guest(nodes: Cluster) -> None:
    requester = network(nodes)
    # Owner load is a share of the whole machine, guests excluded. With the burner and the guest
    # (one CPU) both running, both cores are busy and at most half of it is the guest's, so owner
    # load is at least 0.5: 0.45 for high_load_for (3 s, the default) suspends. Lending starts
    # at or below 0.45 too: any lower and other tests on this machine would keep it from ever
    # lending.
    worker = start_worker(
        nodes,
        "w",
        "--bootstrap",
        requester.addr,
        background_load=0.45,
        high_load=0.45,
        high_load_for="3s",
    )
    guest = GuestCgroup(worker.node.home)
    long_guest = ("python3", "-c", "while True: pass")
    with skip_if_too_busy(worker):
        wait_until(lambda: worker.state() == "idle", 25, "the worker lends")
        join(requester, worker)
        job_id = requester.rain("submit", "--time", "120s", "--", *long_guest).stdout.strip()
        cg = guest.wait_job(20)
        wait_until(lambda: worker.state() == "busy", 15, "the worker reports itself busy")

    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        started = time.monotonic()
        stopped = time_to_stop(cg, started)
        print(f"owner CPU burner -> guest CPU stopped: {stopped:.2f} s")
        suspended = last_transition(worker, "suspend")
        assert suspended is not None and suspended["from"] == "busy", suspended
        assert suspended["reason"].startswith("owner load"), suspended
        # Issue 5 asks for 5 s of sustained load: by design ~4 s (a partial one-second window,
        # three full ones, one 0.25 s tick), measured 1.5-3.7 s; printed above, not asserted.
        # The requester learns it from the worker's record (and would offer it nothing now).
        wait_until(
            lambda: state_seen_by(requester, worker.node.peer_id) == "suspended",
            15,
            "the requester sees the worker suspended",
        )
        # While the owner's load lasts the guest stays frozen (continue_idle is 2 s here).
        assert cg.is_frozen() and worker.state() == "suspended"
    finally:
        burner.kill()
        burner.wait(timeout=10)
    requester.rain("cancel", job_id)
    wait_until(lambda: jobs(requester)[0]["state"] == "cancelled", 30, "the job is cancelled")
    # Cancelled by its requester: what it used (while it was not frozen) is paid for.
    (job,) = jobs(requester)
    assert job["claim"] == job_id
    assert job["credit"] > 0
    assert credit(worker.node)["earned"] == pytest.approx(job["credit"], abs=0.001)


# -- (4) suspended too long: given back, re-run elsewhere ----------------------------------------


def test_a_job_suspended_too_long_is_given_up_and_rerun_elsewhere(nodes: Cluster) -> None:
    requester = network(nodes)
    # The owner left long ago (start_idle is 1 h, the keyboard's atime 2 h old): lends at once.
    # Once the owner types, neither resuming nor lending again comes before an hour of quiet.
    first = start_worker(
        nodes,
        "first",
        "--bootstrap",
        requester.addr,
        start_idle="1h",
        continue_idle="1h",
        max_suspend="3s",
    )
    join(requester, first)
    guest = GuestCgroup(first.node.home)
    job_id = requester.rain("submit", "--time", "60s", "--", *GUEST).stdout.strip()
    cg = guest.wait_job(30)
    assert jobs(requester)[0]["worker"] == first.node.peer_id
    wait_until(lambda: first.state() == "busy", 10, "the first worker reports itself busy")
    # The owner types while the guest runs (its 4 CPU-seconds take 4 s on an idle core:
    # starting the second worker first, the guest was often done before the keystroke).
    touched_at = time.time()
    time_to_stop(cg, first.touch())
    # Only now a second worker: the requester had no choice but the first, and reruns the
    # job there once the first gives it up.
    second = nodes.start(*WORKER, "--bootstrap", requester.addr, name="second")
    second.wait_ready()
    # Frozen for max_suspend (3 s), the guest is given up: killed, nothing claimed, and the
    # first worker stays in owner state (it lends again only after an hour without input).
    wait_until(lambda: guest.job() is None, 20, "the first worker gives the guest up")
    wait_until(lambda: jobs(requester)[0]["state"] in ("done", "failed"), 60, "the job ends", 0.5)
    ended_at = time.time()
    (job,) = jobs(requester)
    report = first.policy()
    gave_up = next(t["at"] for t in report["transitions"] if t["action"] == "give_up")
    print(
        f"given up {gave_up - touched_at:.1f} s after the keystroke, done elsewhere "
        f"{ended_at - gave_up:.1f} s later; first worker: {report['reason']}"
    )
    assert job["job_id"] == job_id and job["state"] == "done" and job["exit_code"] == 0, job
    # Two offers, one to each: the first worker was not offered the job again.
    assert job["worker"] == second.peer_id and job["attempts"] == 2
    assert report["state"] == "owner"
    assert credit(first.node)["earned"] == 0 and credit(first.node)["exchanges"] == 0
    assert credit(second)["earned"] == pytest.approx(job["cpu_seconds"], abs=0.001)
    assert credit(requester)["spent"] == pytest.approx(job["cpu_seconds"], abs=0.001)
    assert BURN_CPU <= job["cpu_seconds"] < BURN_CPU + 1.0  # the second run's CPU only
    # The requester skips the first worker from now on: its record says owner.
    wait_until(
        lambda: state_seen_by(requester, first.node.peer_id) == "owner",
        15,
        "the requester sees the first worker in owner state",
    )


def test_submit_to_an_owner_only_network_fails_naming_why(lone_owner: LoneOwner) -> None:
    """(The verdict of the submission made in test_a_worker_in_owner_state_is_skipped.)"""
    if lone_owner.submit is None:  # run on its own
        lone_owner.submit_and_wait()
    assert lone_owner.submit is not None
    left = QUEUE_LIMIT + 30 - (time.monotonic() - lone_owner.submitted)
    took, out, err = lone_owner.wait_verdict(left)
    print(f"rain submit --wait: exit {lone_owner.submit.returncode} after {took:.0f} s: {err}")
    assert lone_owner.submit.returncode == 1 and out == ""
    assert "rain: job " in err and "waiting: 1 worker is in owner state" in err  # as it waited
    assert f"waited {QUEUE_LIMIT:g}s (its queue limit): 1 worker is in owner state" in err
    assert credit(lone_owner.worker.node)["earned"] == 0
