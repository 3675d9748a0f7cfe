"""The membership view: which peers are alive, what they said of themselves, whom to contact.

Sans-io. The node feeds it events (a peer was learned of through mDNS, bootstrap, the DHT or a
peer's hint; a hello or heartbeat succeeded or failed) with the current time, and asks it what to
do: which candidates to dial now, which peers to check. A peer is *live* while its last successful
contact is younger than `peer_timeout`; past that it leaves the view, whatever the transport says,
so a peer that vanished without a word (power cut, cable pulled) is gone within `peer_timeout` plus
one check interval. A peer that left stays a candidate for a while, so one that comes back rejoins
by itself. The view holds this node's neighbours only (rainnet.neighbourhood decides which): a
peer trimmed from the neighbourhood, or that trimmed us, is *parted*: out of the view, not gone,
and a candidate again.

Everything is bounded: the number of peers tracked, the number of addresses per peer, the number of
dial attempts per candidate. Peers named in other peers' hints are taken within the budgets of
rainnet.hints (per hinting peer, and dials per address until a hinted peer has answered once),
so hints cannot make this node dial an address of someone else's choosing over and over.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from rainnet.hints import Hint, HintBudget
from rainnet.records import NodeRecord

DEFAULT_PEER_TIMEOUT = 10.0
DEFAULT_MAX_PEERS = 1024
MAX_ADDRS_PER_PEER = 16
# Redial backoff for candidates and departed peers: 0.5 s doubling to 30 s, then give up after
# MAX_ATTEMPTS unless a discovery source mentions the peer again (which resets the count).
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
MAX_ATTEMPTS = 12
# A peer that parted from us (or we from it) is alive but not wanted as a neighbour: it is not
# greeted again for this long, whatever discovery says of it, unless it greets us.
PARTED_BACKOFF = 60.0


class Source(StrEnum):
    MDNS = "mdns"
    BOOTSTRAP = "bootstrap"
    DHT = "dht"
    HINT = "hint"  # named by another peer in a hello
    INBOUND = "inbound"  # it contacted us


@dataclass
class Peer:
    peer_id: str
    addrs: tuple[str, ...] = ()
    record: NodeRecord | None = None
    source: Source = Source.HINT
    first_seen: float = 0.0
    last_seen: float | None = None  # last successful contact; None: never reached
    live: bool = False
    attempts: int = 0
    next_attempt: float = 0.0
    rtt: float | None = None
    parted: bool = False  # out of the view because a side trimmed the connection, not gone

    @property
    def state(self) -> str:
        return self.record.state if self.record else "unknown"


@dataclass
class Membership:
    self_id: str
    peer_timeout: float = DEFAULT_PEER_TIMEOUT
    max_peers: int = DEFAULT_MAX_PEERS
    peers: dict[str, Peer] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    hint_budget: HintBudget | None = None  # None: HintBudget(self_id) with its defaults

    def __post_init__(self) -> None:
        if self.hint_budget is None:
            self.hint_budget = HintBudget(self.self_id)

    @property
    def hints(self) -> HintBudget:
        assert self.hint_budget is not None
        return self.hint_budget

    def _entry(self, peer_id: str, source: Source, now: float) -> Peer | None:
        """`peer_id`'s entry, made (first heard of from `source`) if new; None for ourselves, or
        when the view is full and no entry may give way."""
        if peer_id == self.self_id:
            return None
        peer = self.peers.get(peer_id)
        if peer is None:
            if len(self.peers) >= self.max_peers and not self._evict_one():
                return None
            peer = self.peers[peer_id] = Peer(peer_id=peer_id, source=source, first_seen=now)
        return peer

    def learn(self, peer_id: str, addrs: tuple[str, ...], source: Source, now: float) -> bool:
        """A discovery source named `peer_id` at `addrs`. True if it should be contacted now."""
        peer = self._entry(peer_id, source, now)
        if peer is None:
            return False
        # The addresses of a peer's own signed record, or of our own discovery sources, are
        # not a hint's to add to: a hint names addresses only of peers known from hints alone
        # (whose dials rainnet.hints budgets).
        hint_only = peer.source is Source.HINT and peer.record is None
        if source is not Source.HINT and peer.source in (Source.HINT, Source.INBOUND):
            # Named by a discovery source of ours: no longer a hint only, nor only a peer that
            # dialed us (how a peer is known ranks it in the neighbourhood).
            peer.source = source
        if addrs and (source is not Source.HINT or hint_only):
            merged = tuple(dict.fromkeys(addrs + peer.addrs))
            peer.addrs = merged[:MAX_ADDRS_PER_PEER]
        if peer.live:
            return False
        # A fresh mention from a discovery source is news: try again soon, from a clean slate
        # (but for a peer that parted: it is not gone, it has no room for us).
        if peer.parted:
            return peer.next_attempt <= now
        if source is not Source.HINT or peer.attempts >= MAX_ATTEMPTS:
            peer.attempts = 0
            peer.next_attempt = now
        return peer.next_attempt <= now

    def learn_hints(self, source: str, hints: Sequence[Hint], now: float) -> int:
        """`source` (a peer that said hello) named these peers; those within the hint budget
        are learnt. How many were."""
        admitted = self.hints.admit(source, hints, self.peers.keys(), now)
        for hint in admitted:
            self.learn(hint.peer_id, hint.addrs, Source.HINT, now)
        return len(admitted)

    def dial_addrs(self, peer: Peer, now: float) -> tuple[str, ...]:
        """Where to dial `peer` now: all its addresses, or for a peer known only from hints and
        never reached, those whose per-address budget allows a dial (each charged one)."""
        if peer.source is Source.HINT and peer.last_seen is None:
            return self.hints.dialable(peer.addrs, now)
        return peer.addrs

    def contacted(
        self, peer_id: str, now: float, record: NodeRecord | None = None, rtt: float | None = None
    ) -> bool:
        """A hello or heartbeat with `peer_id` succeeded. True if the peer (re)joined the view."""
        peer = self._entry(peer_id, Source.INBOUND, now)
        if peer is None:
            return False
        joined = not peer.live
        peer.live = True
        peer.parted = False
        peer.last_seen = now
        peer.attempts = 0
        if rtt is not None:
            peer.rtt = rtt
        if record is not None and (peer.record is None or record.seq >= peer.record.seq):
            peer.record = record
            if record.addrs:
                peer.addrs = record.addrs[:MAX_ADDRS_PER_PEER]
        return joined

    def failed(self, peer_id: str, now: float) -> None:
        """A dial, hello or heartbeat to `peer_id` failed: back off before the next attempt."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        peer.attempts += 1
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** min(peer.attempts - 1, 16))
        peer.next_attempt = now + delay * (0.75 + 0.5 * self.rng.random())

    def part(self, peer_id: str, now: float) -> bool:
        """The connection to `peer_id` was trimmed (by us, or by it): out of the view, not gone,
        and not greeted again for PARTED_BACKOFF. True if it was live."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return False
        was_live = peer.live
        peer.live = False
        peer.parted = True
        peer.attempts = 0
        peer.next_attempt = now + PARTED_BACKOFF * (0.75 + 0.5 * self.rng.random())
        return was_live

    def reachable(self, peer_id: str) -> bool:
        """Live, or parted (alive, answering, but not a neighbour)."""
        peer = self.peers.get(peer_id)
        return bool(peer and (peer.live or peer.parted))

    def expire(self, now: float) -> list[str]:
        """Peers whose last contact is older than the timeout leave the view; their ids."""
        gone = []
        for peer in self.peers.values():
            if (
                peer.live
                and peer.last_seen is not None
                and now - peer.last_seen > self.peer_timeout
            ):
                peer.live = False
                peer.next_attempt = now
                gone.append(peer.peer_id)
            if peer.record is not None and not peer.record.is_fresh(now):
                peer.record = None
        # Forget candidates nobody could reach for a long time.
        for peer_id in [
            p.peer_id for p in self.peers.values() if not p.live and p.attempts >= MAX_ATTEMPTS
        ]:
            del self.peers[peer_id]
        return gone

    def due_for_dial(self, now: float) -> list[Peer]:
        """Candidates (not live, with addresses) whose backoff has run out."""
        return [
            p
            for p in self.peers.values()
            if not p.live and p.addrs and p.next_attempt <= now and p.attempts < MAX_ATTEMPTS
        ]

    def live_peers(self) -> list[Peer]:
        return sorted((p for p in self.peers.values() if p.live), key=lambda p: p.peer_id)

    def is_live(self, peer_id: str) -> bool:
        peer = self.peers.get(peer_id)
        return bool(peer and peer.live)

    def sample(self, k: int, exclude: str | None = None) -> list[Peer]:
        """Up to `k` live peers with addresses, at random: the hints a hello carries."""
        pool = [p for p in self.peers.values() if p.live and p.addrs and p.peer_id != exclude]
        return self.rng.sample(pool, min(k, len(pool)))

    def _evict_one(self) -> bool:
        """Make room by forgetting the candidate tried most; never a live peer."""
        dead = [p for p in self.peers.values() if not p.live]
        if not dead:
            return False
        victim = max(dead, key=lambda p: (p.attempts, -p.first_seen))
        del self.peers[victim.peer_id]
        return True
