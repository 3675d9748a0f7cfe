"""MPI groups between real nodes on 127.0.0.1: `rain mpi run` assembles a group of idle peers,
hydra's mpiexec launches the ranks through rainnet's agent into each member's sandbox, their
output comes back rank-prefixed, exit codes pass through, a failing rank ends the group with
nothing left running, and each member is paid for its own ranks' CPU-seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.nodes import (
    PYTHON,
    Cluster,
    NodeProcess,
    credit,
    requester_and_workers,
    wait_until,
)

RING = """
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
total = comm.allreduce(rank + 1)
token = comm.sendrecv(rank, dest=(rank + 1) % size, source=(rank - 1) % size)
print(f"rank {rank} of {size}: sum {total}, got {token} from the left", flush=True)
"""

FAIL = """
import sys
from mpi4py import MPI
comm = MPI.COMM_WORLD
if comm.Get_rank() == 1:
    sys.exit(3)
comm.Barrier()  # the others wait here for a rank that never comes
"""

# 3 ranks on 2 members (2 + 1): ranks meet both inside a member and across members.
GROUP = ("-n", "3", "--per-node", "2", "--cpus-per-rank", "0.5", "--mem", "128M")


def program(tmp_path: Path, text: str) -> Path:
    """The program under a name of its own, so the test finds its ranks, and only its own."""
    path = tmp_path / f"rank_{uuid.uuid4().hex[:12]}.py"
    path.write_text(text)
    return path


def running(name: str) -> list[int]:
    """Processes anywhere on this machine whose command line names `name`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if name.encode() in cmdline:
            found.append(int(pid))
    return found


def mpi_run(req: NodeProcess, prog: Path, *extra: str) -> tuple[int, str, str]:
    res = req.rain(
        "mpi", "run", *GROUP, *extra, "--input", str(prog), "--", "python3", prog.name,
        timeout=90, check=False,
    )  # fmt: skip
    return res.returncode, res.stdout, res.stderr


def _group(cluster: Cluster) -> tuple[NodeProcess, list[NodeProcess]]:
    req, workers = requester_and_workers(cluster, 2)
    wait_until(lambda: all(p.get("mpi") for p in req.peers()), 30, "the members take MPI")
    return req, workers


@pytest.fixture(scope="module")
def shared_nodes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NodeProcess, list[NodeProcess]]]:
    """One requester and two members for the tests that leave them as they were (each run's
    members are paid once per run: the paid test runs first)."""
    cluster = Cluster(tmp_path_factory.mktemp("mpi-nodes"))
    try:
        yield _group(cluster)
    finally:
        cluster.stop_all()


@pytest.fixture
def group_nodes(cluster: Cluster) -> tuple[NodeProcess, list[NodeProcess]]:
    """Nodes of this test's own (it kills or stops one)."""
    return _group(cluster)


def test_a_group_across_two_members_computes_and_each_is_paid(
    shared_nodes: tuple[NodeProcess, list[NodeProcess]], tmp_path: Path
) -> None:
    req, workers = shared_nodes
    hosts = req.rain("mpi", "hosts", *GROUP[:4]).stdout.split()
    assert sorted(hosts) == ["127.0.0.1:1", "127.0.0.1:2"]

    prog = program(tmp_path, RING)
    code, out, err = mpi_run(req, prog, "-l", "--json")
    assert code == 0, err
    lines = sorted(err.splitlines())  # (--json: the ranks' output goes to stderr)
    ranks = [line for line in lines if line[:1].isdigit()]
    assert ranks == [
        f"{r}: rank {r} of 3: sum 6, got {(r - 1) % 3} from the left" for r in range(3)
    ], err
    summary = json.loads(out)
    assert summary["exit_code"] == 0 and summary["ranks"] == 3
    members = {m["peer_id"]: m for m in summary["members"]}
    assert set(members) == {w.peer_id for w in workers}
    assert sorted(m["ranks"] for m in members.values()) == [1, 2]
    jobs = {j["worker"]: j for j in summary["jobs"]}
    assert set(jobs) == set(members)
    assert all(j["state"] == "done" and j["exit_code"] == 0 for j in jobs.values()), jobs
    assert not running(prog.name)
    # Each member is paid for its own ranks' CPU-seconds (what its sandbox measured), once.
    for w in workers:
        job = jobs[w.peer_id]
        assert job["cpu_seconds"] > 0
        assert credit(w)["earned"] == pytest.approx(job["cpu_seconds"], abs=0.002)
        assert credit(w)["exchanges"] == 1
        w.rain("credit", "verify")
    listed = {j["job_id"] for j in req.rain_json("jobs")}
    assert {j["job_id"] for j in jobs.values()} <= listed  # each member's part is a job


def test_a_failing_rank_ends_the_group_and_nothing_is_left(
    shared_nodes: tuple[NodeProcess, list[NodeProcess]], tmp_path: Path
) -> None:
    req, _ = shared_nodes
    prog = program(tmp_path, FAIL)
    code, _, err = mpi_run(req, prog, "-l")
    assert code != 0
    # Under mpi4py's runner its sys.exit(3) aborts the group (run plainly, it hung in
    # MPI_Finalize while the others waited in their barrier).
    assert "1: Abort(3) on node 1 (rank 1 in comm 0)" in err, err
    # The other ranks were waiting in a barrier: hydra killed them, everywhere.
    wait_until(lambda: not running(prog.name), 10, "no rank of the failed group runs")

    # The exit code of a plain program passes through.
    prog = program(tmp_path, "import sys\nfrom mpi4py import MPI\nsys.exit(0)\n")
    code, _, err = mpi_run(req, prog)
    assert code == 0, err


OUTPUTS = r"""
import os
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
os.makedirs("ranks", exist_ok=True)
with open(f"ranks/{rank}.txt", "w") as f:
    f.write(f"rank {rank}\n")
with open("all.txt", "a") as f:  # one on each member, with the lines of its ranks
    f.write(f"{rank}\n")
if rank == 0:
    with open("result.txt", "w") as f:
        f.write("42\n")
"""


def test_the_members_output_files_come_back(
    shared_nodes: tuple[NodeProcess, list[NodeProcess]], tmp_path: Path
) -> None:
    req, _ = shared_nodes
    prog = program(tmp_path, OUTPUTS)
    here = tmp_path / "here"
    here.mkdir()
    res = req.rain(
        "mpi", "run", *GROUP, "--input", str(prog), "--output", "result.txt", "--output",
        "ranks", "--output", "all.txt", "--output", "missing.txt", "--", "python3", prog.name,
        timeout=90, check=False, cwd=here,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr  # (missing.txt: no member left it)
    assert "rain: no member left missing.txt" in res.stderr
    assert (here / "result.txt").read_text() == "42\n"  # one member left it: here
    assert sorted(p.name for p in (here / "ranks").iterdir()) == ["0.txt", "1.txt", "2.txt"]
    assert (here / "ranks" / "2.txt").read_text() == "rank 2\n"
    # Both members left all.txt: each copy in its member's folder (ranks 0-1, then 2).
    assert sorted((here / "member-0" / "all.txt").read_text().split()) == ["0", "1"]
    assert (here / "member-1" / "all.txt").read_text() == "2\n"
    assert not (here / "all.txt").exists()
    assert sorted(p.name for p in here.iterdir()) == ["member-0", "member-1", "ranks", "result.txt"]
    assert sorted(p.name for p in (here / "member-0").iterdir()) == ["all.txt"]  # (not the logs)


def test_a_group_that_cannot_form_says_why(
    shared_nodes: tuple[NodeProcess, list[NodeProcess]], tmp_path: Path
) -> None:
    req, _ = shared_nodes
    res = req.rain("mpi", "run", "-n", "9", "--per-node", "2", "--", "true", check=False)
    assert res.returncode == 1
    assert "need 9 ranks; 2 idle peers take MPI" in res.stderr
    assert "room for 4 ranks at 2 per node" in res.stderr
    # Within the members' room but past our credit floor, for the whole group at its limits
    # (each member's part alone would pass its own check).
    res = req.rain(
        "mpi", "run", "-n", "4", "--per-node", "2", "--time", "1h", "--", "true", check=False
    )
    assert res.returncode == 1
    assert "the group of 4 ranks was refused: your verified balance is" in res.stderr
    assert "may cost up to 14400 (4 CPUs, 0 GPUs, 3600 s)" in res.stderr, res.stderr


LOOP = """
import time
from mpi4py import MPI
comm = MPI.COMM_WORLD
print("started", flush=True)
while True:  # until the group is ended from outside
    comm.Barrier()
    time.sleep(0.05)
"""


@pytest.mark.parametrize("how", ["kill -9", "silent"])
def test_a_lost_member_ends_the_group_and_nothing_is_left(
    group_nodes: tuple[NodeProcess, list[NodeProcess]], tmp_path: Path, how: str
) -> None:
    """A member's node killed (its connections reset), or silent (stopped: no FIN, no RST,
    its ranks still running): the group ends, within the failure bounds, everywhere."""
    req, workers = group_nodes
    prog = program(tmp_path, LOOP)
    cmd = [PYTHON, "-m", "node.cli", "--home", str(req.home), "mpi", "run", *GROUP]
    cmd += ["--input", str(prog), "--", "python3", prog.name]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(running(prog.name)) >= 3, 30, "the ranks run")
        lost = workers[1]
        if how == "kill -9":
            lost.kill9()
        else:
            lost.signal(signal.SIGSTOP)
        try:
            # 2 s for a rank that dies, 10 s for a member that vanishes silently: the bound
            # of this wait, not a measurement (bench/ measures).
            code = run.wait(
                timeout=25
            )  # (the group ends within 10 s; naming the member may take LOST_WAIT more)
            assert code != 0
            wait_until(lambda: not running(prog.name), 10, "no rank of the group runs")
        finally:
            lost.signal(signal.SIGCONT)
        err = run.stderr.read() if run.stderr else ""
        assert f"rain: member {lost.peer_id[-8:]} (127.1.0." in err, err
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=10)


def test_members_are_paid_for_what_ran_when_the_requester_vanished(
    group_nodes: tuple[NodeProcess, list[NodeProcess]], tmp_path: Path
) -> None:
    """The requester killed mid-run: each member ends its ranks (they cannot go on without
    their launcher), claims what they used, and holds that claim; the requester, back, pays
    it, and both chains verify."""
    req, workers = group_nodes
    prog = program(tmp_path, LOOP)
    cmd = [PYTHON, "-m", "node.cli", "--home", str(req.home), "mpi", "run", *GROUP]
    cmd += ["--input", str(prog), "--", "python3", prog.name]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(running(prog.name)) >= 3, 30, "the ranks run")
        req.kill9()
        wait_until(lambda: not running(prog.name), 15, "the members end the group's ranks")
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=10)
    assert all(credit(w)["earned"] == 0 for w in workers)
    req.args += ["--bootstrap", workers[0].addr]  # (its own address changes with the restart)
    req.start().wait_ready()
    wait_until(lambda: all(credit(w)["earned"] > 0 for w in workers), 60, "the members are paid")
    spent = credit(req)["spent"]
    assert spent == pytest.approx(sum(credit(w)["earned"] for w in workers), abs=0.002)
    for node in (req, *workers):
        node.rain("credit", "verify")


def test_the_group_is_a_job_in_rain_jobs_logs_get_and_cancel(
    shared_nodes: tuple[NodeProcess, list[NodeProcess]], tmp_path: Path
) -> None:
    req, _ = shared_nodes
    prog = program(tmp_path, RING)
    res = req.rain(
        "mpi", "run", *GROUP, "--name", "ring-test", "-l", "--input", str(prog), "--",
        "python3", prog.name, timeout=90,
    )  # fmt: skip
    first = res.stderr.splitlines()[0]
    assert first.startswith("rain: MPI group ") and first.endswith(": 3 ranks on 2 members")
    group = first.split()[3].rstrip(":")

    # One row for the group, its members its tasks (settled just after the run: mpiexec
    # waits for the members' proxies to end, not for their claims).
    def group_row() -> str:
        (line,) = [line for line in req.rain("jobs").stdout.splitlines() if group in line]
        return line

    wait_until(lambda: " ended " in group_row(), 10, "the group's members are settled")
    row = group_row()
    assert row.split()[:3] == [f"{group}[2]", "ring-test", "ended"], row
    assert "2 workers" in row and row.endswith("2/2 done"), row
    expanded = req.rain("jobs", "--expand").stdout
    assert f"{group}_0" in expanded and f"{group}_1" in expanded
    # Its output is the ranks' (they reach us through mpiexec), as `rain mpi run` printed it.
    logs = req.rain("logs", group).stdout
    assert logs == res.stdout and "2: rank 2 of 3: sum 6" in logs
    got = req.rain("get", group, "--to", str(tmp_path / "got")).stdout
    assert {Path(p).parent.name for p in got.split()} == {f"{group}_0", f"{group}_1"}

    # `rain cancel` of the group's id ends it everywhere.
    loop = program(tmp_path, LOOP)
    cmd = [PYTHON, "-m", "node.cli", "--home", str(req.home), "mpi", "run", *GROUP]
    run = subprocess.Popen(
        [*cmd, "--input", str(loop), "--", "python3", loop.name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(running(loop.name)) >= 3, 30, "the ranks run")
        assert run.stderr is not None
        running_group = run.stderr.readline().split()[3].rstrip(":")
        req.rain("cancel", running_group)
        assert run.wait(timeout=30) != 0
        wait_until(lambda: not running(loop.name), 10, "no rank of the group runs")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=10)
    states = {j["state"] for j in json.loads(req.rain("jobs", "--json").stdout)
              if j["job_id"].startswith(running_group)}  # fmt: skip
    assert states == {"cancelled"}, states
