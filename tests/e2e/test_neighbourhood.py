"""Real rain-node processes on 127.0.0.1 with a low `--max-connections`: each keeps a bounded
neighbourhood (its view and heartbeats) however many nodes there are, the neighbourhoods join
into one network, a job finds a worker that is not its requester's neighbour (through the
DHT, then a direct hello), and `rain peers` says how each neighbour is known."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from tests.e2e.nodes import LOOPBACK, Cluster, NodeProcess, wait_until

N = 12
MAX = 4  # rainnet.neighbourhood.Limits.of(4): high 4, target 3, floor 2
QUIET = ("--listen", LOOPBACK, "--no-mdns", "--no-panel", "--max-connections", str(MAX))


def status(node: NodeProcess) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(node.rain_here("status", "--json"))
    return out


def neighbours(node: NodeProcess) -> set[str]:
    return {p["peer_id"] for p in json.loads(node.rain_here("peers", "--json"))}


def one_network(nodes: list[NodeProcess]) -> bool:
    """Whether the nodes' neighbourhoods join all of them (as an undirected graph)."""
    ids = {n.peer_id: n for n in nodes}
    edges = {n.peer_id: neighbours(n) & ids.keys() for n in nodes}
    for a, seen in list(edges.items()):
        for b in seen:
            edges[b] = edges[b] | {a}
    reached, todo = set(), [nodes[0].peer_id]
    while todo:
        here = todo.pop()
        if here not in reached:
            reached.add(here)
            todo.extend(edges[here] - reached)
    return reached == ids.keys() and all(edges.values())


def test_twelve_nodes_keep_bounded_neighbourhoods_and_place_a_job_beyond_them(
    cluster: Cluster,
) -> None:
    first = cluster.start(*QUIET, "--sandbox", "none", "--lend", "never")
    first.wait_ready()
    worker = cluster.start(*QUIET, "--lend", "always", "--bootstrap", first.addr)
    rest = [
        cluster.start(*QUIET, "--sandbox", "none", "--lend", "never", "--bootstrap", first.addr)
        for _ in range(N - 2)
    ]
    nodes = [first, worker, *rest]
    for node in nodes:
        node.wait_ready()
    took = wait_until(lambda: one_network(nodes), 90, "the neighbourhoods join into one network")
    print(f"one network of {N} after {took:.1f} s")

    # Past every newcomer's grace: each view holds at most MAX peers, every sample.
    time.sleep(25)
    views, conns = [], []
    for _ in range(10):
        for node in nodes:
            st = status(node)
            views.append(st["peers"])
            conns.append(st["connections"])
            assert st["peers"] <= MAX, f"{node.peer_id[-8:]} has {st['peers']} neighbours"
            assert st["max_connections"] == MAX
        time.sleep(1)
    print(
        f"neighbours per node: median {statistics.median(views)}, max {max(views)}; "
        f"connections: median {statistics.median(conns)}, max {max(conns)} "
        f"(DHT queries' transient connections included)"
    )
    assert statistics.median(conns) <= MAX
    took = wait_until(lambda: one_network(nodes), 30, "the trimmed neighbourhoods still join")
    sizes = [status(n)["network_size"] for n in nodes]
    print(f"network size estimates (of {N}): {sorted(s for s in sizes if s)}")

    # A requester whose neighbourhood does not hold the worker still finds it.
    wait_until(
        lambda: any(worker.peer_id not in neighbours(n) for n in rest), 30, "a far requester"
    )
    requester = next(n for n in rest if worker.peer_id not in neighbours(n))
    out = requester.rain("submit", "--wait", "--", "echo", "far away", timeout=90).stdout
    assert "far away" in out
    jobs = json.loads(requester.rain("jobs", "--json").stdout)
    assert [j["worker"] for j in jobs if j.get("worker")] == [worker.peer_id]
    table = worker.rain_here("peers")
    assert "KNOWN" in table and "neighbours" in table
