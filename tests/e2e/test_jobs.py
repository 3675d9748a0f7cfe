"""Jobs across the network between real nodes: a requester's jobs run on idle peers' sandboxes,
come back with their output, and the credit moved equals the CPU-seconds the workers measured."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.nodes import (
    REQUESTER,
    WORKER,
    Cluster,
    all_see_each_other,
    credit,
    paid_claims,
    requester_and_workers,
    wait_until,
)


def test_200_jobs_run_on_peers_and_credit_matches_cpu_seconds(cluster: Cluster) -> None:
    """4 nodes: 200 small jobs from one run on the other three, each with its own output."""
    requester, workers = requester_and_workers(cluster, 3)
    n = 200
    submitted = requester.rain(
        "submit",
        "--json",
        "--time",
        "60s",
        "--array",
        f"0-{n - 1}",
        "--",
        "sh",
        "-c",
        "echo job-$RAIN_ARRAY_TASK_ID",
        timeout=120,
    ).stdout
    ids = json.loads(submitted)["job_ids"]
    assert len(ids) == n and ids[7] == f"{json.loads(submitted)['array_id']}_7"

    def finished() -> bool:
        jobs = json.loads(requester.rain("jobs", "--json").stdout)
        return all(j["state"] in ("done", "failed") for j in jobs) and len(jobs) == n

    wait_until(finished, 240, f"{n} jobs finish", interval=1.0)
    jobs = {j["job_id"]: j for j in json.loads(requester.rain("jobs", "--json").stdout)}
    assert all(jobs[i]["state"] == "done" for i in ids), [jobs[i]["error"] for i in ids]
    for i, job_id in enumerate(ids):
        assert requester.rain_here("logs", job_id) == f"job-{i}\n"
        assert jobs[job_id]["exit_code"] == 0
    assert {jobs[i]["worker"] for i in ids} <= {w.peer_id for w in workers}

    # Most went through task sessions, paid in groups: each job names the exchange that paid
    # it, and the requester's history holds exactly those, once each.
    claims = [jobs[i]["claim"] for i in ids]
    assert all(claims)
    assert sorted(paid_claims(requester)) == sorted(set(claims))
    assert len(set(claims)) < n // 4
    paid = sum(jobs[i]["cpu_seconds"] for i in ids)
    spent = credit(requester)
    earned = [credit(w) for w in workers]
    assert spent["spent"] == pytest.approx(sum(e["earned"] for e in earned), abs=1e-9)
    assert abs(spent["spent"] - paid) < 0.001 * n
    assert spent["balance"] == -spent["spent"]
    for node in [requester, *workers]:
        assert node.rain("credit", "verify").returncode == 0
    # Every job stream was closed at both ends: py-libp2p holds a stream (and one of its 8192
    # slots) until then, and a requester that left them half-open could open none after 8192
    # jobs. What stays open: heartbeats and the like, a few per peer.
    for node in [requester, *workers]:
        assert node.rain_json("status")["streams"] < 20, node.rain_json("status")


def test_wait_streams_output_and_returns_the_exit_code(cluster: Cluster, tmp_path: Path) -> None:
    requester, _ = requester_and_workers(cluster, 1)
    data = tmp_path / "numbers.txt"
    data.write_text("3\n4\n")
    res = requester.rain(
        "submit",
        "--wait",
        "--input",
        f"{data}:in.txt",
        "--output",
        "sum.txt",
        "--",
        "sh",
        "-c",
        "echo summing; awk '{s+=$1} END {print s}' in.txt > sum.txt; exit 3",
        check=False,
        timeout=60,
    )
    assert res.returncode == 3
    assert res.stdout == "summing\n"
    (job,) = json.loads(requester.rain("jobs", "--json").stdout)
    out = tmp_path / "out"
    got = requester.rain("get", job["job_id"], "--to", str(out)).stdout
    assert (out / "sum.txt").read_text() == "7\n"
    assert "sum.txt" in got


def test_cancel_reaches_the_worker_and_frees_it(cluster: Cluster) -> None:
    requester, (worker,) = requester_and_workers(cluster, 1)
    job_id = requester.rain("submit", "--", "sleep", "300").stdout.strip()
    wait_until(
        lambda: json.loads(requester.rain("jobs", "--json").stdout)[0]["state"] == "running",
        30,
        "the job runs",
    )
    requester.rain("cancel", job_id)
    wait_until(
        lambda: json.loads(requester.rain("jobs", "--json").stdout)[0]["state"] == "cancelled",
        20,
        "the job is cancelled",
    )
    # The worker is free again: a job wanting all its CPUs runs (it would be refused if the
    # cancelled one still held its share).
    # What it used until then is owed, and paid (a cancel buys no free work).
    (cancelled,) = json.loads(requester.rain("jobs", "--json").stdout)
    assert cancelled["claim"] == job_id and 0 < cancelled["credit"] < 1.0
    cpus = str(worker.rain_json("status")["cpus"])
    res = requester.rain("submit", "--wait", "--cpus", cpus, "--", "echo", "next", timeout=60)
    assert res.stdout == "next\n"
    assert credit(worker)["exchanges"] == 2
    assert credit(worker)["earned"] == pytest.approx(credit(requester)["spent"], abs=0.001)


def test_cancel_reaches_tasks_in_a_task_session(cluster: Cluster) -> None:
    """An array rides task sessions: its running tasks are cancelled there (and paid for what
    they used), and those still waiting never run; the worker is free again."""
    requester, (worker,) = requester_and_workers(cluster, 1)
    array = requester.rain("submit", "--array", "0-5", "--", "sleep", "300").stdout.strip()

    def jobs() -> dict[str, Any]:
        return {j["job_id"]: j for j in json.loads(requester.rain("jobs", "--json").stdout)}

    wait_until(lambda: any(j["state"] == "running" for j in jobs().values()), 30, "a task runs")
    requester.rain("cancel", array)  # the array's id: every task of it
    wait_until(
        lambda: all(j["state"] == "cancelled" for j in jobs().values()), 20, "all are cancelled"
    )
    cpus = str(worker.rain_json("status")["cpus"])
    res = requester.rain("submit", "--wait", "--cpus", cpus, "--", "echo", "next", timeout=60)
    assert res.stdout == "next\n"
    ran = [j for j in jobs().values() if j["array_id"] == array and j["claim"]]
    assert 1 <= len(ran) <= 2  # the worker's two slots: the rest never started, and cost nothing
    claims = {j["claim"] for j in ran}
    assert credit(worker)["exchanges"] == len(claims) + 1  # those, and the last job
    assert "task session to" not in requester.log()  # (none was lost or failed)
    assert "task session" in worker.log()  # (the jobs did ride one)


def test_no_worker_gets_a_clear_message(cluster: Cluster) -> None:
    lone = cluster.start(*REQUESTER)
    lone.wait_ready()
    res = lone.rain("submit", "--queue-limit", "8s", "--wait", "--", "true", check=False)
    assert res.returncode == 1
    assert "waiting: no workers known yet" in res.stderr  # said as it waited, and at the end:
    assert "waited 8s (its queue limit): no workers known yet" in res.stderr


def test_files_of_100_mib_go_in_and_out_intact(cluster: Cluster, tmp_path: Path) -> None:
    requester, _ = requester_and_workers(cluster, 1)
    big = tmp_path / "big.bin"
    chunk = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB, not all zeros
    with big.open("wb") as f:
        for i in range(100):
            f.write(bytes([i]) + chunk[1:])
    res = requester.rain(
        "submit",
        "--wait",
        "--mem",
        "256M",
        "--input",
        f"{big}:in.bin",
        "--output",
        "out.bin",
        "--",
        "sh",
        "-c",
        "sha256sum in.bin && cat in.bin > out.bin",
        timeout=300,
    )
    assert res.stdout.split()[0] == hashlib.sha256(big.read_bytes()).hexdigest()
    (job,) = json.loads(requester.rain("jobs", "--json").stdout)
    out = tmp_path / "out"
    requester.rain("get", job["job_id"], "--to", str(out))
    assert (out / "out.bin").read_bytes() == big.read_bytes()


def test_a_worker_without_task_sessions_gets_jobs_one_by_one(cluster: Cluster) -> None:
    """A worker of the version before task sessions (it does not speak /rain/tasks): an array
    runs there all the same, each job offered and paid on its own."""
    requester = cluster.start(*REQUESTER, name="req")
    requester.wait_ready()
    older = cluster.start(
        *WORKER, "--bootstrap", requester.addr, name="older", module="tests.e2e.older_worker"
    )
    older.wait_ready()
    wait_until(lambda: all_see_each_other([requester, older]), 30, "two nodes meet")
    wait_until(lambda: all(p["backends"] for p in requester.peers()), 20, "the sandbox shows")
    res = requester.rain(
        "submit", "--array", "0-5", "--wait", "--", "sh", "-c", "echo $RAIN_ARRAY_TASK_ID",
        timeout=120,
    )  # fmt: skip
    assert res.stdout.split() == [str(i) for i in range(6)]
    jobs = json.loads(requester.rain("jobs", "--json").stdout)
    assert sorted(paid_claims(requester)) == sorted(j["job_id"] for j in jobs)


def test_a_worker_returning_a_wrong_result_is_outvoted_and_unpaid(cluster: Cluster) -> None:
    requester = cluster.start(*REQUESTER, name="req")
    requester.wait_ready()
    honest = cluster.start(*WORKER, "--bootstrap", requester.addr, name="honest")
    cheat = cluster.start(
        *WORKER, "--bootstrap", requester.addr, name="cheat", module="tests.e2e.cheating_node"
    )
    for node in (honest, cheat):
        node.wait_ready()
    wait_until(lambda: all_see_each_other([requester, honest, cheat]), 30, "3 nodes meet")
    wait_until(lambda: all(p["backends"] for p in requester.peers()), 20, "sandboxes show")

    job_id = requester.rain("submit", "--replicas", "2", "--", "echo", "42").stdout.strip()
    # Both replicas are under way on the only two workers; their results will disagree, and
    # the run that decides needs a third worker: it joins now.
    wait_until(lambda: requester.rain_json("jobs")[0]["attempts"] >= 2, 30, "two replicas run")
    tiebreak = cluster.start(*WORKER, "--bootstrap", requester.addr, name="tiebreak")
    tiebreak.wait_ready()
    wait_until(
        lambda: requester.rain_json("jobs")[0]["state"] in ("done", "failed"), 90, "a verdict"
    )
    (job,) = requester.rain_json("jobs")
    assert job["state"] == "done", job["error"]
    assert requester.rain("logs", job_id).stdout == "42\n"
    assert cheat.rain_json("credit")["earned"] == 0
    assert honest.rain_json("credit")["earned"] > 0
    assert tiebreak.rain_json("credit")["earned"] > 0
    assert requester.rain_json("credit")["spent"] == pytest.approx(
        honest.rain_json("credit")["earned"] + tiebreak.rain_json("credit")["earned"]
    )
    # Remembered: the cheat is offered nothing more.
    requester.rain("submit", "--wait", "--", "true", timeout=60)
    assert cheat.rain_json("credit")["exchanges"] == 0
    # Also after the requester restarts (on a new port: it joins through the honest worker).
    # Four jobs at once would spread over all three workers if it trusted the cheat again.
    requester.stop()
    requester.args += ["--bootstrap", honest.addr]
    requester.start()
    requester.wait_ready()
    everyone = [requester, honest, cheat, tiebreak]
    wait_until(lambda: all_see_each_other(everyone), 30, "all meet again")
    wait_until(lambda: all(p["backends"] for p in requester.peers()), 20, "sandboxes show")
    requester.rain("submit", "--array", "1-4", "--wait", "--", "true", timeout=120)
    assert cheat.rain_json("credit")["exchanges"] == 0


def test_array_jobs_from_a_job_file(cluster: Cluster, tmp_path: Path) -> None:
    requester, _ = requester_and_workers(cluster, 2)
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        'command = ["sh", "-c", "echo task $RAIN_ARRAY_TASK_ID of $GREETING"]\n'
        'time = "1m"\nmem = "64M"\narray = "1-3,7"\n[env]\nGREETING = "four"\n'
    )
    res = requester.rain("submit", "--file", str(job_file), "--wait", timeout=120)
    assert res.stdout.splitlines() == [f"task {i} of four" for i in (1, 2, 3, 7)]
    array = requester.rain("submit", "--file", str(job_file), "--array", "0-1").stdout.strip()
    assert [j["job_id"] for j in requester.rain_json("jobs") if j["array_id"] == array] == [
        f"{array}_0",
        f"{array}_1",
    ]
    bad = requester.rain("submit", "--array", "5-2", "--", "true", check=False)
    assert bad.returncode == 1 and "runs backwards" in bad.stderr
