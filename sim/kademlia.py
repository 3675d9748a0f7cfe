"""The DHT, modelled: the node runs py-libp2p's KadDHT, which cannot be run ten thousand times in
one process, so its lookups are replayed over ideal routing tables instead.

A node's routing table is taken to hold, for each bucket (the peers at XOR distance in
[2^b, 2^(b+1)) of its key), up to K of the peers in it: all of them when the bucket holds fewer
(the near buckets), else K spread evenly over it. A lookup is Kademlia's iterative one: ALPHA
queries at a time to the closest unqueried peers of the shortlist, each answering with the K
closest it knows, until the K closest known have all been asked. A round lasts until its first
answer (libp2p's lookups are asynchronous: each answer lets the next query go, so a slow or
vanished peer holds up only its own slot), or QUERY_TIMEOUT when none of its peers answers.
Departed peers stay in the tables for STALE seconds (tables are refreshed, not told).

What is modelled, then: who is queried (each query is a transient connection, and a message
each way), how many rounds a lookup takes, and how long. Provider records are kept per key,
with the time each was provided, as the K closest nodes to the key would hold them.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

K = 20  # bucket size and replication (py-libp2p's and the paper's)
ALPHA = 3  # queries in flight per lookup
QUERY_TIMEOUT = 2.0  # seconds a query to a vanished peer costs its round
STALE = 60.0  # seconds a departed peer stays in routing tables
MAX_ROUNDS = 32


def key_of(name: str) -> int:
    """A DHT key (sha256, as py-libp2p's) of a record key or provider key."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest(), "big")


@dataclass(frozen=True)
class Lookup:
    rounds: int
    latency: float  # seconds
    queried: tuple[int, ...]  # node numbers asked (a transient connection each)
    closest: tuple[int, ...]  # the K closest live nodes found


@dataclass
class Kademlia:
    keys: list[int] = field(default_factory=list)  # sorted DHT keys of the nodes in tables
    owner: dict[int, int] = field(default_factory=dict)  # DHT key -> node number
    departed: dict[int, float] = field(default_factory=dict)  # node number -> when it left
    providers: dict[int, dict[int, float]] = field(default_factory=dict)  # key -> node -> when

    def join(self, node: int, key: int) -> None:
        if key not in self.owner:
            bisect.insort(self.keys, key)
        self.owner[key] = node
        self.departed.pop(node, None)

    def leave(self, node: int, now: float) -> None:
        self.departed[node] = now

    def forget_stale(self, now: float, key_of_node: Callable[[int], int]) -> None:
        """Drop from the tables the peers departed more than STALE ago."""
        for node, left in list(self.departed.items()):
            if now - left > STALE:
                key = key_of_node(node)
                i = bisect.bisect_left(self.keys, key)
                if i < len(self.keys) and self.keys[i] == key:
                    del self.keys[i]
                self.owner.pop(key, None)
                del self.departed[node]

    def known_by(self, own: int, target: int) -> list[int]:
        """The peers (DHT keys) node `own` knows in the bucket that holds `target`."""
        distance = own ^ target
        if distance == 0:
            return []
        b = distance.bit_length() - 1
        lo = ((own >> b) ^ 1) << b
        i0 = bisect.bisect_left(self.keys, lo)
        i1 = bisect.bisect_left(self.keys, lo + (1 << b))
        if i1 - i0 <= K:
            return self.keys[i0:i1]
        step = (i1 - i0) / K
        offset = (own % 1024) / 1024  # (each node its own sample: no peer is in every table)
        return [self.keys[i0 + int((j + offset) * step)] for j in range(K)]

    def closest_known(self, own: int, target: int) -> list[int]:
        """What a node answers a query for `target` with: the K closest to it that it knows
        (its bucket for the target, and the nearer buckets, which hold peers closer still)."""
        found = set(self.known_by(own, target))
        # Its nearest buckets, full: the peers nearest its own key (near the target only when
        # the target is near it, which is how the last rounds of a lookup end).
        i = bisect.bisect_left(self.keys, own)
        found.update(self.keys[max(0, i - K // 2) : i + K // 2 + 1])
        found.discard(own)
        return sorted(found, key=lambda k: k ^ target)[:K]

    def lookup(
        self,
        origin: int,
        own: int,
        target: int,
        alive: Callable[[int], bool],
        rtt: Callable[[int, int], float],
    ) -> Lookup:
        """Node `origin` (a node number, `own` its key) looks `target` up; `alive(node)`:
        whether it answers (up, and reachable from the origin); `rtt(a, b)` in seconds."""
        shortlist = set(self.closest_known(own, target))
        asked: set[int] = set()
        answered: set[int] = set()
        rounds, latency = 0, 0.0
        while rounds < MAX_ROUNDS:
            best = sorted(shortlist, key=lambda k: k ^ target)
            todo = [k for k in best[:K] if k not in asked][:ALPHA]
            if not todo:
                break
            rounds += 1
            first = QUERY_TIMEOUT  # (no answer at all: the round waits out its timeout)
            for k in todo:
                asked.add(k)
                node = self.owner.get(k)
                if node is None or not alive(node):
                    shortlist.discard(k)
                    continue
                answered.add(k)
                first = min(first, rtt(origin, node))
                shortlist.update(self.closest_known(k, target))
            latency += first
        closest = sorted(answered, key=lambda k: k ^ target)[:K]
        queried = tuple(self.owner[k] for k in asked if k in self.owner)
        return Lookup(rounds, latency, queried, tuple(self.owner[k] for k in closest))

    def provide(self, key: int, node: int, now: float) -> None:
        self.providers.setdefault(key, {})[node] = now

    def providers_of(self, key: int, count: int) -> list[int]:
        """Up to `count` providers of `key`, the most recently provided first."""
        held = self.providers.get(key, {})
        return sorted(held, key=lambda n: -held[n])[:count]
