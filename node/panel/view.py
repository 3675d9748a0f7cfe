"""What the panel shows, made from one snapshot of the node: the view, and what changed in it.

Sans-io and pure. `build(snapshot)` turns a `node.snapshot.NodeSnapshot` (with its detail) into
a `View`: sections of entries by key, each entry a frozen dataclass of plain values:
- nodes: every node this one sees as a front panel (this node first, then its live peers, then
  those that left and are still remembered, dimmed: `up` false);
- jobs: ours, newest first, the tasks of an array folded into one entry with their counts;
- guests: the jobs we run for others; mpi: the MPI groups and their members;
- exchanges: the recent exchanges of credit with their counterparties;
- info: this node, its credit, its lending policy (why it lends or not) and the credit plot.

`diff(old, new)` is what the page gets each second: per section, the entries that changed (whole)
and the keys that went (None). Values that move all the time without meaning anything on a
panel (round-trip times, last-seen times, a running job's elapsed time: the page counts that
itself from `since`) are left out, so a quiet network sends nearly empty deltas.
`as_json(view)` is the view as plain JSON values (the control API's answer that `rain top`
draws, and the page's first message).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from node.panel import plot
from node.panel.lights import NetLight, net_light
from node.snapshot import DetailView, ExchangeRow, GuestRow, JobRow, NodeSnapshot, PeerView

MAX_JOB_ENTRIES = 50  # newest first; an array counts as one
MAX_EXCHANGES_SHOWN = 20
FINISHED = frozenset({"done", "failed", "cancelled"})
ACTIVE = frozenset({"offering", "running", "settling"})


class Section(enum.StrEnum):
    NODES = "nodes"
    JOBS = "jobs"
    GUESTS = "guests"
    MPI = "mpi"
    EXCHANGES = "exchanges"
    INFO = "info"


class JobKind(enum.StrEnum):
    JOB = "job"
    ARRAY = "array"


class GuestStage(enum.StrEnum):
    RUNNING = "running"
    SETTLING = "settling"  # its sandbox is gone; paid and sent back


@dataclass(frozen=True)
class NodeEntry:
    id: str
    me: bool
    up: bool
    net: NetLight
    hot: bool
    user1: str
    user2: str
    state: str
    cpus: int | None
    memory: int | None
    gpus: int | None
    load: int  # eighths
    version: str | None


@dataclass(frozen=True)
class JobEntry:
    id: str  # the job's id; an array's: the array's
    kind: JobKind
    command: str
    state: str
    worker: str | None  # an array's: None (see workers)
    workers: int
    since: float  # started, or submitted while it waits
    until: float | None  # ended (an array: its last task), None while any runs
    cpu: float
    credit: float
    tasks: int
    done: int
    failed: int  # failed or cancelled
    active: int  # offered, running or settling


@dataclass(frozen=True)
class GuestEntry:
    id: str
    requester: str
    cpus: float
    memory: int
    since: float
    stage: GuestStage


@dataclass(frozen=True)
class MpiEntry:
    id: str
    state: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class ExchangeEntry:
    seq: int
    time: float
    peer: str
    job: str
    amount: float
    role: str


@dataclass(frozen=True)
class SelfEntry:
    peer_id: str
    state: str
    version: str
    started: float
    peers: int


@dataclass(frozen=True)
class CreditEntry:
    balance: float
    earned: float
    spent: float
    floor: float


@dataclass(frozen=True)
class PolicyEntry:
    lend: str
    state: str | None
    accepts: bool  # whether it takes guests now
    reason: str


@dataclass(frozen=True)
class PlotEntry:
    svg: str


Entry = Any  # one of the frozen dataclasses above
View = dict[Section, dict[str, Entry]]
Delta = dict[Section, dict[str, Entry | None]]


def build(snap: NodeSnapshot) -> View:
    detail = snap.detail or DetailView((), (), (), (), ())
    me = snap.me
    nodes: dict[str, Entry] = {
        me.peer_id: NodeEntry(
            id=me.peer_id,
            me=True,
            up=True,
            net=net_light(me.addrs, bool(snap.peers)),
            hot=me.hot,
            user1=me.user1,
            user2=me.user2,
            state=me.state,
            cpus=me.cpus,
            memory=me.memory,
            gpus=me.gpus,
            load=me.load,
            version=me.version,
        )
    }
    for peer in snap.peers:
        nodes[peer.peer_id] = _node(peer, up=True)
    for peer in detail.left:
        nodes.setdefault(peer.peer_id, _node(peer, up=False))
    exchanges = detail.exchanges[:MAX_EXCHANGES_SHOWN]
    c = snap.credit
    credit = CreditEntry(c.balance, c.earned, c.spent, c.floor)
    p = snap.policy
    return {
        Section.NODES: nodes,
        Section.JOBS: job_entries(detail.jobs),
        Section.GUESTS: {g.job_id: _guest(g) for g in detail.guests},
        Section.MPI: {
            g.group_id: MpiEntry(g.group_id, g.state, g.members) for g in detail.mpi_groups
        },
        Section.EXCHANGES: {str(x.sequence): _exchange(x) for x in exchanges},
        Section.INFO: {
            "self": SelfEntry(
                me.peer_id, me.state, me.version, snap.taken_at - me.uptime, len(snap.peers)
            ),
            "credit": credit,
            "policy": PolicyEntry(p.lend, p.state, p.start_allowed, p.reason),
            "plot": PlotEntry(
                plot.credit_svg(plot.credit_series(detail.exchanges, c.earned, c.spent))
            ),
        },
    }


def _node(p: PeerView, up: bool) -> NodeEntry:
    return NodeEntry(
        id=p.peer_id,
        me=False,
        up=up,
        net=net_light(p.addrs, up),
        hot=p.hot,
        user1=p.user1,
        user2=p.user2,
        state=p.state,
        cpus=p.cpus,
        memory=p.memory,
        gpus=p.gpus,
        load=p.load,
        version=p.version,
    )


def _guest(g: GuestRow) -> GuestEntry:
    stage = GuestStage.RUNNING if g.in_sandbox else GuestStage.SETTLING
    return GuestEntry(g.job_id, g.requester, g.cpus, g.memory, g.started, stage)


def _exchange(x: ExchangeRow) -> ExchangeEntry:
    return ExchangeEntry(x.sequence, x.time, x.peer, x.job_id, x.amount, x.role)


def job_entries(rows: tuple[JobRow, ...], limit: int = MAX_JOB_ENTRIES) -> dict[str, Entry]:
    """Our jobs newest first, at most `limit` entries; the tasks of one array (its id) fold
    into one entry."""
    groups: list[list[JobRow]] = []
    arrays: dict[str, list[JobRow]] = {}
    for row in sorted(rows, key=lambda r: r.submitted):
        if row.array_id is None:
            groups.append([row])
        elif row.array_id in arrays:
            arrays[row.array_id].append(row)
        else:
            arrays[row.array_id] = [row]
            groups.append(arrays[row.array_id])
    out: dict[str, Entry] = {}
    for group in reversed(groups[-limit:]):
        entry = _job(group)
        out[entry.id] = entry
    return out


def _job(group: list[JobRow]) -> JobEntry:
    first = group[0]
    states = [r.state for r in group]
    done = states.count("done")
    finished = sum(s in FINISHED for s in states)
    active = sum(s in ACTIVE for s in states)
    if len(group) == 1:
        state = first.state
    elif active:
        state = "running"
    elif finished < len(group):
        state = "queued"
    else:
        state = "done" if done == len(group) else "failed"
    ended = [r.ended for r in group if r.ended is not None]
    return JobEntry(
        id=first.array_id or first.job_id,
        kind=JobKind.JOB if first.array_id is None else JobKind.ARRAY,
        command=first.command,
        state=state,
        worker=first.worker if len(group) == 1 else None,
        workers=len({r.worker for r in group if r.worker}),
        since=min(r.started or r.submitted for r in group),
        until=max(ended) if finished == len(group) and ended else None,
        cpu=round(sum(r.cpu_seconds for r in group), 3),
        credit=round(sum(r.credit for r in group), 3),
        tasks=len(group),
        done=done,
        failed=finished - done,
        active=active,
    )


def diff(old: View, new: View) -> Delta:
    out: Delta = {}
    for section in Section:
        before, after = old.get(section, {}), new.get(section, {})
        changes: dict[str, Entry | None] = {k: v for k, v in after.items() if before.get(k) != v}
        changes.update(dict.fromkeys(before.keys() - after.keys()))
        if changes:
            out[section] = changes
    return out


def _plain(entry: Any) -> Any:
    # Entries are frozen dataclasses of plain values: their __dict__ is already JSON (enums are
    # strings, tuples lists), without dataclasses.asdict's deep copy (a view holds thousands).
    return entry.__dict__


def encode(message: object) -> str:
    """A message of views or deltas as compact JSON."""
    return json.dumps(message, separators=(",", ":"), default=_plain)


def as_json(view: View | Delta) -> dict[str, Any]:
    """As plain JSON values (what `encode` writes)."""
    out: dict[str, Any] = json.loads(encode(view))
    return out
