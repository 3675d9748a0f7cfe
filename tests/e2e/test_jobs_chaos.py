"""Jobs survive crashes: a requester killed mid-job takes its jobs back when it restarts, and with
workers killed and restarted at random every job completes exactly once, paid exactly once."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from tests.e2e.nodes import (
    REQUESTER,
    WORKER,
    Cluster,
    NodeProcess,
    all_see_each_other,
    credit,
    paid_claims,
    wait_until,
)


def _jobs(node: NodeProcess) -> dict[str, dict[str, Any]]:
    return {j["job_id"]: j for j in json.loads(node.rain("jobs", "--json").stdout)}


def _worker_and_requester(cluster: Cluster) -> tuple[NodeProcess, NodeProcess]:
    """A worker, and a requester that joins through it (so after a restart on a new port, the
    requester finds the worker again)."""
    worker = cluster.start(*WORKER)
    worker.wait_ready()
    requester = cluster.start(*REQUESTER, "--bootstrap", worker.addr, name="req")
    requester.wait_ready()
    wait_until(lambda: all_see_each_other([requester, worker]), 30, "two nodes meet")
    wait_until(lambda: requester.peers()[0]["backends"] != [], 20, "the worker's sandbox shows")
    return worker, requester


def test_a_restarted_requester_takes_its_jobs_back(cluster: Cluster) -> None:
    worker, requester = _worker_and_requester(cluster)

    job_id = requester.rain("submit", "--", "sh", "-c", "sleep 2; echo survived").stdout.strip()
    wait_until(lambda: _jobs(requester)[job_id]["state"] == "running", 30, "the job runs")
    requester.kill9()
    requester.start()
    requester.wait_ready()
    wait_until(lambda: _jobs(requester)[job_id]["state"] == "done", 60, "the job completes")
    assert requester.rain("logs", job_id).stdout == "survived\n"
    assert paid_claims(requester) == [job_id]  # paid once
    assert credit(worker)["exchanges"] == 1


def test_chaos_every_job_completes_exactly_once(cluster: Cluster) -> None:
    rng = random.Random(7)
    requester = cluster.start(*REQUESTER, name="req")
    requester.wait_ready()
    workers = [cluster.start(*WORKER, "--bootstrap", requester.addr) for _ in range(5)]
    for w in workers:
        w.wait_ready()
    wait_until(lambda: all_see_each_other([requester, *workers]), 40, "6 nodes meet")

    n = 30
    ids = [
        requester.rain(
            "submit", "--", "sh", "-c", f"sleep 0.{rng.randint(2, 9)}; echo {i}"
        ).stdout.strip()
        for i in range(n)
    ]
    # Kill -9 and restart workers at random while the jobs run.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        victim = rng.choice(workers)
        victim.kill9()
        time.sleep(rng.uniform(0.2, 1.0))
        victim.start()
        victim.wait_ready()
        if all(j["state"] in ("done", "failed") for j in _jobs(requester).values()):
            break
        time.sleep(rng.uniform(0.5, 1.5))

    wait_until(
        lambda: all(j["state"] in ("done", "failed") for j in _jobs(requester).values()),
        180,
        "every job ends",
        interval=1.0,
    )
    jobs = _jobs(requester)
    failed = {i: (jobs[i]["error"], jobs[i]["attempts"]) for i in ids if jobs[i]["state"] != "done"}
    assert not failed
    for i, job_id in enumerate(ids):
        assert requester.rain("logs", job_id).stdout == f"{i}\n"

    # Exactly once: each job names the one exchange that paid it (its own, or its task
    # session's group), each of those was paid once and nothing else was paid, and credit is
    # conserved between requester and workers.
    claims = [jobs[i]["claim"] for i in ids]
    assert all(claims)
    assert sorted(paid_claims(requester)) == sorted(set(claims))
    spent = credit(requester)["spent"]
    earned = sum(credit(w)["earned"] for w in workers)
    assert abs(spent - earned) < 1e-9
    assert abs(spent - sum(float(jobs[i]["cpu_seconds"]) for i in ids)) < 0.001 * n
    for node in [requester, *workers]:
        assert node.rain("credit", "verify").returncode == 0


def test_a_vanished_requester_is_paid_for_when_it_returns(cluster: Cluster) -> None:
    """The requester dies while its job runs; the worker finishes it, holds the result and its
    signed claim, and settles when the requester is back: done once, paid once."""
    worker, requester = _worker_and_requester(cluster)

    job_id = requester.rain("submit", "--", "sh", "-c", "sleep 2; echo kept").stdout.strip()
    wait_until(lambda: _jobs(requester)[job_id]["state"] == "running", 30, "the job runs")
    requester.kill9()
    wait_until(lambda: "holding its result" in worker.log(), 30, "the worker holds the result")
    requester.start()
    requester.wait_ready()
    wait_until(lambda: _jobs(requester)[job_id]["state"] == "done", 60, "the job completes")
    assert requester.rain("logs", job_id).stdout == "kept\n"
    assert paid_claims(requester) == [job_id]
    assert credit(worker)["exchanges"] == 1
    assert "held result of job" in worker.log()


def test_a_vanished_requester_is_paid_for_a_task_sessions_group(cluster: Cluster) -> None:
    """An array rides task sessions; the requester dies with tasks run and not yet settled: the
    worker holds them as one group with its claim, and settles it when the requester is back.
    Every job is done once, and paid once, through the exchange it names."""
    worker, requester = _worker_and_requester(cluster)
    array = requester.rain(
        "submit", "--array", "0-7", "--", "sh", "-c", "sleep 0.5; echo t$RAIN_ARRAY_TASK_ID"
    ).stdout.strip()
    ids = [f"{array}_{i}" for i in range(8)]
    wait_until(
        lambda: any(j["state"] == "settling" for j in _jobs(requester).values()),
        30,
        "a task is claimed and waits for its group's settlement",
        interval=0.05,
    )
    requester.kill9()
    wait_until(lambda: "holding its result" in worker.log(), 30, "the worker holds the group")
    requester.start()
    requester.wait_ready()
    wait_until(
        lambda: all(j["state"] == "done" for j in _jobs(requester).values()),
        90,
        "every job completes",
    )
    jobs = _jobs(requester)
    for i, job_id in enumerate(ids):
        assert requester.rain("logs", job_id).stdout == f"t{i}\n"
    claims = {jobs[i]["claim"] for i in ids}
    assert None not in claims
    assert sorted(paid_claims(requester)) == sorted(claims)
    assert credit(worker)["exchanges"] == len(claims)
    assert "held result of job" in worker.log()
    assert "jobs it held for us" in requester.log()  # (a group's, not one job's)
    for node in (requester, worker):
        assert node.rain("credit", "verify").returncode == 0
