"""The requester's trio edge of MPI groups: assemble a group, launch its members' parts, end it.

`assemble` plans a group from the peers' records (node.mpi.assembly), reserves every member at
once over `/rain/mpi` (a random group id and secret; each member gets the secret's hash), and
keeps the group if all reserved; else it releases those that did, leaves out those that
refused, and plans again, a few rounds at most, each bounded in time. `rain mpi run` then runs
hydra's mpiexec with our agent (node.mpi.agent) as its ssh: for each pseudo host, the agent
asks `launch`, which sends that member hydra's proxy command as an ordinary job (one attempt,
to that worker only: node.jobs.requester.Requester.submit_to), so it is run in the member's
sandbox, followed, paid and listed like any job. `end` cancels what still runs and releases
reservations never launched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ledger.admission import floor_problem
from node.jobs.core import scheduler
from node.jobs.core.holds import MemberState, wanted_holds
from node.jobs.requester import Requester
from node.jobs.requester.record import JobRecord
from node.mpi.assembly import (
    Assembly,
    Failed,
    GroupPlan,
    GroupRequest,
    Ready,
    Unassembled,
    addr_ips,
    direct_ips,
    group_limits,
    launcher_address,
    plan_group,
)
from node.mpi.reservations import GROUP_ENV, PROXY, SECRET_ENV
from node.mpi.wall import canonical_ips
from rainnet import mpiproto, wire
from rainnet.jobproto import FileEntry
from rainnet.streams import FramedStream, StreamGone
from sandbox import JobSpec, Limits, Network

log = logging.getLogger("rainnet.mpi")

RESERVATION_LEASE = 30.0  # members hold the slots this long for the launch
# One round of reservations, all members together; the rounds together stay within the
# control socket's 10 s for one request.
RESERVE_TIMEOUT = 3.0
ROUNDS = 6  # plans tried, each without the members that refused the one before
# Members that refused for want of room are asked again, after a pause, within this (the
# control request that asks for a group waits 10 s).
ASSEMBLY_PATIENCE = 6.0
REASSEMBLY_PAUSE = 1.0
MAX_GROUPS = 64  # groups kept at once (each its members' reservations)
PIDS_PER_RANK = 64  # a rank's threads (MPICH's progress threads, OFI's) and helpers
OUTPUT_BYTES = 256 << 10  # a proxy's own messages kept (the ranks' output goes to mpiexec)


@dataclass(frozen=True)
class GroupJob:
    """What the user's group carries besides its shape: like a job's."""

    inputs: tuple[tuple[FileEntry, Path], ...] = ()  # files for every member's job directory
    outputs: tuple[str, ...] = ()  # paths in each member's job directory brought back
    name: str | None = None  # `rain jobs` NAME (`--name`, or the command)


@dataclass
class Group:
    group_id: str  # the protocol's (with the secret, what members admit the launch by)
    secret: str
    request: GroupRequest
    plan: GroupPlan
    launcher: str  # our address the members' proxies connect back to (mpiexec -localhost)
    # The group as the user sees it: a job whose tasks JOB_I are its members' parts, so that
    # `rain jobs` folds them in one row, and `rain cancel` / `rain get` take the group's id.
    job_id: str
    job: GroupJob = GroupJob()
    created: float = field(default_factory=time.time)
    jobs: dict[str, str] = field(default_factory=dict)  # pseudo host -> member job id

    def as_dict(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "job_id": self.job_id,
            "ranks": self.plan.ranks,
            "launcher": self.launcher,
            "members": [
                {
                    "peer_id": m.peer_id,
                    "host": m.host,
                    "ranks": m.ranks,
                    "address": m.address,
                    "job_id": self.jobs.get(m.host),
                }
                for m in self.plan.members
            ],
        }


class Groups:
    def __init__(
        self,
        requester: Requester,
        candidates: Callable[[], list[scheduler.Candidate]],
        open_stream: Callable[[str, str], Any],
        our_addrs: Callable[[], Sequence[str]],
    ) -> None:
        self.requester = requester
        self._candidates = candidates
        self._open_stream = open_stream
        self._our_addrs = our_addrs
        self.groups: dict[str, Group] = {}
        requester.on_member_state = self._member_state

    def plan(
        self, request: GroupRequest, exclude: set[str] | None = None
    ) -> GroupPlan | Unassembled:
        known = self._candidates()
        rtts = {c.record.peer_id: c.rtt for c in known if c.rtt is not None}
        return plan_group(request, [c.record for c in known], rtts, exclude or set())

    async def assemble(
        self,
        request: GroupRequest,
        job: GroupJob = GroupJob(),
    ) -> Group | Unassembled:
        if len(self.groups) >= MAX_GROUPS:
            return Unassembled(f"{len(self.groups)} MPI groups are running from this node")
        first = self.plan(request)
        if isinstance(first, Unassembled):  # (what is missing first: it says more)
            return first
        # The whole group at once: each member checks its own part, and parts that each fit
        # could together take us past the floor (half a group would start, then be refused).
        ledger = self.requester.ledger
        balance = await ledger.balance()
        below = floor_problem(balance.balance_milli, group_limits(request), ledger.floor_milli)
        if below is not None:
            return Unassembled(f"the group of {request.ranks} ranks was {below}")
        refused: set[str] = set()
        why = ""
        patience = trio.current_time() + ASSEMBLY_PATIENCE
        for _ in range(ROUNDS):
            plan = self.plan(request, refused)
            if isinstance(plan, Unassembled) and refused and trio.current_time() < patience:
                # Short of members only for those that refused: a refusal for want of room now
                # (a task session closing, a job ending) passes; ask them all again shortly.
                await trio.sleep(REASSEMBLY_PAUSE)
                refused.clear()
                plan = self.plan(request, refused)
            if isinstance(plan, Unassembled):
                return Unassembled(plan.reason + (f"; {why}" if why else ""))
            group_id, secret = secrets.token_hex(16), secrets.token_urlsafe(24)
            ips = addr_ips(self._our_addrs())
            launcher = launcher_address(ips, [m.address for m in plan.members])
            outcome = await self._reserve(plan, group_id, secret, request, launcher)
            if isinstance(outcome, Ready):
                group = Group(group_id, secret, request, plan, launcher, self._new_job_id(), job)
                self.groups[group_id] = group
                log.info(
                    "group %s: %d ranks on %d members", group_id, plan.ranks, len(plan.members)
                )
                return group
            why = outcome.reason
            refused |= set(outcome.refused)
            self._release_later(group_id, outcome.release)
        return Unassembled(f"need {request.ranks} ranks; {why}")

    async def _reserve(
        self, plan: GroupPlan, group_id: str, secret: str, request: GroupRequest, launcher: str
    ) -> Ready | Failed:
        assembly = Assembly(plan)
        digest = hashlib.sha256(secret.encode()).digest()
        # Every direct address of every member: a rank may connect from (and be reached at)
        # whichever its MPI picks. Each member admits only those of peers it knows itself.
        records = {c.record.peer_id: c.record for c in self._candidates()}
        ips = {
            ip
            for m in plan.members
            if m.peer_id in records
            for ip in direct_ips(records[m.peer_id])
        }
        members = tuple(canonical_ips(sorted(ips)))[: mpiproto.MAX_ADDRESSES]

        async def one(peer_id: str, ranks: int) -> None:
            msg = mpiproto.Reserve(
                group_id=group_id,
                ranks=ranks,
                cpus=ranks * request.cpus_per_rank,
                memory=ranks * request.memory_per_rank,
                wall_seconds=request.wall_seconds,
                lease_seconds=RESERVATION_LEASE,
                secret_sha256=digest,
                members=members,
                launcher=launcher,
            )
            try:
                answer = await self._ask(peer_id, msg)
            except (StreamGone, wire.RemoteProtocolError, OSError) as exc:
                assembly.refused(peer_id, f"unreachable ({exc})")
                return
            if isinstance(answer, mpiproto.Reserved):
                assembly.reserved(peer_id)
            else:
                assert isinstance(answer, mpiproto.Refused)
                assembly.refused(peer_id, answer.reason)

        with trio.move_on_after(RESERVE_TIMEOUT):
            async with trio.open_nursery() as n:
                for m in plan.members:
                    n.start_soon(one, m.peer_id, m.ranks)
        if assembly.outcome is None:
            assembly.timed_out()
        outcome = assembly.outcome
        assert outcome is not None
        return outcome

    async def _ask(self, peer_id: str, msg: wire.Message) -> wire.Message:
        raw = await self._open_stream(peer_id, mpiproto.MPI)
        fs = FramedStream(raw, mpiproto.TO_REQUESTER, mpiproto.MPI_MAX_FRAME)
        try:
            await fs.send(msg)
            if isinstance(msg, mpiproto.Release):
                return msg
            return await fs.receive(RESERVE_TIMEOUT)
        finally:
            await fs.close()

    def _release_later(self, group_id: str, peers: Sequence[str]) -> None:
        nursery = self.requester.nursery
        for peer_id in peers:
            nursery.start_soon(self._release, peer_id, group_id)

    async def _release(self, peer_id: str, group_id: str) -> None:
        with trio.move_on_after(RESERVE_TIMEOUT):
            try:
                await self._ask(peer_id, mpiproto.Release(group_id=group_id))
            except (StreamGone, wire.RemoteProtocolError, OSError) as exc:
                log.info(
                    "group %s: release at %s failed (%s); its lease ends it", group_id, peer_id, exc
                )

    async def launch(
        self, group_id: str, secret: str, host: str, argv: list[str]
    ) -> JobRecord | str:
        """Send the member behind pseudo `host` its part: hydra's proxy command, as a job."""
        group = self.groups.get(group_id)
        if group is None or not secrets.compare_digest(secret, group.secret):
            return f"no MPI group {group_id[:32]!r} here (ended, or never assembled)"
        member = group.plan.member_by_host(host)
        if member is None:
            return f"group {group_id} has no host {host[:64]!r}"
        if host in group.jobs:
            return f"host {host} of group {group_id} was launched already"
        if not argv or os.path.basename(argv[0]) != PROXY:
            return f"the agent forwards only {PROXY}, not {(argv or [''])[0][:64]!r}"
        req = group.request
        spec = JobSpec.create(
            argv,
            env={GROUP_ENV: group_id, SECRET_ENV: secret},
            outputs=group.job.outputs,
            limits=Limits(
                cpus=member.ranks * req.cpus_per_rank,
                memory=member.ranks * req.memory_per_rank,
                wall_seconds=req.wall_seconds,
                pids=PIDS_PER_RANK * (member.ranks + 1),
                network=Network.GROUP,
                output_bytes=OUTPUT_BYTES,
            ),
        )
        group.jobs[host] = ""  # (taken: a second launch for it is refused, even meanwhile)
        index = group.plan.members.index(member)
        job = await self.requester.submit_to(
            spec,
            member.peer_id,
            group.job.inputs,
            job_id=f"{group.job_id}_{index}",
            name=group.job.name,
        )
        group.jobs[host] = job.job_id
        return job

    def _new_job_id(self) -> str:
        """An id no job of ours has, nor starts with (an array's tasks are ID_N)."""
        while True:
            job_id = secrets.token_hex(8)
            if not any(j.startswith(job_id) for j in self.requester.jobs):
                return job_id

    def _member_state(self, job: JobRecord) -> None:
        """A member's job says it is suspended (its owner is back), held, or running again,
        or it ended: the others are held while any member is suspended, and let go when none
        is (node.jobs.core.holds) or when one has ended."""
        group = next((g for g in self.groups.values() if g.job_id == job.array_id), None)
        if group is None:
            return
        jobs = [j for j in (self.requester.jobs.get(j) for j in group.jobs.values() if j) if j]
        states = {j.job_id: _hold_state(j) for j in jobs}
        for job_id, hold in wanted_holds(states).items():
            member_job = self.requester.jobs[job_id]
            if hold != member_job.hold:
                log.info(
                    "group %s: %s member job %s",
                    group.group_id,
                    "holding" if hold else "letting go",
                    job_id,
                )
            member_job.want_hold(hold)

    async def end(self, group_id: str) -> dict[str, Any]:
        """The group's end: its members' jobs still running are cancelled, the reservations
        never launched released. What it was (for `rain mpi run --json`)."""
        group = self.groups.pop(group_id, None)
        if group is None:
            return {"group_id": group_id, "ended": False}
        for m in group.plan.members:
            job = self.requester.jobs.get(group.jobs.get(m.host) or "")
            if job is None:
                self.requester.nursery.start_soon(self._release, m.peer_id, group_id)
            elif not job.finished.is_set() and job.worker_state != MemberState.EXITED.value:
                job.cancel.set()  # (one that exited is being settled: let it be paid)
        return {**group.as_dict(), "ended": True}


def _hold_state(job: JobRecord) -> str:
    """A member job's state as node.jobs.core.holds reads it."""
    if job.finished.is_set():
        return MemberState.ENDED.value
    return job.worker_state or MemberState.RUNNING.value
