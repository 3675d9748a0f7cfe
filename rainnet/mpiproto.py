"""The MPI group protocol (`/rain/mpi/1.0.0`): a requester reserves a member's slots for a group.

One stream per request, requester to member:

    requester                                   member
    Reserve(group, ranks, CPUs and memory, time, lease, sha256 of the group's secret) ->
                                      <-------  Reserved(lease) | Refused(reason)
    Release(group) -------------------------->  (the reservation, or what is left of it, goes)

A reservation holds the member's slots for `lease` seconds. The group's ranks then come as an
ordinary job (rainnet.jobproto, one per member: hydra's proxy, limits.network "group") that
names the group and carries the secret, which the member checks against the hash it was given:
only the requester that reserved, and only once. Pure: message shapes and their caps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rainnet import wire

MPI = "/rain/mpi/1.0.0"
MPI_MAX_FRAME = 4096
MAX_REASON = 512
GROUP_ID_LEN = 32  # hex of 16 random bytes
MAX_RANKS = 1024


@wire.message("mpi-reserve")
@dataclass(frozen=True)
class Reserve(wire.Message):
    group_id: str = field(metadata=wire.limit(GROUP_ID_LEN))
    ranks: int
    cpus: float  # for all its ranks together
    memory: int  # bytes, for all its ranks together
    wall_seconds: float
    lease_seconds: float
    secret_sha256: bytes = field(metadata=wire.limit(32))

    def __post_init__(self) -> None:
        if not 1 <= self.ranks <= MAX_RANKS:
            raise ValueError(f"ranks {self.ranks} outside 1..{MAX_RANKS}")
        if not (0 < self.cpus <= 4096 and self.memory > 0 and self.wall_seconds > 0):
            raise ValueError("cpus, memory and wall_seconds must be positive")
        if not 0 < self.lease_seconds <= 600:
            raise ValueError("lease_seconds outside (0, 600]")
        if len(self.secret_sha256) != 32:
            raise ValueError("secret_sha256 is 32 bytes")


@wire.message("mpi-reserved")
@dataclass(frozen=True)
class Reserved(wire.Message):
    lease_seconds: float


@wire.message("mpi-refused")
@dataclass(frozen=True)
class Refused(wire.Message):
    reason: str = field(metadata=wire.limit(MAX_REASON))


@wire.message("mpi-release")
@dataclass(frozen=True)
class Release(wire.Message):
    group_id: str = field(metadata=wire.limit(GROUP_ID_LEN))


TO_MEMBER = (Reserve, Release)
TO_REQUESTER = (Reserved, Refused)
