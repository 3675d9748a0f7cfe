"""A job as its requester keeps it: what was asked, where it stands, how it ended, its output.

One `JobRecord` per job we submitted, in memory for as long as we keep it (node.jobs.requester
.store writes it to disk on the way); its trio events are what the job's driver, the control API
and `rain submit --wait` wait on.
"""

from __future__ import annotations

import enum
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.jobs.core import pending, terms
from rainnet import jobproto
from sandbox import JobSpec, Network

QUEUE_LIMIT = 86400.0  # how long a job waits for a worker by default (`--queue-limit`)
MAX_QUEUE_LIMIT = 30 * 86400.0
MAX_KEPT_OUTPUT = 1 << 20  # bytes of each of stdout and stderr kept in memory


class JobState(enum.StrEnum):
    """Where a job stands (the strings are what the store and `rain jobs` show)."""

    QUEUED = "queued"  # waiting for a worker
    OFFERING = "offering"  # offered to a worker (or handed to a task session), no answer yet
    RUNNING = "running"
    SETTLING = "settling"  # its result is being paid for and received
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


@dataclass
class JobRecord:
    job_id: str
    spec: JobSpec
    # Files sent to the worker before the job starts: announced entries and local sources.
    inputs: tuple[jobproto.FileEntry, ...] = ()
    input_sources: tuple[Path, ...] = ()
    replicas: int = 1  # run on this many distinct workers and compare results
    # Workers that accepted an attempt: only they may offer a held result for this job.
    accepted_by: set[str] = field(default_factory=set)
    settling: bool = False  # a result is being settled or received: no second one at once
    submitted: float = field(default_factory=time.time)
    state: JobState = JobState.QUEUED
    worker: str | None = None
    attempts: int = 0
    started: float | None = None
    # When (trio time) a worker first accepted it in this process: how long it may have run,
    # for checking a claim (wall time since `started` after a restart).
    accepted_at: float | None = None
    ended: float | None = None
    cpu_seconds: float = 0.0
    credit: float = 0.0
    exit_code: int | None = None
    reason: str | None = None
    error: str | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    outputs: list[str] = field(default_factory=list)
    # The ledger exchange that paid for it: its own id, or a task session's group claim.
    claim: str | None = None
    name: str | None = None  # the owner's name for it (`--name`)
    queue_limit: float = QUEUE_LIMIT  # seconds it may wait for a worker before it fails
    peak_memory: int | None = None  # bytes, as its worker measured them
    pending: str | None = None  # why it is not running now (node.jobs.core.pending)
    # What its worker last said of it while it runs: running, suspended (by the worker's
    # owner), held (an MPI group's job, frozen with its group: node.jobs.core.holds).
    worker_state: str | None = None
    hold: bool = False  # a group job: whether we want it held (sent to its worker)
    cancel: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    # Set (and replaced) whenever output arrives or the job ends: what `rain submit --wait`
    # long-polls on, instead of polling on a timer.
    changed: trio.Event = field(default_factory=trio.Event)
    # After a restart, a done job's output is read back from its folder when first asked for.
    output_loaded: bool = True

    @functools.cached_property
    def spec_bytes(self) -> bytes:
        """The spec as offers and tasks carry it (msgpack), packed once."""
        return terms.pack_spec(self.spec)

    @property
    def rideable(self) -> bool:
        """Whether a task session can carry the job: one copy, no files in or out."""
        if self.group_job:  # (its worker is chosen, and its stream is its member's lease)
            return False
        return self.replicas == 1 and not (self.inputs or terms.has_files(self.spec))

    @property
    def array_id(self) -> str | None:
        """The array it is a task of (its id is ARRAY_INDEX), or None."""
        base, sep, _ = self.job_id.partition("_")
        return base if sep else None

    @property
    def array_task(self) -> int | None:
        _, sep, index = self.job_id.partition("_")
        return int(index) if sep and index.isdigit() else None

    @property
    def group_job(self) -> bool:
        """Whether it is one member's part of an MPI group (node.mpi): run where it was sent,
        once; it cannot move to another worker."""
        return self.spec.limits.network is Network.GROUP

    def seen_running(self) -> float:
        """The longest it may have been running: since a worker first accepted it."""
        if self.accepted_at is not None:
            return trio.current_time() - self.accepted_at
        return max(0.0, time.time() - (self.started or self.submitted))

    def touch(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def wait_for(self, why: str) -> None:
        """Say why it waits (its followers are told when that changes)."""
        if why != self.pending:
            self.pending = why
            self.touch()

    def reported(self, state: str) -> bool:
        """Its worker's report of its state; whether that changed."""
        if state == self.worker_state:
            return False
        self.worker_state = state
        self.touch()
        return True

    def want_hold(self, on: bool) -> None:
        if on != self.hold:
            self.hold = on
            self.touch()

    def requeue(self) -> None:
        """The attempt ended without a result: back to waiting for a worker."""
        self.state, self.worker = JobState.QUEUED, None

    def keep_output(self, msg: jobproto.Output) -> None:
        """Live output of the running job, kept up to MAX_KEPT_OUTPUT per stream."""
        buf = self.stdout if msg.stream == "stdout" else self.stderr
        if len(buf) < MAX_KEPT_OUTPUT:
            buf += msg.data[: MAX_KEPT_OUTPUT - len(buf)]
            self.touch()

    def as_dict(self) -> dict[str, Any]:
        now = self.ended or time.time()
        return {
            "job_id": self.job_id,
            "state": self.state.value,
            "worker": self.worker,
            "attempts": self.attempts,
            "replicas": self.replicas,
            "submitted": self.submitted,
            "elapsed": now - (self.started or self.submitted),
            "cpu_seconds": self.cpu_seconds,
            "credit": self.credit,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "error": self.error,
            "argv": list(self.spec.argv),
            "outputs": self.outputs,
            "claim": self.claim,
            "name": self.name,
            "array_id": self.array_id,
            "array_task": self.array_task,
            "peak_memory": self.peak_memory,
            "pending_reason": self.pending if not self.finished.is_set() else None,
            "worker_state": self.worker_state if self.state is JobState.RUNNING else None,
            "how": pending.ending(
                self.state.value,
                self.exit_code,
                self.reason,
                self.error,
                self.spec.limits,
                self.peak_memory,
            )
            if self.finished.is_set()
            else None,
        }
