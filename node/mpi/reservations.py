"""A member's side of MPI groups, sans-io: the slots it holds for groups, and the group job.

`Reservations` keeps what requesters reserved here (node.mpi.assembly reserves every member of
a group at once), each until its lease runs out, bounded in number. A reservation's CPUs and
memory count as taken (the worker's capacity check adds `held()`), so that other jobs cannot
take them between the reservation and the launch.

`admit_group_job` decides whether a job offered with `limits.network = group` is the launch of
a reservation: from the requester that reserved, naming the group and carrying the secret whose
hash came with the reservation, within what was reserved, running hydra's proxy (mapped to our
own: every node has its MPICH). The reservation is taken by it, so one group job is admitted
(and paid) per member, with the network wall its ranks run behind (node.mpi.wall: the group's
addresses the member admitted at the reservation, and the launcher's port). Plain synchronous
code; node.mpi.member is its trio edge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from dataclasses import dataclass

from node.mpi.wall import GroupPeers, wall_for
from sandbox import JobSpec
from sandbox.hostfs import DEFAULT_PATH
from sandbox.netwall import Wall

MAX_RESERVATIONS = 64
PROXY = "hydra_pmi_proxy"
GROUP_ENV = "RAIN_MPI_GROUP"
SECRET_ENV = "RAIN_MPI_SECRET"


@dataclass(frozen=True)
class Reservation:
    requester: str
    group_id: str
    ranks: int
    cpus: float
    memory: int
    wall_seconds: float
    secret_sha256: bytes
    expires: float
    peers: GroupPeers  # where its ranks may connect (node.mpi.wall.admit)


class Reservations:
    def __init__(self, limit: int = MAX_RESERVATIONS) -> None:
        self._held: dict[tuple[str, str], Reservation] = {}
        self._limit = limit

    def expire(self, now: float) -> None:
        for key, r in list(self._held.items()):
            if r.expires <= now:
                del self._held[key]

    def held(self, now: float) -> list[Reservation]:
        self.expire(now)
        return list(self._held.values())

    def reserve(self, reservation: Reservation, now: float, room: str | None) -> str | None:
        """Hold `reservation`; None if held, else why not. `room` is the worker's answer to
        whether the reserved CPUs and memory fit beside what runs (and is held) here."""
        self.expire(now)
        key = (reservation.requester, reservation.group_id)
        if key in self._held:
            return f"group {reservation.group_id} is reserved here already"
        if len(self._held) >= self._limit:
            return f"{len(self._held)} groups hold reservations here already"
        if room is not None:
            return room
        self._held[key] = reservation
        return None

    def release(self, requester: str, group_id: str) -> None:
        self._held.pop((requester, group_id), None)

    def take(self, requester: str, group_id: str, secret: str, now: float) -> Reservation | str:
        """The reservation a group job launches (removed: it is taken once), or why not."""
        self.expire(now)
        held = self._held.get((requester, group_id))
        if held is None:
            return f"no reservation here for group {group_id[:32]!r} (expired, or never made)"
        digest = hashlib.sha256(secret.encode()).digest()
        if not hmac.compare_digest(digest, held.secret_sha256):
            return "the group's secret does not match its reservation"
        del self._held[(requester, group_id)]
        return held


@dataclass(frozen=True)
class Runtime:
    """Where this node's MPI is: its hydra proxy, and the directory of its Python (first on a
    rank's PATH, so `python3` finds mpi4py)."""

    proxy: str
    bin_dir: str

    @classmethod
    def beside(cls, executable: str) -> Runtime | None:
        """The MPI installed in the environment of `executable` (sys.executable), if any."""
        bin_dir = os.path.dirname(executable)
        proxy = os.path.join(bin_dir, PROXY)
        return cls(proxy, bin_dir) if os.access(proxy, os.X_OK) else None


@dataclass(frozen=True)
class Admitted:
    spec: JobSpec  # what to run: our proxy, our PATH, the secret dropped
    wall: Wall  # the network its ranks may reach


def is_group_job(spec: JobSpec) -> bool:
    return spec.limits.network.value == "group"


def admit_group_job(
    spec: JobSpec, requester: str, reservations: Reservations, runtime: Runtime, now: float
) -> Admitted | str:
    """What to run for a group job, behind which wall, or why not."""
    env = spec.env_dict
    group_id, secret = env.pop(GROUP_ENV, None), env.pop(SECRET_ENV, None)
    if group_id is None or secret is None:
        return f"an MPI rank job must name its group ({GROUP_ENV}) and secret ({SECRET_ENV})"
    if os.path.basename(spec.argv[0]) != PROXY or spec.image is not None:
        return f"an MPI group job runs {PROXY}, not {spec.argv[0][:64]!r}"
    taken = reservations.take(requester, group_id, secret, now)
    if isinstance(taken, str):
        return taken
    lim = spec.limits
    if lim.cpus > taken.cpus + 1e-9 or lim.memory > taken.memory:
        return (
            f"the group job asks for {lim.cpus:g} CPUs and {lim.memory >> 20} MiB; "
            f"{taken.cpus:g} CPUs and {taken.memory >> 20} MiB were reserved"
        )
    wall = wall_for(taken.peers, spec.argv)
    if isinstance(wall, str):
        return wall
    env[GROUP_ENV] = group_id
    env["PATH"] = f"{runtime.bin_dir}:{DEFAULT_PATH}"
    # The sandbox shows no /sys: hwloc (in hydra and MPICH) would say so on every start.
    env["HWLOC_HIDE_ERRORS"] = "2"
    run = dataclasses.replace(
        spec, argv=(runtime.proxy, *spec.argv[1:]), env=tuple(sorted(env.items()))
    )
    return Admitted(run, wall)
