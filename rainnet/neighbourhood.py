"""The bounded neighbourhood, sans-io: which connections this node keeps, which it trims, and
whom it dials, so that its cost does not grow with the network (issue 18).

A connection manager in the manner of libp2p's (low and high water marks; kubo keeps 32-96,
go-libp2p 160-192, Bitcoin Core 8 outbound of 125): the node hands `plan` what it knows of each
peer (connected or not, how it is known, whether it has jobs with us, whether a relay circuit
depends on it, since when it is connected) with the current time, and gets back what to do.

The rules, in the order they are applied:
1. Limits (`Limits.of(max_connections)`): at most `high` connections. Past `high`, connections
   are trimmed down to `target` (the low water mark, three quarters of `high`), so that a node
   at its limit does not trim one connection at every newcomer. Below `floor` (a third of
   `target`), candidates are dialed until it is reached.
2. Never trimmed: a protected peer (a relay whose circuit we use or serve), a peer we have jobs
   with (a requester, a worker, a member of an MPI group: its streams carry work), and a
   connection younger than `grace` (a newcomer's hello has not told us yet who it is). These
   may hold the count above `target`, never above what they are themselves.
3. Kept first, of the rest: up to `wide` peers known from the DHT (its routing table needs a
   few contacts outside the LAN, or the LAN becomes an island), then LAN peers (found by mDNS:
   cheap, close, the likely members of an MPI group), then the other DHT contacts, then peers
   known only by a hint or an inbound connection. Within a rank, older connections first: a
   neighbourhood that keeps changing costs handshakes and loses liveness history.
4. Dialed when below `floor`: unconnected candidates in the same order (LAN before DHT before
   the rest), at most `floor` minus the connections kept, never one being trimmed.

Plain synchronous code: every decision is a function of its arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from rainnet.membership import Source

DEFAULT_MAX_CONNECTIONS = 64
MIN_CONNECTIONS = 4  # fewer: a node cannot keep a LAN peer, a DHT contact and a job at once
GRACE = 20.0  # seconds a new connection is spared (libp2p's connection manager: 20 s)


@dataclass(frozen=True)
class Limits:
    high: int  # connections at most; past it, trimmed down to `target`
    target: int
    floor: int  # below it, candidates are dialed
    wide: int  # DHT contacts kept before LAN peers
    grace: float = GRACE

    @classmethod
    def of(cls, max_connections: int) -> Limits:
        """The marks for `rain-node --max-connections N` (N >= MIN_CONNECTIONS)."""
        if max_connections < MIN_CONNECTIONS:
            raise ValueError(
                f"max connections: at least {MIN_CONNECTIONS} (a LAN peer, a DHT contact and "
                f"a job's peer each need one), not {max_connections}"
            )
        target = max_connections * 3 // 4
        floor = max(1, target // 3)
        return cls(max_connections, target, floor, min(4, floor))


class Rank(IntEnum):
    """Which kept connections go first when trimming (a higher rank is trimmed first)."""

    WIDE = 0  # a DHT contact within `wide`
    LAN = 1
    DHT = 2
    OTHER = 3


@dataclass(frozen=True)
class PeerInfo:
    """What the node knows of one peer, for planning."""

    peer_id: str
    connected: bool
    source: Source  # how it is known (membership.Source)
    connected_since: float = 0.0  # when the current connection was made (if connected)
    jobs: bool = False  # jobs (or a group) in progress with us
    protected: bool = False  # a relay circuit we use or serve depends on it
    dialable: bool = True  # it has addresses we may dial (not for a connected peer)


@dataclass(frozen=True)
class Plan:
    keep: tuple[str, ...]  # the neighbours: connections kept (liveness checks go to them)
    trim: tuple[str, ...]  # connections to close now
    dial: tuple[str, ...]  # candidates to dial now


def _spared(p: PeerInfo, now: float, limits: Limits) -> bool:
    return p.protected or p.jobs or now - p.connected_since < limits.grace


def _kind(p: PeerInfo) -> Rank:
    if p.source is Source.MDNS:
        return Rank.LAN
    if p.source in (Source.DHT, Source.BOOTSTRAP):
        return Rank.DHT
    return Rank.OTHER


def plan(peers: Iterable[PeerInfo], limits: Limits, now: float) -> Plan:
    """What to keep, trim and dial (see the module's rules)."""
    known = sorted(peers, key=lambda p: p.peer_id)  # (deterministic whatever the input order)
    connected = [p for p in known if p.connected]
    spared = [p for p in connected if _spared(p, now, limits)]
    rest = [p for p in connected if not _spared(p, now, limits)]
    rest.sort(key=lambda p: p.connected_since)  # older first within a rank
    wide = [p for p in rest if _kind(p) is Rank.DHT][: limits.wide]
    wide_ids = {p.peer_id for p in wide}
    rest.sort(key=lambda p: Rank.WIDE if p.peer_id in wide_ids else _kind(p))  # (stable)
    if len(connected) > limits.high:
        room = max(0, limits.target - len(spared))
        kept, trimmed = rest[:room], rest[room:]
    else:
        kept, trimmed = rest, []
    keep = [p.peer_id for p in spared] + [p.peer_id for p in kept]
    dial: list[str] = []
    if len(keep) < limits.floor:
        candidates = [p for p in known if not p.connected and p.dialable]
        candidates.sort(key=_kind)
        dial = [p.peer_id for p in candidates[: limits.floor - len(keep)]]
    return Plan(tuple(sorted(keep)), tuple(p.peer_id for p in trimmed), tuple(dial))
