"""The neighbourhood at the edge: what rainnet.neighbourhood plans, done to the host's
connections every tick (trims), and told to rainnet.contact (which due candidates it may dial).

A peer has jobs with us while a stream of one of the node's own protocols (jobs, ledger, MPI)
or a relay circuit is open to it: that spares it, without the node above having to say so. A
peer whose connection we trim is told so when it next pings (rainnet.liveness answers it with
`parting`), so that neither side redials the other at once; both keep it as a candidate.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import trio
from libp2p.peer.id import ID

from rainnet import protocols
from rainnet.membership import Membership, Peer
from rainnet.neighbourhood import Limits, Plan, infos, plan

log = logging.getLogger("rainnet.node")

TICK = 1.0
DISCONNECT_TIMEOUT = 2.0
# Streams that carry no work: a peer with only these open may be trimmed.
IDLE_PROTOCOLS = frozenset({protocols.HELLO, protocols.HEARTBEAT})
RELAY_PREFIX = "/libp2p/circuit/"


class Neighbourhood:
    def __init__(
        self,
        host: Any,
        membership: Membership,
        limits: Limits,
        protected: Callable[[], set[str]],
        dialing: Callable[[], set[str]],
    ) -> None:
        self._host = host
        self.membership = membership
        self.limits = limits
        self._protected = protected  # relays we reserve on, peers holding a slot on us
        self._dialing = dialing  # hellos under way (counted as young connections)
        self._since: dict[str, float] = {}  # peer -> when we first saw its current connection
        self._dial: frozenset[str] = frozenset()
        self.trimmed = 0  # connections trimmed since the start

    def connections(self) -> dict[str, Any]:
        """The host's connections now, by peer id."""
        network = self._host.get_network()
        return {str(pid): conns for pid, conns in network.get_connections_map().items() if conns}

    def with_work(self) -> set[str]:
        """Peers a stream of work (a job, the ledger, an MPI group, a circuit) is open to."""
        return {p for p, conns in self.connections().items() if any(map(_carries_work, conns))}

    def due(self, now: float) -> list[Peer]:
        """The membership's due candidates that the last plan says to dial."""
        return [p for p in self.membership.due_for_dial(now) if p.peer_id in self._dial]

    def plan(self, now: float) -> Plan:
        conns = self.connections()
        for peer_id in conns:
            self._since.setdefault(peer_id, now)
        for peer_id in [p for p in self._since if p not in conns]:
            del self._since[peer_id]
        working = {p for p, c in conns.items() if any(map(_carries_work, c))}
        peers = infos(
            self.membership,
            self._since,
            now,
            working=working,
            protected=self._protected(),
            dialing=self._dialing(),
            told_addrs=self._told_addrs,
        )
        return plan(peers, self.limits, now)

    def _told_addrs(self, peer_id: str) -> tuple[str, ...]:
        try:
            addrs = self._host.get_peerstore().addrs(ID.from_base58(peer_id))
        except Exception:  # (none recorded)
            return ()
        return tuple(f"{a}/p2p/{peer_id}" for a in addrs if "/p2p/" not in str(a))

    async def run(self) -> None:
        while True:
            await trio.sleep(TICK)
            decided = self.plan(time.time())
            self._dial = frozenset(decided.dial)
            for peer_id in decided.trim:
                await self.trim(peer_id)

    async def trim(self, peer_id: str) -> None:
        self.membership.part(peer_id, time.time())
        self.trimmed += 1
        log.debug("trimmed the connection to %s (over %d)", peer_id, self.limits.high)
        with trio.move_on_after(DISCONNECT_TIMEOUT), contextlib.suppress(Exception):
            await self._host.disconnect(ID.from_base58(peer_id))


def _carries_work(conn: Any) -> bool:
    for stream in conn.get_streams():
        protocol = str(stream.get_protocol() or "")
        if protocol.startswith(RELAY_PREFIX):
            return True
        if protocol.startswith("/rain/") and protocol not in IDLE_PROTOCOLS:
            return True
    return False
