"""Real rain-node processes on 127.0.0.1 find each other (mDNS alone; bootstrap alone), notice a
peer that vanishes, and take it back when it returns."""

from __future__ import annotations

import signal
import time
from typing import Any

from node.control import channel as control
from tests.e2e.nodes import LOOPBACK, Cluster, all_see_each_other, wait_until

N = 5


def test_five_nodes_find_each_other_by_mdns_alone(cluster: Cluster) -> None:
    nodes = [cluster.start("--listen", LOOPBACK, "--lend", "always") for _ in range(N)]
    for node in nodes:
        node.wait_ready()
    wait_until(lambda: all_see_each_other(nodes), 30, "5 nodes list each other via mDNS")
    for node in nodes:
        for peer in node.peers():
            assert peer["state"] == "idle"
            assert peer["cpus"] >= 1 and peer["memory"] > 0
            assert peer["addrs"] and all(
                a.endswith("/p2p/" + peer["peer_id"]) for a in peer["addrs"]
            )
            assert peer["last_seen"] > time.time() - 30


def test_five_nodes_find_each_other_through_one_bootstrap_address(cluster: Cluster) -> None:
    first = cluster.start("--listen", LOOPBACK, "--no-mdns")
    first.wait_ready()
    rest = [
        cluster.start("--listen", LOOPBACK, "--no-mdns", "--bootstrap", first.addr)
        for _ in range(N - 1)
    ]
    for node in rest:
        node.wait_ready()
    nodes = [first, *rest]
    wait_until(lambda: all_see_each_other(nodes), 30, "5 nodes list each other via bootstrap")


def test_killed_node_leaves_within_15s_and_rejoins_with_same_id(cluster: Cluster) -> None:
    first = cluster.start("--listen", LOOPBACK, "--no-mdns")
    first.wait_ready()
    rest = [
        cluster.start("--listen", LOOPBACK, "--no-mdns", "--bootstrap", first.addr)
        for _ in range(3)
    ]
    nodes = [first, *rest]
    for node in rest:
        node.wait_ready()
    wait_until(lambda: all_see_each_other(nodes), 30, "4 nodes list each other")

    victim = rest[-1]
    victim_id = victim.peer_id
    survivors = nodes[:-1]
    victim.kill9()
    took = wait_until(
        lambda: all(victim_id not in n.peer_ids() for n in survivors),
        15,
        "the killed node is gone from every view",
        interval=0.5,
    )
    print(f"killed node left all views after {took:.1f} s")

    victim.start()  # same home, so the same identity
    victim.wait_ready()
    assert victim.peer_id == victim_id
    wait_until(lambda: all_see_each_other(nodes), 30, "the restarted node is back in every view")


def test_sigterm_stops_within_5s_and_identity_is_reused(cluster: Cluster) -> None:
    node = cluster.start("--listen", LOOPBACK, "--no-mdns")
    first_id = node.wait_ready()["peer_id"]
    key = node.home / "identity.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (node.home / "control.sock").stat().st_mode & 0o777 == 0o600
    started = time.monotonic()
    node.signal(signal.SIGTERM)
    assert node.proc is not None
    assert node.proc.wait(timeout=5) == 0
    print(f"stopped in {time.monotonic() - started:.2f} s")
    assert not (node.home / "node.json").exists()
    node.start()
    assert node.wait_ready()["peer_id"] == first_id
    node.signal(signal.SIGINT)
    assert node.proc.wait(timeout=5) == 0


def test_workers_are_found_through_dht_provider_records(cluster: Cluster) -> None:
    """Each node provides the workers key and publishes its signed record; another node finds
    them through the DHT alone (provider lookup, then record lookup, signatures checked)."""
    first = cluster.start("--listen", LOOPBACK, "--no-mdns", "--lend", "always")
    first.wait_ready()
    rest = [
        cluster.start(
            "--listen", LOOPBACK, "--no-mdns", "--lend", "always", "--bootstrap", first.addr
        )
        for _ in range(3)
    ]
    for node in rest:
        node.wait_ready()
    nodes = [first, *rest]
    wait_until(lambda: all_see_each_other(nodes), 30, "4 nodes list each other")
    expected = {n.peer_id for n in nodes} - {first.peer_id}

    def workers() -> dict[str, dict[str, Any]]:
        found = control.request(first.home / "control.sock", "workers", timeout=30)["workers"]
        return {w["peer_id"]: w for w in found}

    wait_until(lambda: set(workers()) >= expected, 40, "DHT lists every other worker", 1.0)
    for peer_id, rec in workers().items():
        assert rec["state"] == "idle" and rec["cpus"] >= 1
        assert any(str(a).endswith(peer_id) for a in rec["addrs"])
