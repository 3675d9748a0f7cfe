"""A finished job's result, and the verdict computed from what was observed of it.

Pure data and pure functions. Credit is paid from these numbers, so the verdict is computed from
counters that survive the job's death (cgroup CPU time, OOM kill counts, who killed it and why)
rather than from exit codes alone: under bwrap and `docker --init`, a job killed by signal N and a
job that exited with 128+N look the same from outside.
"""

from __future__ import annotations

import enum
import signal as signal_module
from dataclasses import dataclass
from typing import Any


class Reason(enum.StrEnum):
    """Why a job ended."""

    OK = "ok"
    NONZERO_EXIT = "nonzero_exit"
    OUT_OF_MEMORY = "out_of_memory"
    WALL_TIME = "wall_time"
    CPU_LIMIT = "cpu_limit"
    DISK_LIMIT = "disk_limit"  # it went past its bytes or files in /job and /tmp (or RLIMIT_FSIZE)
    KILLED = "killed"  # by a signal the sandbox did not send (the job itself, the admin)
    CANCELLED = "cancelled"


class KillCause(enum.StrEnum):
    """Why the sandbox itself killed a job, if it did."""

    WALL_TIME = "wall_time"
    CPU_LIMIT = "cpu_limit"
    DISK_LIMIT = "disk_limit"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Observation:
    """What was seen of a job after it ended: the inputs of `verdict()`."""

    exit_code: int | None  # None if the sandbox process itself died of a signal
    signal: int | None  # the signal that ended it, if known (see `split_status`)
    kill_cause: KillCause | None  # set if the sandbox killed it
    cpu_seconds: float
    cpu_limit: float | None
    oom_kills: int
    disk_over: bool = False  # its files went past the disk limits (a write was refused for it)


def split_status(returncode: int) -> tuple[int | None, int | None]:
    """(exit_code, signal) from a subprocess-style return code or a 128+N container exit code.

    Negative return codes are signals delivered to the process we waited on. Codes 129..192 follow
    the shell convention bwrap and Docker's init use for a child killed by a signal; a job that
    *exits* with such a code is indistinguishable and is reported the same way.
    """
    if returncode < 0:
        return None, -returncode
    if 128 < returncode <= 128 + 64:
        return returncode, returncode - 128
    return returncode, None


def verdict(obs: Observation) -> Reason:
    """The reason a job ended, from what was observed. The first matching rule wins."""
    if obs.kill_cause is KillCause.CANCELLED:
        return Reason.CANCELLED
    if obs.kill_cause is KillCause.WALL_TIME:
        return Reason.WALL_TIME
    if obs.kill_cause is KillCause.CPU_LIMIT:
        return Reason.CPU_LIMIT
    if obs.kill_cause is KillCause.DISK_LIMIT or obs.disk_over:
        # Whatever its exit status: a write of it was refused, so its files are not what it
        # meant them to be. (Seen by the watcher, the job is killed for it; seen only at its end,
        # after it exited of itself, the verdict is the same.)
        return Reason.DISK_LIMIT
    if obs.signal == signal_module.SIGXFSZ:
        # One file past RLIMIT_FSIZE (the disk limit, per file): the same wall, met one way.
        return Reason.DISK_LIMIT
    succeeded = obs.exit_code == 0 and obs.signal is None
    if obs.signal == signal_module.SIGXCPU:
        # The RLIMIT_CPU backstop fired before the cgroup watcher (it fires early on some VMs).
        return Reason.CPU_LIMIT
    if obs.cpu_limit is not None and obs.cpu_seconds >= obs.cpu_limit and not succeeded:
        return Reason.CPU_LIMIT
    if obs.oom_kills > 0 and not succeeded:
        # A job whose child was OOM-killed but which still exited 0 handled it: that is success.
        return Reason.OUT_OF_MEMORY
    if obs.signal is not None:
        return Reason.KILLED
    if obs.exit_code != 0:
        return Reason.NONZERO_EXIT
    return Reason.OK


@dataclass(frozen=True)
class OutputFile:
    """A regular file the job left at one of its output paths."""

    path: str  # relative to the job directory
    size: int
    sha256: str  # hex


@dataclass(frozen=True)
class JobResult:
    """Everything a finished job produced and used. `cpu_seconds` is what credit is paid by."""

    job_id: str
    backend: str
    reason: Reason
    exit_code: int | None
    signal: int | None
    cpu_seconds: float  # from the job's cgroup, all its processes, exact to the nanosecond counter
    peak_memory: int  # bytes, high-water mark of the job's cgroup: memory, page cache, its files
    wall_seconds: float  # start to exit, including time suspended
    suspended_seconds: float
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    outputs: tuple[OutputFile, ...]
    missing_outputs: tuple[str, ...]  # requested output paths the job did not leave
    oom_kills: int
    pids_limit_hit: bool  # a fork was refused because the job was at its process limit

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-ready dict (bytes stay bytes)."""
        return {
            "job_id": self.job_id,
            "backend": self.backend,
            "reason": self.reason.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "cpu_seconds": self.cpu_seconds,
            "peak_memory": self.peak_memory,
            "wall_seconds": self.wall_seconds,
            "suspended_seconds": self.suspended_seconds,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "outputs": [{"path": o.path, "size": o.size, "sha256": o.sha256} for o in self.outputs],
            "missing_outputs": list(self.missing_outputs),
            "oom_kills": self.oom_kills,
            "pids_limit_hit": self.pids_limit_hit,
        }

    def to_json(self) -> dict[str, Any]:
        """Like `to_wire()` with stdout/stderr decoded as UTF-8 (invalid bytes replaced)."""
        data = self.to_wire()
        data["stdout"] = self.stdout.decode("utf-8", "replace")
        data["stderr"] = self.stderr.decode("utf-8", "replace")
        return data
