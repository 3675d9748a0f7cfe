"""Why a job waits, as `rain jobs --json` (REASON) and `rain submit --wait` say it, with real
nodes on 127.0.0.1: on CPUs nobody has (it fails at once), on busy workers, on memory, on the
credit floor. (On owner state: tests/e2e/test_owner_first.py.)"""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.nodes import Cluster, NodeProcess, requester_and_workers, wait_until

GiB = 1 << 30


def _job(node: NodeProcess, job_id: str) -> dict[str, Any]:
    return next(j for j in node.rain_json("jobs") if j["job_id"] == job_id)


def _waits_saying(node: NodeProcess, job_id: str, words: str) -> str:
    said: list[str] = []  # every reason it gave, in order (for the message if it never says it)

    def says() -> bool:
        job = _job(node, job_id)
        now = job["pending_reason"] or f"({job['state']}: {job['how']})"
        if not said or said[-1] != now:
            said.append(now)
        return words in now

    try:
        wait_until(says, 60, f"job {job_id} waits saying {words!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it said: {said}") from None
    return said[-1]


def test_a_job_says_why_it_waits(cluster: Cluster) -> None:
    requester, [worker] = requester_and_workers(cluster, 1)
    [me] = [p for p in requester.peers() if p["peer_id"] == worker.peer_id]
    cpus, memory = me["cpus"], me["memory"]

    # CPUs nobody has: it fails within seconds, naming the largest there is.
    began = time.monotonic()
    res = requester.rain("submit", "--cpus", "1000", "--wait", "--", "true", check=False)
    took = time.monotonic() - began
    print(f"an impossible job failed after {took:.1f} s: {res.stderr.strip()}")
    assert res.returncode == 1
    assert f"no worker has 1000 CPUs (largest: {cpus:g})" in res.stderr

    # Busy: a first job takes all CPUs but one, and half the memory and more.
    first = requester.rain(
        "submit", "--cpus", f"{cpus - 1:g}", "--mem", f"{memory // 2 + GiB}", "--time", "5m",
        "--", "sleep", "240",
    ).stdout.strip()  # fmt: skip
    wait_until(
        lambda: _job(requester, first)["state"] == "running",
        30,
        f"the first job runs ({_job(requester, first)})",
    )
    second = requester.rain("submit", "--cpus", "2", "--", "true").stdout.strip()
    said = _waits_saying(requester, second, f"declined: only 1 of {cpus:g} CPUs free")
    assert "REASON" in requester.rain("jobs").stdout.splitlines()[0]
    wait_until(
        lambda: "declined: only 1 of" in requester.rain("jobs").stdout,
        40,
        "the table shows the reason",
    )
    requester.rain("cancel", second)

    # Memory: what is left beside the first job is less than the next one asks.
    third = requester.rain(
        "submit", "--cpus", "1", "--mem", f"{memory // 2 + GiB}", "--", "true"
    ).stdout.strip()
    said = _waits_saying(requester, third, "declined: not enough free memory for")
    requester.rain("cancel", third)
    requester.rain("cancel", first)

    # The credit floor: a newcomer's floor of -3600 credits buys no 4 CPU-hours.
    dear = requester.rain("submit", "--cpus", "2", "--time", "2h", "--", "true").stdout.strip()
    said = _waits_saying(requester, dear, "declined: credit:")
    assert "earn credit" in said.lower(), said  # (the newcomer budget, or the floor)
    requester.rain("cancel", dear)
