"""Private pools between real rain-node processes on 127.0.0.1: nodes of two pools (and the open
network) with mDNS on never see each other; an outsider's dial and job offer are refused at the
connection, with the reason in the node's log; a pool's own nodes run a job together. The pools
are made and joined with the real `rain pool` commands."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from rainnet import jobproto
from rainnet.host import build_host
from rainnet.identity import Identity
from rainnet.pool import PoolSecret
from rainnet.streams import FramedStream
from tests.e2e.nodes import (
    LOOPBACK,
    REQUESTER,
    WORKER,
    Cluster,
    NodeProcess,
    all_see_each_other,
    wait_until,
)

REFUSED = "refused a connection from 127.0.0.1:"


@pytest.fixture
def open_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose nodes are not put in a pool of the cluster's own: these tests make their
    pools with `rain pool`, and start open-network nodes on purpose. Stopped after the test
    (they were left running: every run of the suite left nine nodes behind)."""
    cluster = Cluster(tmp_path, open_network=True)
    try:
        yield cluster
    finally:
        cluster.stop_all()


def make_pool(cluster: Cluster, name: str, homes: list[str]) -> None:
    """`rain pool create NAME` in the first home, `rain pool join FILE` in the others."""
    first = cluster.root / homes[0]
    secret_file = cluster.root / f"{name}.pool"
    NodeProcess(first, ()).rain("pool", "create", name, "--out", str(secret_file))
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    for home in homes[1:]:
        NodeProcess(cluster.root / home, ()).rain("pool", "join", str(secret_file))
    for home in homes:
        listed = NodeProcess(cluster.root / home, ()).rain_json("pool", "list")
        assert [p["name"] for p in listed] == [name]


def test_two_pools_and_the_open_network_never_see_each_other_over_mdns(
    open_cluster: Cluster,
) -> None:
    cluster = open_cluster
    make_pool(cluster, "red", ["r0", "r1"])
    make_pool(cluster, "blue", ["b0", "b1"])
    mdns = ("--listen", LOOPBACK, "--lend", "always")
    red = [cluster.start(*mdns, "--pool", "red", name=n) for n in ("r0", "r1")]
    blue = [cluster.start(*mdns, "--pool", "blue", name=n) for n in ("b0", "b1")]
    outsider = cluster.start(*mdns, name="open")
    for node in [*red, *blue, outsider]:
        node.wait_ready()
    wait_until(lambda: all_see_each_other(red), 30, "the red pool forms over mDNS")
    wait_until(lambda: all_see_each_other(blue), 30, "the blue pool forms over mDNS")
    assert red[0].rain_json("status")["pool"] == "red"
    assert outsider.rain_json("status")["pool"] is None
    ids = {n.home.name: n.peer_id for n in [*red, *blue, outsider]}
    # mDNS answered each pool within itself in 1-3 s above; look a few seconds more for anyone
    # seeing across (the open node may see other open nodes on this machine: not ours).
    for _ in range(8):
        assert red[0].peer_ids() == {ids["r1"]} and red[1].peer_ids() == {ids["r0"]}
        assert blue[0].peer_ids() == {ids["b1"]} and blue[1].peer_ids() == {ids["b0"]}
        assert not outsider.peer_ids() & {ids[n] for n in ("r0", "r1", "b0", "b1")}
        time.sleep(0.5)
    # Not even a dial was tried across: the pools announce under services of their own.
    for node in [*red, *blue]:
        assert "refused a connection" not in node.log(), node.log()


def test_an_outsiders_dial_and_offer_are_refused_with_a_logged_reason(
    open_cluster: Cluster,
) -> None:
    cluster = open_cluster
    make_pool(cluster, "lab", ["worker"])
    worker = cluster.start(*WORKER, "--pool", "lab", name="worker")
    worker.wait_ready()
    # An open-network rain-node told the worker's address: never admitted, either way.
    stranger = cluster.start(*REQUESTER, "--bootstrap", worker.addr, name="stranger")
    stranger.wait_ready()
    wait_until(lambda: REFUSED in worker.log(), 20, "the worker logs the stranger's refusal")
    assert worker.peer_ids() == set() and stranger.peer_ids() == set()

    # Raw py-libp2p peers, one of the open network and one of another pool, offering a job.
    spec = msgpack.packb({"argv": ["true"]}, use_bin_type=True)

    async def offer(pool: PoolSecret | None) -> str:
        host = build_host(Identity.generate(), pool)
        async with host.run([multiaddr.Multiaddr(LOOPBACK)]):
            info = info_from_p2p_addr(multiaddr.Multiaddr(worker.addr))
            with trio.fail_after(15):
                try:
                    await host.connect(info)
                    stream = await host.new_stream(info.peer_id, [jobproto.JOB])
                    fs = FramedStream(stream, jobproto.TO_REQUESTER, jobproto.JOB_MAX_FRAME)
                    await fs.send(jobproto.Offer("j1", 1, spec, (), 15.0, b""))
                    return f"answered: {await fs.receive(10)!r}"
                except Exception as exc:
                    return f"refused: {exc!r}"

    before = worker.log().count(REFUSED)
    for pool in (None, PoolSecret.create("lab")):  # same name, another key: another pool
        result = trio.run(offer, pool)
        assert result.startswith("refused"), result
    wait_until(lambda: worker.log().count(REFUSED) >= before + 2, 10, "both refusals are logged")
    assert "not offered" not in worker.log() and "offer from" not in worker.log()
    assert worker.proc is not None and worker.proc.poll() is None


def test_a_pools_nodes_run_a_job_together(open_cluster: Cluster) -> None:
    cluster = open_cluster
    make_pool(cluster, "home", ["req", "w"])
    requester = cluster.start(*REQUESTER, "--pool", "home", name="req")
    requester.wait_ready()
    worker = cluster.start(*WORKER, "--pool", "home", "--bootstrap", requester.addr, name="w")
    worker.wait_ready()
    wait_until(lambda: all_see_each_other([requester, worker]), 30, "the pool forms")
    wait_until(lambda: all(p["backends"] for p in requester.peers()), 30, "the worker's sandbox")
    job = requester.rain("submit", "--time", "30s", "--", "echo", "in the pool").stdout.strip()

    def done() -> bool:
        jobs = json.loads(requester.rain("jobs", "--json").stdout)
        return any(j["job_id"] == job and j["state"] in ("done", "failed") for j in jobs)

    wait_until(done, 60, "the job finishes")
    rows = {j["job_id"]: j for j in json.loads(requester.rain("jobs", "--json").stdout)}
    assert rows[job]["state"] == "done", rows[job]
    assert rows[job]["worker"] == worker.peer_id
    assert requester.rain("logs", job).stdout == "in the pool\n"
