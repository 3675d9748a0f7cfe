"""An MPI group whose member's owner comes back (issue 15, "Failure"): that member's ranks are
frozen by its idle policy, the other members' ranks are held with them (frozen too: they would
spin in their next collective), and when the owner has gone again the whole group resumes and
computes the right result; `rain mpi run` says what happened. Real nodes on 127.0.0.1, two
members with a `[policy]` each and a "keyboard" (tests/e2e/owner_helpers.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.nodes import PYTHON, Cluster, wait_until
from tests.e2e.owner_helpers import GuestCgroup, Worker, join, network, start_worker
from tests.e2e.test_mpi import program, running

# (alone: the owner's CPU load is the machine's, so another test's load would be the owner's)
pytestmark = [
    pytest.mark.alone,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: ranks run in native sandboxes, whose cgroups we read"
    ),
]

# 60 rounds of a barrier, 0.1 s apart (6 s of running), then an allreduce everyone prints.
STEPS = """
import time
from mpi4py import MPI
comm = MPI.COMM_WORLD
print("started", flush=True)
for _ in range(60):
    comm.Barrier()
    time.sleep(0.1)
print(f"rank {comm.Get_rank()}: sum {comm.allreduce(comm.Get_rank() + 1)}", flush=True)
"""


@dataclass
class Group:
    back: Worker  # the member whose owner comes back
    other: Worker
    run: subprocess.Popen[str]  # `rain mpi run` of a 2-rank group, one rank on each


@contextlib.contextmanager
def group_running(nodes: Cluster, tmp_path: Path, text: str, **policy: Any) -> Iterator[Group]:
    """Two members with `policy` and a 2-rank group of `text` running on them (killed at the
    end if it still runs)."""
    requester = network(nodes)
    back, other = (
        start_worker(nodes, name, "--bootstrap", requester.addr, **policy)
        for name in ("back", "other")
    )
    join(requester, back, other)
    wait_until(lambda: all(p.get("mpi") for p in requester.peers()), 30, "the members take MPI")
    prog = program(tmp_path, text)
    cmd = [PYTHON, "-m", "node.cli", "--home", str(requester.home), "mpi", "run", "-n", "2"]
    cmd += ["--per-node", "1", "--mem", "128M", "-l", "--input", str(prog)]
    run = subprocess.Popen(
        [*cmd, "--", "python3", prog.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(running(prog.name)) >= 2, 30, "the ranks run")
        yield Group(back, other, run)
        wait_until(lambda: not running(prog.name), 10, "no rank of the group runs")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=10)


def _frozen(guest: GuestCgroup) -> bool:
    job = guest.job()
    try:
        return job is not None and job.is_frozen()
    except FileNotFoundError:
        return False


def test_a_member_s_owner_returning_suspends_the_whole_group_and_it_resumes(
    nodes: Cluster, tmp_path: Path
) -> None:
    with group_running(nodes, tmp_path, STEPS, continue_idle="4s") as g:
        back_guest, other_guest = GuestCgroup(g.back.node.home), GuestCgroup(g.other.node.home)
        g.back.touch()
        # Its own policy freezes the member whose owner is back; the requester holds the other.
        wait_until(lambda: _frozen(back_guest), 10, "the returning owner's member is frozen")
        wait_until(lambda: _frozen(other_guest), 10, "the other member is held with it")
        # No input for continue_idle (4 s): both resume, and the program ends right.
        out, err = g.run.communicate(timeout=60)
    assert g.run.returncode == 0, err
    assert sorted(line for line in out.splitlines() if "sum" in line) == [
        "0: rank 0: sum 3",
        "1: rank 1: sum 3",
    ], out
    assert "suspended: its worker's owner is back" in err, err
    assert "held: another member of its MPI group is suspended" in err, err
    assert err.count("resumed") >= 2, err


def test_a_member_suspended_past_its_limit_ends_the_group_and_nothing_is_left(
    nodes: Cluster, tmp_path: Path
) -> None:
    endless = STEPS.replace("range(60)", "range(100000)")
    with group_running(nodes, tmp_path, endless, continue_idle="1h", max_suspend="3s") as g:
        g.back.touch()
        # Given up after max_suspend (3 s): the group ends, the held member's ranks with it.
        _, err = g.run.communicate(timeout=60)
    assert g.run.returncode != 0
    assert f"rain: member {g.back.node.peer_id[-8:]}" in err, err
    assert "its owner came back and stayed" in err, err
    wait_until(lambda: GuestCgroup(g.other.node.home).job() is None, 10, "no guest is left held")
