"""The worker-side settings of the sandbox machinery: where job directories and cgroups go, which
uids jobs run as, how to reach a Docker engine, and the owner's policy.

Pure data. `SandboxConfig.for_home()` gives the defaults for a node's home directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sandbox.policy import WorkerPolicy

# Job uids: one per concurrent job, so jobs cannot signal, trace or read each other's files, and
# RLIMIT_NPROC (counted per uid) is per job. The range sits above systemd's container ranges
# (which end at 1879048191) and below 2^31, where some tools start misreading uids as negative.
DEFAULT_UID_BASE = 1_950_000_000
DEFAULT_UID_COUNT = 4096
# Ranges of DEFAULT_UID_COUNT uids above the base, one per home; all stay below 2**31, which
# bubblewrap (and other tools parsing uids as signed ints) refuse beyond.
UID_SLOTS = 40_000


def uid_base_for(place: Path) -> int:
    """The first uid of the range that belongs to `place` (a node's home, a test's root)."""
    digest = hashlib.sha256(str(place).encode()).digest()
    return DEFAULT_UID_BASE + int.from_bytes(digest[:4], "big") % UID_SLOTS * DEFAULT_UID_COUNT


@dataclass(frozen=True)
class SandboxConfig:
    workdir: Path  # job directories live here while their jobs run
    policy: WorkerPolicy = field(default_factory=WorkerPolicy)
    cgroup_name: str = "rainnet"  # job cgroups go under this, in each cgroup hierarchy
    uid_base: int = DEFAULT_UID_BASE
    uid_count: int = DEFAULT_UID_COUNT
    docker_url: str | None = None  # None: $DOCKER_HOST, else the engine's default socket
    docker_timeout: float = 60.0  # bound on any one Docker API call
    cleanup_timeout: float = 15.0  # bound on tearing one job down
    # Host directories an MPI rank (Network.GROUP) sees read-only at their own paths: the
    # node's Python environment with mpi4py and MPICH, so every member runs the same MPI.
    group_runtime: tuple[str, ...] = ()

    @classmethod
    def for_home(
        cls, home: Path, *, policy: WorkerPolicy | None = None, docker_url: str | None = None
    ) -> SandboxConfig:
        """Defaults for a node whose home is `home`.

        Job directories go in the home unless a job's uid could not walk there: bubblewrap opens
        the directory as the job's uid, and a root node's home is usually under /root (0700).
        Such nodes get a directory of their own under /var/lib/rainnet instead.

        Each home also gets a cgroup subtree and a uid range of its own, so several nodes on one
        machine (test clusters, a multi-user host) never sweep, count or share each other's jobs.
        """
        tag = hashlib.sha256(str(home).encode()).hexdigest()[:12]
        workdir = home / "sandbox" / "jobs"
        if os.geteuid() == 0 and untraversable(workdir) is not None:
            workdir = Path("/var/lib/rainnet/sandbox") / tag
        return cls(
            workdir=workdir,
            policy=policy or WorkerPolicy(),
            docker_url=docker_url,
            cgroup_name=f"rainnet-{tag}",
            uid_base=uid_base_for(home),
        )

    @property
    def cgroup_base(self) -> PurePosixPath:
        return PurePosixPath(self.cgroup_name)

    def resolved_docker_url(self) -> str:
        return self.docker_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def untraversable(path: Path) -> Path | None:
    """The first existing ancestor of `path` that other users cannot enter, if any."""
    for parent in reversed(path.absolute().parents):
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            return None  # created later, by the sandbox, traversable
        if not mode & stat.S_IXOTH:
            return parent
    return None
