"""An MPI group across network namespaces (a routed LAN the test makes): 4 members, each in its
own namespace, one rank each, the requester in a fifth. The ranks talk TCP between namespaces
(MPICH's OFI tcp), their output comes back rank-prefixed, and each member is paid for its own
ranks' CPU-seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.netns import Topology
from tests.e2e.nodes import Cluster, all_see_each_other, credit, wait_until
from tests.e2e.test_mpi import RING, program

pytestmark = pytest.mark.netns


def test_four_members_in_four_namespaces_compute_and_are_paid(
    topology: Topology, cluster: Cluster, tmp_path: Path
) -> None:
    lan = topology.add_lan("m", hosts=5)
    req_ns, member_ns = lan.hosts[0], lan.hosts[1:]
    req = cluster.start(
        "--listen", f"/ip4/{lan.ip(10)}/tcp/4001", "--lend", "never", netns=req_ns, name=req_ns
    )
    members = [
        cluster.start(
            "--listen", f"/ip4/{lan.ip(11 + i)}/tcp/4001", "--lend", "always", netns=ns, name=ns
        )
        for i, ns in enumerate(member_ns)
    ]
    for node in [req, *members]:
        node.wait_ready()
    wait_until(lambda: all_see_each_other([req, *members]), 30, "the LAN's nodes find each other")
    wait_until(lambda: sum(bool(p.get("mpi")) for p in req.peers()) == 4, 30, "members take MPI")

    hosts = req.rain("mpi", "hosts", "-n", "4", "--per-node", "1").stdout.split()
    assert sorted(hosts) == sorted(f"{lan.ip(11 + i)}:1" for i in range(4))

    prog = program(tmp_path, RING)
    res = req.rain(
        "mpi", "run", "-n", "4", "--per-node", "1", "--cpus-per-rank", "0.5", "--mem", "128M",
        "-l", "--json", "--input", str(prog), "--", "python3", prog.name,
        timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    ranks = sorted(line for line in res.stderr.splitlines() if line[:1].isdigit())
    assert ranks == [
        f"{r}: rank {r} of 4: sum 10, got {(r - 1) % 4} from the left" for r in range(4)
    ], res.stderr
    summary = json.loads(res.stdout)
    assert summary["launcher"] == lan.ip(10)  # the proxies connected back across the LAN
    jobs = {j["worker"]: j for j in summary["jobs"]}
    assert set(jobs) == {m.peer_id for m in members}
    for m in members:
        job = jobs[m.peer_id]
        assert job["state"] == "done" and job["exit_code"] == 0
        assert credit(m)["earned"] == pytest.approx(job["cpu_seconds"], abs=0.002)
        m.rain("credit", "verify")
