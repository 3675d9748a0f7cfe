"""The ledger between real nodes: a peer's chain is fetched over the network and verified, and a
worker that signed two different blocks at one sequence is caught when holders of each meet."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ledger.block import JobLimits
from ledger.service import Ledger
from ledger.store import LEDGER_FILE
from node.control import channel as control
from rainnet.identity import Identity, load_or_create
from tests.e2e.nodes import LOOPBACK, Cluster, all_see_each_other, wait_until

LIMITS = JobLimits(cpus_milli=1000, gpus=0, wall_ms=60_000)


def _trade(worker_home: Path, worker: Identity, req_home: Path, req: Identity, job: str) -> None:
    """One complete exchange between two stored ledgers (both halves signed and committed)."""
    with Ledger.open(worker_home, worker) as w, Ledger.open(req_home, req) as r:
        proposal = w.propose(
            requester=req.public_raw,
            job_id=job,
            cpu_ms=1500,
            gpu_ms=0,
            limits=LIMITS,
            result_hash=hashlib.sha256(job.encode()).digest(),
        )
        w.accept_agreement(r.agree(proposal, LIMITS))


def test_chains_fetched_over_the_network_and_forks_surface(
    tmp_path: Path, cluster: Cluster
) -> None:
    homes = {name: tmp_path / name for name in ("a", "b", "c", "d", "a-fork")}
    ids = {name: load_or_create(home) for name, home in homes.items() if name != "a-fork"}

    _trade(homes["a"], ids["a"], homes["b"], ids["b"], "job-1")
    # A copy of a's ledger lives on: it will sign another block at a's sequence 2.
    homes["a-fork"].mkdir()
    shutil.copy(homes["a"] / LEDGER_FILE, homes["a-fork"] / LEDGER_FILE)
    _trade(homes["a"], ids["a"], homes["b"], ids["b"], "job-2")
    _trade(homes["a-fork"], ids["a"], homes["d"], ids["d"], "job-x")

    a = cluster.start("--listen", LOOPBACK, "--no-mdns", name="a")
    a.wait_ready()
    others = [
        cluster.start("--listen", LOOPBACK, "--no-mdns", "--bootstrap", a.addr, name=name)
        for name in ("b", "c", "d")
    ]
    for node in others:
        node.wait_ready()
    nodes = [a, *others]
    wait_until(lambda: all_see_each_other(nodes), 30, "4 nodes list each other")
    c = others[1]

    fetched = control.request(c.home / "control.sock", "fetch-chain", peer=a.peer_id, timeout=30)
    assert fetched["verified_blocks"] == 2
    assert fetched["earned"] == 3.0 and fetched["balance"] == 3.0
    fetched = control.request(c.home / "control.sock", "fetch-chain", peer=ids["b"].peer_id)
    assert fetched["spent"] == 3.0 and fetched["balance"] == -3.0
    # What c fetched is stored: rain credit verify PEER checks that copy.
    assert c.rain("credit", "verify", ids["b"].peer_id).returncode == 0

    # b holds a's block 2 (job-2), d holds a's other block 2 (job-x): when b and d compared
    # heads on meeting, the double-spend surfaced as a proof both keep.
    def proofs(home: Path, who: Identity) -> int:
        with Ledger.open(home, who) as ledger:
            return len(ledger.fork_proofs_against(ids["a"].public_raw))

    wait_until(
        lambda: proofs(homes["b"], ids["b"]) > 0 and proofs(homes["d"], ids["d"]) > 0,
        20,
        "b and d hold a fork proof against a",
    )
    b = others[0]
    verdict = b.rain("credit", "verify", a.peer_id, check=False)
    assert verdict.returncode != 0
    assert "two different blocks #2" in verdict.stderr
