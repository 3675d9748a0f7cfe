"""Group assembly, sans-io: which peers form an MPI group, and whether their reservations hold.

`plan_group(request, records)` picks members from the signed node records we know: peers that
take MPI ranks, accept guests now, can be reached directly (MPI opens TCP connections between
every pair of ranks: it does not cross NAT or relays), and have room for at least one rank.
It fills them in a fixed order (nearest first) up to `per_node` ranks each, and names each
member with a pseudo host (`127.1.0.N`: an IP literal, so hydra resolves nothing and several
members on one machine stay distinct hosts). When there are not enough ranks it says what was
missing, in the user's terms (`need 4 ranks; 2 idle peers take MPI, 1 of them behind NAT`).

`Assembly` follows the all-or-nothing reservation of a plan: every member reserved, or the
group fails and the members that did reserve are released. Plain synchronous code; the trio
side (node.mpi.groups) sends the messages and feeds the answers in.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ledger.block import MAX_CPUS_MILLI, MAX_WALL_MS, JobLimits
from node.jobs.core.scheduler import ACCEPTING_STATES
from rainnet.records import NodeRecord

MiB = 1 << 20
CIRCUIT = "/p2p-circuit"
PSEUDO_NET = ipaddress.IPv4Network("127.1.0.0/16")
MAX_MEMBERS = PSEUDO_NET.num_addresses - 2


@dataclass(frozen=True)
class GroupRequest:
    """What `rain mpi run -n N [--per-node K] [--cpus-per-rank C] [--mem SIZE]` asks for."""

    ranks: int
    per_node: int | None = None  # at most this many ranks on one member; None: as many as fit
    cpus_per_rank: float = 1.0
    memory_per_rank: int = 256 * MiB
    wall_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if not 1 <= self.ranks <= 1024:
            raise ValueError(f"-n {self.ranks}: a group has 1 to 1024 ranks")
        if self.per_node is not None and not 1 <= self.per_node <= 1024:
            raise ValueError(f"--per-node {self.per_node}: 1 to 1024 ranks on one member")
        if not 0.01 <= self.cpus_per_rank <= 64:
            raise ValueError(f"--cpus-per-rank {self.cpus_per_rank:g}: 0.01 to 64")
        if not 4 * MiB <= self.memory_per_rank <= 1 << 40:
            raise ValueError("--mem: 4M to 1T per rank")
        if not 0.1 <= self.wall_seconds <= 7 * 86400:
            raise ValueError("--time: up to 7 days")


def group_limits(request: GroupRequest) -> JobLimits:
    """The whole group's limits as one job's (all its ranks' CPUs, its wall time): what the
    requester's credit floor is checked against before any member is reserved."""
    return JobLimits(
        cpus_milli=min(MAX_CPUS_MILLI, max(1, round(request.ranks * request.cpus_per_rank * 1000))),
        gpus=0,
        wall_ms=min(MAX_WALL_MS, max(1, round(request.wall_seconds * 1000))),
    )


@dataclass(frozen=True)
class Member:
    peer_id: str
    host: str  # the pseudo host name hydra knows it by
    ranks: int
    address: str | None  # the IP address we reach it at directly, if its record names one


@dataclass(frozen=True)
class GroupPlan:
    members: tuple[Member, ...]

    @property
    def ranks(self) -> int:
        return sum(m.ranks for m in self.members)

    def member_by_host(self, host: str) -> Member | None:
        return next((m for m in self.members if m.host == host), None)


@dataclass(frozen=True)
class Unassembled:
    """Why no group can be formed now (a message for the user)."""

    reason: str


def direct_ips(record: NodeRecord) -> list[str]:
    """The IP addresses a record names that reach the node directly (no relay circuit)."""
    return addr_ips(record.addrs)


def addr_ips(addrs: Iterable[str]) -> list[str]:
    """The IP addresses of multiaddrs, leaving out relay circuits."""
    out = []
    for addr in addrs:
        if CIRCUIT in addr:
            continue
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            out.append(parts[2])
    return out


def behind_nat(record: NodeRecord) -> bool:
    """Whether a node is behind NAT: it holds a relay reservation (`--relay-via`, what a node
    behind NAT is run with, advertises circuit addresses beside its own private ones, which
    nobody outside its LAN reaches), or it has no direct address at all."""
    return any(CIRCUIT in a for a in record.addrs) or (
        bool(record.addrs) and not direct_ips(record)
    )


def rank_slots(record: NodeRecord, request: GroupRequest) -> int:
    """How many ranks of the request one node could hold, by its CPUs and memory (its owner's
    share of them may be smaller: the member's own answer to the reservation is final)."""
    by_cpu = math.floor(record.cpus / request.cpus_per_rank + 1e-9)
    by_memory = record.memory // request.memory_per_rank
    slots = min(by_cpu, by_memory)
    return min(slots, request.per_node) if request.per_node is not None else slots


def pseudo_host(index: int) -> str:
    return str(PSEUDO_NET.network_address + index + 1)


def plan_group(
    request: GroupRequest,
    records: Iterable[NodeRecord],
    rtts: dict[str, float] | None = None,
    exclude: Iterable[str] = (),
) -> GroupPlan | Unassembled:
    """The members of a group for `request` from the peers' records, or why there are none."""
    excluded = set(exclude)
    known = [r for r in records if r.peer_id not in excluded]
    takers = [r for r in known if r.mpi and r.lends and "native" in r.backends]
    free = [r for r in takers if r.state in ACCEPTING_STATES]
    direct = [r for r in free if not behind_nat(r)]
    roomy = [r for r in direct if rank_slots(r, request) > 0]
    times = rtts or {}
    roomy.sort(key=lambda r: (times.get(r.peer_id, math.inf), r.peer_id))
    members: list[Member] = []
    left = request.ranks
    for record in roomy:
        if left == 0 or len(members) >= MAX_MEMBERS:
            break
        take = min(left, rank_slots(record, request))
        ips = direct_ips(record)
        members.append(Member(record.peer_id, pseudo_host(len(members)), take, _pick_ip(ips)))
        left -= take
    if left == 0:
        return GroupPlan(tuple(members))
    return Unassembled(_shortfall(request, known, takers, free, direct, roomy))


def _shortfall(
    request: GroupRequest,
    known: Sequence[NodeRecord],
    takers: Sequence[NodeRecord],
    free: Sequence[NodeRecord],
    direct: Sequence[NodeRecord],
    roomy: Sequence[NodeRecord],
) -> str:
    need = f"need {request.ranks} rank{'s' if request.ranks != 1 else ''}"
    if not known:
        return f"{need}; no peers known yet (is this node connected? see `rain peers`)"
    if not takers:
        return f"{need}; none of the {len(known)} peers takes MPI ranks"
    parts = [f"{len(free)} idle peer{'s' if len(free) != 1 else ''} take MPI"]
    if len(takers) > len(free):
        parts[0] += f" ({len(takers) - len(free)} more are busy or their owner is back)"
    nat = len(free) - len(direct)
    if nat:
        parts.append(f"{nat} of them behind NAT (MPI needs direct connections)")
    small = len(direct) - len(roomy)
    if small:
        per = f"{request.cpus_per_rank:g} CPUs and {request.memory_per_rank // MiB} MiB a rank"
        parts.append(f"{small} too small for one rank ({per})")
    slots = sum(rank_slots(r, request) for r in roomy)
    if roomy:
        per_node = f" at {request.per_node} per node" if request.per_node else ""
        parts.append(f"room for {slots} rank{'s' if slots != 1 else ''}{per_node}")
    return f"{need}; " + ", ".join(parts)


def _pick_ip(ips: Sequence[str]) -> str | None:
    """One address of a member for the user's hostfile: a routable IPv4 one if any."""
    ordered = sorted(ips, key=lambda ip: (":" in ip, ip.startswith("127."), ip))
    return ordered[0] if ordered else None


def launcher_address(ours: Sequence[str], members: Sequence[str | None]) -> str:
    """Which of our IP addresses the members' proxies connect back to (mpiexec -localhost):
    loopback when every member is on this machine's loopback, else the address of ours that
    shares the longest prefix with a member's."""
    theirs = [ipaddress.ip_address(m) for m in members if m]
    mine = [ipaddress.ip_address(a) for a in ours]
    if not theirs or all(t.is_loopback for t in theirs):
        return "127.0.0.1"
    candidates = [a for a in mine if not a.is_loopback and not a.is_unspecified] or mine

    def shared(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        best = 0
        for t in theirs:
            if t.version == a.version:
                bits = t.max_prefixlen - (int(t) ^ int(a)).bit_length()
                best = max(best, bits)
        return best

    return str(max(candidates, key=shared)) if candidates else "127.0.0.1"


# ----- the reservation, all or nothing ------------------------------------------------------


class Answer(enum.Enum):
    PENDING = "pending"
    RESERVED = "reserved"
    REFUSED = "refused"


@dataclass(frozen=True)
class Ready:
    plan: GroupPlan


@dataclass(frozen=True)
class Failed:
    """The group could not be reserved whole: why, and whom to release."""

    reason: str
    release: tuple[str, ...]
    refused: tuple[str, ...]


@dataclass
class Assembly:
    """One attempt at reserving every member of `plan`."""

    plan: GroupPlan
    answers: dict[str, Answer] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.answers = {m.peer_id: Answer.PENDING for m in self.plan.members}

    def reserved(self, peer_id: str) -> None:
        self._answer(peer_id, Answer.RESERVED)

    def refused(self, peer_id: str, reason: str) -> None:
        self._answer(peer_id, Answer.REFUSED)
        self.reasons[peer_id] = reason

    def _answer(self, peer_id: str, answer: Answer) -> None:
        if self.answers.get(peer_id) is not Answer.PENDING:
            raise ValueError(f"{peer_id} is not a pending member of this group")
        self.answers[peer_id] = answer

    def timed_out(self) -> None:
        """The bound on the reservation passed: every member still silent refused."""
        for peer_id, answer in self.answers.items():
            if answer is Answer.PENDING:
                self.refused(peer_id, "did not answer in time")

    @property
    def outcome(self) -> Ready | Failed | None:
        """None while answers are missing and none refused; else the attempt's end."""
        refused = [p for p, a in self.answers.items() if a is Answer.REFUSED]
        if refused:
            held = tuple(p for p, a in self.answers.items() if a is Answer.RESERVED)
            # Those still pending are released too: their answer may yet be a reservation.
            pending = tuple(p for p, a in self.answers.items() if a is Answer.PENDING)
            why = "; ".join(f"{p[-8:]}: {self.reasons[p]}" for p in refused)
            return Failed(f"members refused ({why})", held + pending, tuple(refused))
        if all(a is Answer.RESERVED for a in self.answers.values()):
            return Ready(self.plan)
        return None


# ----- hostfiles ----------------------------------------------------------------------------


class HostFormat(enum.StrEnum):
    MPICH = "mpich"
    OPENMPI = "openmpi"
    JSON = "json"


def hostfile(plan: GroupPlan, fmt: HostFormat) -> str:
    """The group as a hostfile: `host:ranks` (MPICH), `host slots=N` (Open MPI), or JSON."""
    rows = [(m.address or m.host, m) for m in plan.members]
    if fmt is HostFormat.MPICH:
        return "".join(f"{host}:{m.ranks}\n" for host, m in rows)
    if fmt is HostFormat.OPENMPI:
        return "".join(f"{host} slots={m.ranks}\n" for host, m in rows)
    members = [
        {"peer_id": m.peer_id, "host": m.host, "address": m.address, "ranks": m.ranks}
        for _, m in rows
    ]
    return json.dumps({"ranks": plan.ranks, "members": members}, indent=2) + "\n"
