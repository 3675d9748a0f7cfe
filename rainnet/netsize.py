"""How large the network is, estimated from a Kademlia routing table (sans-io).

Peers' DHT keys (sha256 of their ids) are spread uniformly over the key space, so with N other
nodes the i-th closest to us lies, on average, i/(N+1) of the space away. A routing table holds
the closest peers to us (Kademlia's last buckets are filled by the lookups for our own id), so
fitting those expected distances to the `k` smallest distances it holds (least squares through
the origin) gives N. It is an estimate: with k = 8 its spread is about a third of N, and it
counts only the nodes of this DHT (a private pool's, or the open network's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

KEY_SPACE = 2**256
ESTIMATE_FROM = 8  # the closest peers the fit uses


def dht_key(peer_id: bytes) -> int:
    """A peer's position in the key space (py-libp2p's: sha256 of its id's bytes)."""
    return int.from_bytes(hashlib.sha256(peer_id).digest(), "big")


def estimate(me: bytes, peers: Iterable[bytes], k: int = ESTIMATE_FROM) -> int | None:
    """The network's size (ourselves included) from the ids in our routing table; None when
    the table is empty."""
    own = dht_key(me)
    distances = sorted((dht_key(p) ^ own) / KEY_SPACE for p in set(peers) if p != me)[:k]
    if not distances:
        return None
    weighted = sum(i * d for i, d in enumerate(distances, start=1))
    squares = sum(i * i for i in range(1, len(distances) + 1))
    if weighted <= 0:
        return len(distances) + 1
    others = squares / weighted - 1
    # (Never fewer than the peers we hold, ourselves counted.)
    return max(len(distances) + 1, round(others) + 1)
