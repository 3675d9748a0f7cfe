"""A node accepts its thousandth inbound connection like its first.

py-libp2p's swarm takes an inbound-limiter slot per accepted connection and, as shipped, frees it
only when the whole swarm stops: after `max_connections` (300) inbound connections over a node's
life, however briefly each was open, every newcomer was closed right after TCP accept, forever.
"""

from __future__ import annotations

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from rainnet.host import MAX_CONNECTIONS, build_host
from rainnet.identity import Identity
from rainnet.pool import PoolSecret
from tests.e2e.nodes import LOOPBACK, Cluster
from tests.e2e.raw_peer import hello_round

CLIENTS = 8
CHURN = (MAX_CONNECTIONS // CLIENTS + 8) * CLIENTS  # 360: beyond the 300 slots


async def _churn(addr: str, connections: int, pool: PoolSecret | None) -> int:
    """Open and close `connections` connections to `addr`, from CLIENTS hosts side by side
    (closing one takes py-libp2p ~0.2 s), each answered by a hello, so each was a whole inbound
    connection at the node. How many got their hello answered."""
    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    answered = 0

    async def client(rounds: int) -> None:
        nonlocal answered
        me = Identity.generate()
        host = build_host(me, pool)
        async with host.run([multiaddr.Multiaddr(LOOPBACK)]):
            for _ in range(rounds):
                with trio.move_on_after(10):
                    try:
                        await host.connect(info)
                        await hello_round(host, me, info.peer_id)
                        answered += 1
                    except Exception:
                        pass
                await host.disconnect(info.peer_id)

    async with trio.open_nursery() as nursery:
        for _ in range(CLIENTS):
            nursery.start_soon(client, connections // CLIENTS)
    return answered


async def _newcomer_hello(addr: str, pool: PoolSecret | None) -> str:
    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    me = Identity.generate()
    host = build_host(me, pool)
    async with host.run([multiaddr.Multiaddr(LOOPBACK)]):
        with trio.fail_after(10):
            await host.connect(info)
            return await hello_round(host, me, info.peer_id)


def test_a_node_accepts_newcomers_after_many_inbound_connections(cluster: Cluster) -> None:
    node = cluster.start("--listen", LOOPBACK, "--no-mdns", "--lend", "never")
    node.wait_ready()
    answered = trio.run(_churn, node.addr, CHURN, cluster.pool)
    assert answered == CHURN, f"only {answered} of {CHURN} connections were served"
    assert trio.run(_newcomer_hello, node.addr, cluster.pool) == node.peer_id
    node.rain("status")
