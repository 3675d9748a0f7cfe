"""Strangers get nothing they are not owed (issue: the holes a hostile peer or user finds), with
real nodes on 127.0.0.1: each test attacks the way it was seen to work before its fix."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.nodes import REQUESTER, WORKER, Cluster, all_see_each_other, wait_until

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def _readable_by_nobody(path: Path) -> bool:
    res = subprocess.run([*NOBODY, "cat", str(path)], capture_output=True, timeout=10)
    return res.returncode == 0


def test_a_home_that_existed_0755_is_the_node_users_alone(cluster: Cluster) -> None:
    """Job databases (with job environments), results and the ledger were created readable by
    every local user when HOME already existed with mode 0755."""
    for name in ("req", "node1"):
        (cluster.root / name).mkdir(mode=0o755)
        os.chmod(cluster.root / name, 0o755)
    os.chmod(cluster.root, 0o755)  # (pytest makes it 0700: the attacker must reach the homes)
    requester = cluster.start(*REQUESTER, name="req")
    requester.wait_ready()
    worker = cluster.start(*WORKER, "--bootstrap", requester.addr, name="node1")
    worker.wait_ready()
    wait_until(lambda: all_see_each_other([requester, worker]), 30, "the two meet")
    wait_until(lambda: bool(requester.peers()[0]["backends"]), 30, "the worker lends")
    out = requester.rain("submit", "--wait", "--env", "SECRET=hunter2", "--", "echo", "hi")
    assert out.stdout == "hi\n"
    for node in (requester, worker):
        assert node.home.stat().st_mode & 0o777 == 0o700
        for path in node.home.rglob("*"):
            if path.is_file():
                assert not _readable_by_nobody(path), f"{path} is readable by other users"
