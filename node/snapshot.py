"""One snapshot of a running node: itself, its peers, its jobs, its credit and its policy.

`rain status`, `rain peers` and the panel all read this one picture (node.control.ops makes it
from the node's live state), so they never disagree. Frozen and made of plain values: it can be
kept, compared with the next one (the panel sends what changed) and turned into JSON.

The panel asks for more (`detail`): each of our jobs, the guests' jobs running here, the recent
exchanges of credit, the MPI groups, and the peers that left the view but are still remembered.
Lights and load are as the records say them (rainnet.records: user lights are "off", "on" or
"blink"; load is in eighths of the machine).
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
    user1: str = "off"
    user2: str = "off"
    hot: bool = False
    load: int = 0
    unreachable_bootstrap: tuple[str, ...] = ()  # --bootstrap addresses we cannot reach
    pool: str | None = None  # the private pool's name; None: the open network
    connections: int = 0  # held now (rainnet.connections)
    max_connections: int = 0  # --max-connections
    trimmed: int = 0  # connections trimmed since the start
    network_size: int | None = None  # estimated from the DHT's routing table (rainnet.netsize)


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
    user1: str = "off"
    user2: str = "off"
    hot: bool = False
    load: int = 0
    name: str = ""  # the owner's name for it (its hostname by default)
    lends: bool | None = None  # None: we hold no record of it
    mpi: bool = False  # it takes MPI ranks
    known: str = ""  # how this node knows it (Known)


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
class JobRow:
    """One job we submitted; a task of an array has its index."""

    job_id: str
    state: str
    worker: str | None
    submitted: float
    started: float | None
    ended: float | None
    cpu_seconds: float
    credit: float
    command: str  # its argv, joined and cut short
    array_task: int | None
    array_id: str | None = None  # the array it is a task of


@dataclass(frozen=True)
class GuestRow:
    """A job (or task session) we run for another node."""

    job_id: str
    requester: str
    cpus: float
    memory: int
    started: float
    in_sandbox: bool  # False once it has ended and is being settled


@dataclass(frozen=True)
class ExchangeRow:
    """One exchange in our ledger, newest first: what we earned from or spent with a peer."""

    sequence: int
    time: float
    peer: str
    job_id: str
    amount: float  # credits: positive earned, negative spent
    role: str  # "earned", "pending" (not agreed yet) or "spent"


@dataclass(frozen=True)
class MpiGroupRow:
    group_id: str
    state: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class DetailView:
    jobs: tuple[JobRow, ...]
    guests: tuple[GuestRow, ...]
    exchanges: tuple[ExchangeRow, ...]
    mpi_groups: tuple[MpiGroupRow, ...]
    left: tuple[PeerView, ...]  # peers that left the view, while it still remembers them


@dataclass(frozen=True)
class NodeSnapshot:
    taken_at: float
    me: SelfView
    peers: tuple[PeerView, ...]
    jobs: JobsView
    credit: CreditView
    policy: PolicyView
    detail: DetailView | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def status(self) -> dict[str, Any]:
        """What `rain status` shows (the control API's "status" answer)."""
        out = dataclasses.asdict(self.me)
        out["addrs"] = list(self.me.addrs)
        out["backends"] = list(self.me.backends)
        out["unreachable_bootstrap"] = list(self.me.unreachable_bootstrap)
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
