"""One snapshot of a running node: itself, its peers, its jobs, its credit and its policy.

`rain status`, `rain peers` and the panel all read this one picture (node.control.ops makes it
from the node's live state), so they never disagree. Frozen and made of plain values: it can be
kept, compared with the next one (the panel sends what changed) and turned into JSON.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SelfView:
    peer_id: str
    addrs: tuple[str, ...]
    state: str
    cpus: int
    memory: int
    gpus: int
    backends: tuple[str, ...]
    version: str
    lend: str
    mdns: bool
    uptime: float
    pid: int
    streams: int


@dataclass(frozen=True)
class PeerView:
    peer_id: str
    addrs: tuple[str, ...]
    state: str
    cpus: int | None
    memory: int | None
    gpus: int | None
    backends: tuple[str, ...]
    version: str | None
    last_seen: float | None
    rtt_ms: float | None
    source: str


@dataclass(frozen=True)
class JobsView:
    """Our jobs by state, and the guests' jobs (or task sessions) running here now."""

    ours: tuple[tuple[str, int], ...]  # (state, how many), states in a fixed order
    guests: int

    @classmethod
    def count(cls, states: list[str], guests: int) -> JobsView:
        counted = Counter(states)
        return cls(tuple(sorted(counted.items())), guests)


@dataclass(frozen=True)
class CreditView:
    balance: float
    earned: float
    spent: float
    floor: float


@dataclass(frozen=True)
class PolicyView:
    lend: str
    state: str | None
    start_allowed: bool
    reason: str


@dataclass(frozen=True)
class NodeSnapshot:
    taken_at: float
    me: SelfView
    peers: tuple[PeerView, ...]
    jobs: JobsView
    credit: CreditView
    policy: PolicyView

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def status(self) -> dict[str, Any]:
        """What `rain status` shows (the control API's "status" answer)."""
        out = dataclasses.asdict(self.me)
        out["addrs"] = list(self.me.addrs)
        out["backends"] = list(self.me.backends)
        out["peers"] = len(self.peers)
        out["jobs"] = dict(self.jobs.ours)
        out["guests"] = self.jobs.guests
        out["credit"] = dataclasses.asdict(self.credit)
        return out

    def peer_list(self) -> list[dict[str, Any]]:
        """What `rain peers` shows (the control API's "peers" answer)."""
        rows = []
        for peer in self.peers:
            row = dataclasses.asdict(peer)
            row["addrs"], row["backends"] = list(peer.addrs), list(peer.backends)
            rows.append(row)
        return rows
