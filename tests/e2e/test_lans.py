"""Two LANs in network namespaces: mDNS finds peers inside each LAN only; a bootstrap node on the
router between them makes both LANs one network."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from rainnet.identity import load_or_create
from tests.e2e.netns import Topology, require_netns
from tests.e2e.nodes import Cluster, NodeProcess, all_see_each_other, wait_until


def test_mdns_stays_in_its_lan_and_a_router_bootstrap_joins_the_lans(
    topology: Topology, cluster: Cluster, tmp_path: Path
) -> None:
    lan_a = topology.add_lan("a", hosts=2)
    lan_b = topology.add_lan("b", hosts=2)

    # The router's node has a known identity before it runs, so LAN nodes can name it now.
    router_home = tmp_path / "router"
    router_id = load_or_create(router_home).peer_id
    router_addr = f"/ip4/{lan_a.ip(1)}/tcp/4001/p2p/{router_id}"

    def lan_node(lan_ip: str, ns: str) -> NodeProcess:
        return cluster.start(
            "--listen",
            f"/ip4/{lan_ip}/tcp/4001",
            "--bootstrap",
            router_addr,
            netns=ns,
            name=ns,
        )

    a_nodes = [lan_node(lan_a.ip(10 + i), ns) for i, ns in enumerate(lan_a.hosts)]
    b_nodes = [lan_node(lan_b.ip(10 + i), ns) for i, ns in enumerate(lan_b.hosts)]
    for node in a_nodes + b_nodes:
        node.wait_ready()

    wait_until(lambda: all_see_each_other(a_nodes), 20, "LAN A's nodes find each other by mDNS")
    wait_until(lambda: all_see_each_other(b_nodes), 20, "LAN B's nodes find each other by mDNS")
    time.sleep(3)  # more time for any leak across the router to show
    a_ids = {n.peer_id for n in a_nodes}
    b_ids = {n.peer_id for n in b_nodes}
    for node in a_nodes:
        assert not node.peer_ids() & b_ids, "mDNS crossed the router"
    for node in b_nodes:
        assert not node.peer_ids() & a_ids, "mDNS crossed the router"

    router = cluster.start(
        "--listen",
        f"/ip4/{lan_a.ip(1)}/tcp/4001",
        "--listen",
        f"/ip4/{lan_b.ip(1)}/tcp/4001",
        "--no-mdns",
        netns=topology.router,
        name="router",
    )
    assert router.home == router_home
    router.wait_ready()
    everyone = [router, *a_nodes, *b_nodes]
    took = wait_until(lambda: all_see_each_other(everyone), 40, "both LANs are one network")
    print(f"LANs joined {took:.1f} s after the router node was ready")


def test_pulled_cable_leaves_within_15s_and_rejoins_when_plugged_back(
    topology: Topology, cluster: Cluster
) -> None:
    """No FIN, no RST: the link just goes dark. Peers notice by heartbeat alone; when the link
    comes back, the node rejoins without anyone restarting anything."""
    lan = topology.add_lan("c", hosts=3)
    nodes = [
        cluster.start("--listen", f"/ip4/{lan.ip(10 + i)}/tcp/4001", netns=ns, name=ns)
        for i, ns in enumerate(lan.hosts)
    ]
    for node in nodes:
        node.wait_ready()
    wait_until(lambda: all_see_each_other(nodes), 20, "the LAN's nodes find each other")

    unplugged, others = nodes[-1], nodes[:-1]
    gone_id = unplugged.peer_id
    # The switch port goes down: packets to and from the node vanish silently.
    port = f"{topology.prefix}c2p"
    topology.exec(topology.router, "ip", "link", "set", port, "down")
    took = wait_until(
        lambda: all(gone_id not in n.peer_ids() for n in others),
        15,
        "the unplugged node leaves every view",
        interval=0.5,
    )
    print(f"unplugged node left all views after {took:.1f} s")
    assert unplugged.proc is not None and unplugged.proc.poll() is None

    topology.exec(topology.router, "ip", "link", "set", port, "up")
    took = wait_until(lambda: all_see_each_other(nodes), 40, "the node rejoins by itself")
    print(f"replugged node back in all views after {took:.1f} s")


def test_a_job_reaches_a_worker_behind_nat_through_a_relay(
    topology: Topology, cluster: Cluster, tmp_path: Path
) -> None:
    """LAN B sits behind NAT (MASQUERADE on the router); LAN A cannot reach into it, and B is
    kept from reaching A directly too, so the only path is the relay on the router. A job
    submitted on LAN A runs on LAN B, its result comes back and credit moves."""
    lan_a = topology.add_lan("a", hosts=1)
    lan_b = topology.add_lan("b", hosts=1)
    topology.masquerade(lan_b)
    topology.cut(lan_b, lan_a)

    router_home = tmp_path / "router"
    router_id = load_or_create(router_home).peer_id
    relay_addr = f"/ip4/{lan_a.ip(1)}/tcp/4001/p2p/{router_id}"
    router = cluster.start(
        "--listen",
        f"/ip4/{lan_a.ip(1)}/tcp/4001",
        "--listen",
        f"/ip4/{lan_b.ip(1)}/tcp/4001",
        "--no-mdns",
        "--relay",
        "--lend",
        "never",
        netns=topology.router,
        name="router",
    )
    router.wait_ready()
    worker = cluster.start(
        "--listen",
        f"/ip4/{lan_b.ip(10)}/tcp/4001",
        "--no-mdns",
        "--lend",
        "always",
        "--bootstrap",
        f"/ip4/{lan_b.ip(1)}/tcp/4001/p2p/{router_id}",
        "--relay-via",
        relay_addr,
        netns=lan_b.hosts[0],
        name="worker",
    )
    requester = cluster.start(
        "--listen",
        f"/ip4/{lan_a.ip(10)}/tcp/4001",
        "--no-mdns",
        "--lend",
        "never",
        "--bootstrap",
        relay_addr,
        netns=lan_a.hosts[0],
        name="requester",
    )
    worker.wait_ready()
    requester.wait_ready()
    wait_until(
        lambda: any("/p2p-circuit/" in a for a in worker.rain_json("status")["addrs"]),
        30,
        "the worker holds a relay reservation",
    )
    wait_until(
        lambda: worker.peer_id in requester.peer_ids(), 40, "the requester reaches the worker"
    )
    res = requester.rain("submit", "--wait", "--", "echo", "across the NAT", timeout=120)
    assert res.stdout == "across the NAT\n"
    (job,) = requester.rain_json("jobs")
    assert job["worker"] == worker.peer_id and job["state"] == "done"
    assert worker.rain_json("credit")["earned"] == requester.rain_json("credit")["spent"] > 0


def test_a_topology_whose_set_up_fails_leaves_no_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its router namespace was made before the fixture's try/finally, and left behind when the
    next step failed."""
    require_netns()
    prefix = f"rnleak{os.getpid() % 10000}"

    def refuse(self: Topology, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        raise RuntimeError("a step of the set-up fails")

    monkeypatch.setattr(Topology, "exec", refuse)
    with pytest.raises(RuntimeError):
        Topology(prefix=prefix)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in left
