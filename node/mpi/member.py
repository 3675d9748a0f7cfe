"""A member's trio edge of MPI groups: the `/rain/mpi` handler, and the worker's hook for the
group's job.

A requester reserves our slots for a group (rainnet.mpiproto): the reservation is held by the
sans-io `Reservations` (node.mpi.reservations) for its lease, its CPUs and memory counted as
taken. The group's ranks then arrive as an ordinary job of the job protocol (hydra's proxy,
`limits.network = group`): the worker asks `admit` whether it is the launch of a reservation,
and runs the spec it returns (our own proxy, our Python first on PATH) in the sandbox with
the host's network narrowed by the group's wall (node.mpi.wall; handed to the native backend
through its `walls`) and the node's environment read-only. The worker ends such a job when its
requester's stream breaks or the requester leaves our view: ranks whose launcher is gone would
otherwise wait on it forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from node.jobs.core import scheduler
from node.mpi import wall
from node.mpi.reservations import (
    Admitted,
    Reservation,
    Reservations,
    Runtime,
    admit_group_job,
)
from rainnet import mpiproto, wire
from rainnet.records import NodeRecord
from rainnet.streams import FramedStream
from sandbox import JobSpec
from sandbox.netwall import Walls

log = logging.getLogger("rainnet.mpi")

REQUEST_TIMEOUT = 10.0


class GroupMember:
    """What this node does as a member of MPI groups (None of it where MPI is not installed)."""

    def __init__(
        self,
        runtime: Runtime,
        room: Callable[[scheduler.Needs], str | None],
        may_start: Callable[[], str | None],
        walls: Walls,
        records: Callable[[], list[NodeRecord]],
        our_ips: Callable[[], list[str]],
    ) -> None:
        self.runtime = runtime
        self.reservations = Reservations()
        self._room = room  # the worker's capacity check (reservations included)
        self._may_start = may_start
        self._walls = walls  # the native backend's: it installs each job's wall at its start
        self._records = records  # the signed records of the peers in our view
        self._our_ips = our_ips

    def held(self) -> list[scheduler.Running]:
        """The reserved slots, for the worker's capacity check."""
        return [scheduler.Running(r.cpus, r.memory) for r in self.reservations.held(_now())]

    def admit(self, requester: str, spec: JobSpec) -> JobSpec | str:
        admitted = admit_group_job(spec, requester, self.reservations, self.runtime, _now())
        if not isinstance(admitted, Admitted):
            return admitted
        self._walls.expect(admitted.spec, admitted.wall)
        return admitted.spec

    async def handle(self, raw: Any) -> None:
        stream = FramedStream(raw, mpiproto.TO_MEMBER, mpiproto.MPI_MAX_FRAME)
        requester = stream.remote_peer
        msg = await stream.receive(REQUEST_TIMEOUT)
        if isinstance(msg, mpiproto.Release):
            self.reservations.release(requester, msg.group_id)
            log.info("group %s of %s released", msg.group_id, requester)
            return
        assert isinstance(msg, mpiproto.Reserve)  # (the decoder lets nothing else through)
        why = self._reserve(requester, msg)
        if why is None:
            log.info("reserved %d ranks for group %s of %s", msg.ranks, msg.group_id, requester)
            await stream.send(mpiproto.Reserved(lease_seconds=msg.lease_seconds))
        else:
            log.info("refused group %s of %s: %s", msg.group_id, requester, why)
            await stream.send(mpiproto.Refused(reason=why[: mpiproto.MAX_REASON]))

    def _reserve(self, requester: str, msg: mpiproto.Reserve) -> str | None:
        if len(msg.group_id) != mpiproto.GROUP_ID_LEN or not _is_hex(msg.group_id):
            raise wire.RemoteProtocolError("a group id is 32 hex digits")
        why = self._may_start()
        if why is not None:
            return why
        peers = wall.admit(msg.members, msg.launcher, requester, self._records(), self._our_ips())
        if isinstance(peers, str):
            return peers
        now = _now()
        room = self._room(scheduler.Needs(cpus=msg.cpus, memory=msg.memory))
        if room is not None:
            room = f"{room} (for {msg.ranks} ranks)"
        reservation = Reservation(
            requester=requester,
            group_id=msg.group_id,
            ranks=msg.ranks,
            cpus=msg.cpus,
            memory=msg.memory,
            wall_seconds=msg.wall_seconds,
            secret_sha256=msg.secret_sha256,
            expires=now + msg.lease_seconds,
            peers=peers,
        )
        return self.reservations.reserve(reservation, now, room)


def _now() -> float:
    return time.monotonic()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
