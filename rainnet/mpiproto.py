"""The MPI group protocol (`/rain/mpi/1.0.0`): a requester reserves a member's slots for a group.

One stream per request, requester to member:

    requester                                   member
    Reserve(group, ranks, CPUs and memory, time, lease, sha256 of the group's secret,
            the members' addresses, the launcher's) ------------------------------------>
                                      <-------  Reserved(lease) | Refused(reason)
    Release(group) -------------------------->  (the reservation, or what is left of it, goes)

A reservation holds the member's slots for `lease` seconds. The group's ranks then come as an
ordinary job (rainnet.jobproto, one per member: hydra's proxy, limits.network "group") that
names the group and carries the secret, which the member checks against the hash it was given:
only the requester that reserved, and only once. The addresses named are where the member's
ranks may open connections (node.mpi.wall): the member admits only those of peers it knows.
Pure: message shapes and their caps.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from rainnet import wire

MPI = "/rain/mpi/1.0.0"
MPI_MAX_FRAME = 4096
MAX_REASON = 512
GROUP_ID_LEN = 32  # hex of 16 random bytes
MAX_RANKS = 1024
MAX_ADDRESSES = 64  # the IP literals of a group's members (every direct one of each)
MAX_IP = 45  # the longest IPv6 literal


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
    # Where the ranks may connect: the members' hosts and the launcher (mpiexec), IP literals.
    # (Empty from a requester older than the network wall: members refuse its groups.)
    members: tuple[str, ...] = field(default=(), metadata=wire.limit(MAX_ADDRESSES))
    launcher: str = field(default="", metadata=wire.limit(MAX_IP))

    def __post_init__(self) -> None:
        if not 1 <= self.ranks <= MAX_RANKS:
            raise ValueError(f"ranks {self.ranks} outside 1..{MAX_RANKS}")
        if not (0 < self.cpus <= 4096 and self.memory > 0 and self.wall_seconds > 0):
            raise ValueError("cpus, memory and wall_seconds must be positive")
        if not 0 < self.lease_seconds <= 600:
            raise ValueError("lease_seconds outside (0, 600]")
        if len(self.secret_sha256) != 32:
            raise ValueError("secret_sha256 is 32 bytes")
        for ip in (*self.members, *([self.launcher] if self.launcher else [])):
            # In its one canonical form (no zone, no leading zeros): it ends up in firewall rules.
            if len(ip) > MAX_IP or "%" in ip or str(ipaddress.ip_address(ip)) != ip:
                raise ValueError(f"address {ip[:64]!r} is not a canonical IP literal")


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
