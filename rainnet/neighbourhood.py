"""The bounded neighbourhood, sans-io: which connections this node keeps, which it trims, and
whom it dials, so that its cost does not grow with the network (issue 18).

A connection manager in the manner of libp2p's (low and high water marks; kubo keeps 32-96,
go-libp2p 160-192, Bitcoin Core 8 outbound of 125): the node hands `plan` what it knows of each
peer (connected or not, how it is known, whether it has jobs with us, whether a relay circuit
depends on it, since when it is connected) with the current time, and gets back what to do.

A *neighbour* is a peer in the membership view: it said hello and is watched by heartbeats. Other
connections are *transient*: the DHT's lookups and stores dial the peers they query, whoever
they are, and such a connection carries nothing once its query is answered.

The rules, in the order they are applied:
1. Limits (`Limits.of(max_connections)`): at most `high` connections. Past `high`, connections
   are trimmed down to `target` (the low water mark, three quarters of `high`), so that a node
   at its limit does not trim one connection at every newcomer. Below `floor` (half of
   `target`, at least 2) neighbours, candidates are greeted until it is reached.
2. Never trimmed: a protected peer (a relay whose circuit we use or serve), a peer we have jobs
   with (a requester, a worker, a member of an MPI group: its streams carry work), a neighbour
   younger than `grace` (a newcomer, so that joining never fights trimming), and a transient
   connection younger than `brief` (its query is under way). These may hold the count above
   `target`, never above what they are themselves; and newcomers never hold more than `high`
   neighbours: past it, the youngest are trimmed (as a full Bitcoin node evicts an inbound
   peer), and greet someone else.
3. Trimmed first: transient connections (the oldest first), down to `target` connections;
   then, if still past `high`, neighbours down to `target` neighbours. Kept first, of the
   neighbours: up to `wide` known
   from the DHT or a bootstrap address (the routing table needs a few contacts outside the LAN,
   or the LAN becomes an island), then LAN peers (found by mDNS: cheap, close, the likely
   members of an MPI group), then the other DHT contacts, then peers known only by a hint or an
   inbound connection. Within a rank, older connections first: a neighbourhood that keeps
   changing costs handshakes and loses liveness history.
4. Greeted (dialed, or said hello to over a transient connection): below `floor`, candidates
   up to `floor` minus the neighbours kept, in the order LAN, DHT, the rest, except that DHT
   candidates come first while fewer than `wide` DHT neighbours are kept; at or above `floor`,
   DHT candidates only, while fewer than `wide` are kept and fewer than `high` connections held
   (a LAN of many peers must still reach beyond itself, or it is an island to the DHT and to
   every requester elsewhere).

Plain synchronous code: every decision is a function of its arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from rainnet.membership import Membership, Source

DEFAULT_MAX_CONNECTIONS = 64
MIN_CONNECTIONS = 4  # fewer: a node cannot keep a LAN peer, a DHT contact and a job at once
GRACE = 20.0  # seconds a new neighbour is spared (libp2p's connection manager: 20 s)
BRIEF = 5.0  # seconds a transient (DHT) connection is spared: its query's answer


@dataclass(frozen=True)
class Limits:
    high: int  # connections at most; past it, trimmed down to `target`
    target: int
    floor: int  # below it (in neighbours), candidates are greeted
    wide: int  # DHT neighbours kept before LAN peers
    grace: float = GRACE
    brief: float = BRIEF

    @classmethod
    def of(cls, max_connections: int) -> Limits:
        """The marks for `rain-node --max-connections N` (N >= MIN_CONNECTIONS)."""
        if max_connections < MIN_CONNECTIONS:
            raise ValueError(
                f"max connections: at least {MIN_CONNECTIONS} (a LAN peer, a DHT contact and "
                f"a job's peer each need one), not {max_connections}"
            )
        target = max_connections * 3 // 4
        floor = max(2, target // 2)  # (one neighbour makes a tree, which one departure cuts)
        return cls(max_connections, target, floor, min(4, floor))


class Rank(IntEnum):
    """Which kept connections go first when trimming (a higher rank is trimmed first)."""

    WIDE = 0  # a DHT neighbour within `wide`
    LAN = 1
    DHT = 2
    OTHER = 3
    TRANSIENT = 4  # not a neighbour


class Known(StrEnum):
    """How this node knows a neighbour, as `rain peers` says it."""

    JOB = "job"  # work in progress with it (whatever else it is)
    LAN = "LAN"  # found by mDNS
    DHT = "DHT"
    BOOTSTRAP = "bootstrap"
    HINT = "hint"  # named by another peer
    INBOUND = "inbound"  # it dialed us

    @classmethod
    def of(cls, source: Source, jobs: bool) -> Known:
        return cls.JOB if jobs else _KNOWN_BY_SOURCE[source]


_KNOWN_BY_SOURCE = {
    Source.MDNS: Known.LAN,
    Source.DHT: Known.DHT,
    Source.BOOTSTRAP: Known.BOOTSTRAP,
    Source.HINT: Known.HINT,
    Source.INBOUND: Known.INBOUND,
}


@dataclass(frozen=True)
class PeerInfo:
    """What the node knows of one peer, for planning."""

    peer_id: str
    connected: bool  # (a hello under way counts as a young neighbour's connection)
    source: Source  # how it is known (membership.Source)
    neighbour: bool = True  # in the membership view (else a transient connection, or none)
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
    young = now - p.connected_since < (limits.grace if p.neighbour else limits.brief)
    return p.protected or p.jobs or young


def _kind(p: PeerInfo) -> Rank:
    if not p.neighbour and p.connected:
        return Rank.TRANSIENT
    if p.source is Source.MDNS:
        return Rank.LAN
    if p.source in (Source.DHT, Source.BOOTSTRAP):
        return Rank.DHT
    return Rank.OTHER


def plan(peers: Iterable[PeerInfo], limits: Limits, now: float) -> Plan:
    """What to keep, trim and greet (see the module's rules)."""
    known = sorted(peers, key=lambda p: p.peer_id)  # (deterministic whatever the input order)
    connected = [p for p in known if p.connected]
    spared = [p for p in connected if _spared(p, now, limits)]
    rest = [p for p in connected if not _spared(p, now, limits)]
    rest.sort(key=lambda p: p.connected_since)  # older first within a rank
    wide = [p for p in rest if _kind(p) is Rank.DHT][: limits.wide]
    wide_ids = {p.peer_id for p in wide}
    rest.sort(key=lambda p: Rank.WIDE if p.peer_id in wide_ids else _kind(p))  # (stable)
    kept, trimmed = rest, []
    if len(connected) > limits.high:
        # Transients first, down to `target` connections; then neighbours, down to `target`
        # neighbours: a burst of young transients (a DHT store queries twenty peers at once)
        # waits out its `brief`, and never costs a neighbour its place.
        transient = [p for p in rest if not p.neighbour]
        cut = min(len(transient), len(connected) - limits.target)
        trimmed = transient[:cut] if cut > 0 else []  # (the oldest: their queries are done)
        standing = [p for p in rest if p.neighbour]
        room = max(0, limits.target - sum(1 for p in spared if p.neighbour))
        if len(connected) - len(trimmed) > limits.high:
            trimmed += standing[room:]
        kept = [p for p in rest if p not in trimmed]
    neighbours = [p for p in [*spared, *kept] if p.neighbour]
    if len(neighbours) > limits.high:
        # Newcomers past `high` neighbours: the youngest go (the view is never larger).
        young = [p for p in neighbours if not (p.jobs or p.protected)]
        young.sort(key=lambda p: -p.connected_since)
        evicted = young[: len(neighbours) - limits.high]
        trimmed += evicted
        spared = [p for p in spared if p not in evicted]
        kept = [p for p in kept if p not in evicted]
        neighbours = [p for p in neighbours if p not in evicted]
    keep = [p.peer_id for p in spared] + [p.peer_id for p in kept]
    wide_short = limits.wide - sum(1 for p in neighbours if _kind(p) is Rank.DHT)
    trimmed_ids = {p.peer_id for p in trimmed}
    candidates = [
        p for p in known if not p.neighbour and p.dialable and p.peer_id not in trimmed_ids
    ]
    far = [p for p in candidates if p.source in (Source.DHT, Source.BOOTSTRAP)]
    far = far[: max(0, wide_short)]
    greet: list[PeerInfo] = []
    if len(neighbours) < limits.floor:
        far_ids = {p.peer_id for p in far}
        candidates.sort(key=lambda p: Rank.WIDE if p.peer_id in far_ids else _source_rank(p))
        greet = candidates[: limits.floor - len(neighbours)]
    elif len(connected) < limits.high:
        greet = far[: limits.high - len(connected)]
    return Plan(
        tuple(sorted(keep)),
        tuple(p.peer_id for p in trimmed),
        tuple(p.peer_id for p in greet),
    )


def _source_rank(p: PeerInfo) -> Rank:
    """A candidate's rank by how it is known (whether or not a transient connection is open)."""
    return _kind(PeerInfo(p.peer_id, connected=False, source=p.source))


def infos(
    membership: Membership,
    connected: Mapping[str, float],
    now: float,
    working: Set[str] = frozenset(),
    protected: Set[str] = frozenset(),
    dialing: Set[str] = frozenset(),
    told_addrs: Callable[[str], tuple[str, ...]] = lambda peer_id: (),
) -> list[PeerInfo]:
    """What `plan` is handed: every peer of the membership view and every connection
    (`connected`: peer id -> since when), with how each is known. A connection to a peer we
    have not met (a DHT query's) makes it a DHT candidate, at the addresses it told."""
    for peer_id in connected:
        if peer_id not in membership.peers:
            membership.learn(peer_id, told_addrs(peer_id), Source.DHT, now)
    due = {p.peer_id for p in membership.due_for_dial(now)}
    out = []
    for peer in membership.peers.values():
        since = connected.get(peer.peer_id)
        out.append(
            PeerInfo(
                peer.peer_id,
                connected=since is not None or peer.peer_id in dialing,
                source=peer.source,
                neighbour=peer.live or peer.peer_id in dialing,
                connected_since=now if since is None else since,
                jobs=peer.peer_id in working,
                protected=peer.peer_id in protected,
                dialable=peer.peer_id in due,
            )
        )
    for peer_id in connected.keys() - membership.peers.keys():  # (the view is full)
        out.append(PeerInfo(peer_id, True, Source.DHT, False, connected[peer_id]))
    return out
