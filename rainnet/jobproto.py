"""The job protocol (`/rain/job/1.1.0`): one stream per job attempt, requester to worker.

Conversation (each arrow one framed message; the stream itself is the lease: if it breaks, the
attempt is over for the requester, who may run the job elsewhere):

    requester                                   worker
    Offer(job, spec, inputs manifest, recent blocks of its chain) ------->
                                      <-------  LedgerFrame(ChainRequest)   (only if the blocks
    LedgerFrame(ChainPage) ------------------>   offered do not bring its copy up to date;
                                                 again while pages remain)
                                      <-------  Accept(lease)  |  Decline(reason, retry_after)
    InputChunk ... InputDone ---------------->  (hash-checked against the manifest; none at
                                                 all for a job without inputs)
                                      <-------  Progress(cpu, state) / Output(stdout|stderr) ...
                                      <-------  Finished(verdict, cpu, result hash, Propose)
    Agree | Refuse -------------------------->  (ledger: the requester countersigns the result)
                                      <-------  OutputChunk ... OutputDone (released only now)
    Cancel (any time) ----------------------->
    Hold(on | off) -------------------------->  (an MPI group's job only, while it runs: frozen
                                                 or thawed with the rest of its group)

A task session (`/rain/tasks/1.0.0`) carries many small jobs of one shape (the same CPUs, memory,
GPUs and image; one run each, no input or output files) to one worker, one after another in one
of its slots, and settles them in groups: quick jobs go several to a message, so a job costs
less than one message each way instead of a stream, an offer, a claim and an agreement.

    requester                                   worker
    Offer(a fresh session id, the jobs' shape as a spec, chain) -> chain pages, Accept | Decline
    Tasks(job, spec ...) -------------------->  (runs them in turn: Progress, and for a lone
                                                 task Output, as above; Cancel(job))
                                      <-------  TasksDone(per task: claimed, or not: cancelled,
                                                 or declined: no more tasks in this session)
    ... at most MAX_GROUP claimed tasks, then (or when no job waits):
    Collect --------------------------------->
                                      <-------  Finished(tasks=..., one Propose for their sum)
    Settle(Agree | Refuse) ------------------>
                                      <-------  OutputChunk ... OutputDone (every task's files)
    ... until the requester closes the stream.
A group's Finished lists each task's result; its outputs are the tasks' files in order, and the
hash it signs is the group's (node.jobs.core.results.group_hash). Held and delivered like any
Finished.

Ledger messages travel as their own msgpack bytes (`ledger.messages`), validated by the ledger.
This module is pure: message shapes and their size caps. The decisions (whether to accept, whom
to offer to) live in node.jobs.core.scheduler; the worker's and requester's edges in node.jobs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from rainnet import wire
from rainnet.ledgerproto import LedgerFrame

JOB = "/rain/job/1.1.0"  # 1.1: offers carry chain blocks; no InputDone without inputs
# A worker holding a result for a requester that went away offers it here when the requester is
# back: Finished -> Settle -> OutputChunk... OutputDone, as at the end of a job stream.
RESULT = "/rain/result/1.0.0"
TASKS = "/rain/tasks/1.0.0"
MAX_GROUP = 16  # claimed tasks of a session settled together, at most
MAX_BATCH = 8  # tasks handed over in one message, at most
CHUNK = 256 * 1024
MAX_SPEC_BYTES = CHUNK
MAX_CHAIN_SEQUENCE = 1 << 48  # as ledger.block.MAX_SEQUENCE
MAX_OFFERED_CHAIN = 64 * 1024  # recent blocks of the requester's chain sent with an offer
JOB_MAX_FRAME = MAX_SPEC_BYTES + MAX_OFFERED_CHAIN + 4096  # an Offer must fit one frame
# A ChainPage asked for on a job stream holds at most this many blocks (and their counterparty
# halves, ~360 bytes each), so it fits one frame.
JOB_PAGE_BLOCKS = 128
MAX_FILES = 256
MAX_REASON = 1024


@wire.message("file-entry")
@dataclass(frozen=True)
class FileEntry(wire.Message):
    """One file of a job's inputs or outputs: where it goes, how big, its sha256."""

    path: str = field(metadata=wire.limit(1024))
    size: int
    sha256: bytes = field(metadata=wire.limit(32))
    executable: bool = False

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.sha256) != 32:
            raise ValueError("a file entry has a size >= 0 and a 32-byte sha256")


@wire.message("job-offer")
@dataclass(frozen=True)
class Offer(wire.Message):
    job_id: str = field(metadata=wire.limit(64))
    attempt: int
    spec: bytes = field(metadata=wire.limit(MAX_SPEC_BYTES))  # msgpack of JobSpec.to_wire()
    inputs: tuple[FileEntry, ...] = field(metadata=wire.limit(MAX_FILES))
    lease_seconds: float
    # A ledger ChainPage (ledger.messages bytes) of the requester's own chain since what it
    # believes this worker verified last, so the worker rarely has to ask; or empty.
    chain: bytes = field(metadata=wire.limit(MAX_OFFERED_CHAIN))


@wire.message("job-accept")
@dataclass(frozen=True)
class Accept(wire.Message):
    lease_seconds: float
    backend: str = field(metadata=wire.limit(32))
    chain_verified: int  # how far the worker now holds the requester's chain verified

    def __post_init__(self) -> None:
        if not 0 <= self.chain_verified <= MAX_CHAIN_SEQUENCE:
            raise ValueError(f"chain_verified {self.chain_verified} is not a chain position")


class DeclineKind(enum.StrEnum):
    """What a worker's decline is about, so the requester can say why a job waits."""

    OWNER = "owner"  # the owner is using the machine (or the node is starting)
    CAPACITY = "capacity"  # not enough free CPUs or memory now
    CREDIT = "credit"  # the requester's balance or standing here does not allow it
    UNSETTLED = "unsettled"  # the requester has results here to settle first
    BUSY = "busy"  # offers being checked, or jobs waiting, up to the worker's bounds
    SANDBOX = "sandbox"  # this worker's sandbox cannot run the job as asked
    INVALID = "invalid"  # the offer itself is wrong
    OTHER = "other"


@wire.message("job-decline")
@dataclass(frozen=True)
class Decline(wire.Message):
    reason: str = field(metadata=wire.limit(MAX_REASON))
    retry_after: float
    kind: DeclineKind = DeclineKind.OTHER  # (absent from older workers)


@wire.message("input-chunk")
@dataclass(frozen=True)
class InputChunk(wire.Message):
    index: int
    offset: int
    data: bytes = field(metadata=wire.limit(CHUNK))


@wire.message("input-done")
@dataclass(frozen=True)
class InputDone(wire.Message):
    pass


@wire.message("job-progress")
@dataclass(frozen=True)
class Progress(wire.Message):
    state: str = field(metadata=wire.limit(16))
    cpu_seconds: float
    wall_seconds: float


@wire.message("job-output")
@dataclass(frozen=True)
class Output(wire.Message):
    """Live stdout or stderr of the job (the capped copy; the result keeps it too)."""

    stream: str = field(metadata=wire.limit(8))
    data: bytes = field(metadata=wire.limit(CHUNK))


@wire.message("task-result")
@dataclass(frozen=True)
class TaskResult(wire.Message):
    """One task of a group's Finished: its verdict and measures, and the hash of its own result
    manifest over its `files` entries (the next ones of the Finished's outputs)."""

    job_id: str = field(metadata=wire.limit(64))
    exit_code: int | None
    reason: str = field(metadata=wire.limit(32))
    cpu_ms: int  # what is claimed for it; the group's proposal claims their sum
    wall_seconds: float
    peak_memory: int
    result_hash: bytes = field(metadata=wire.limit(32))
    files: int

    def __post_init__(self) -> None:
        if self.cpu_ms < 0 or not 0 <= self.files <= MAX_FILES:
            raise ValueError("a task result claims cpu_ms >= 0 over 0..MAX_FILES files")


@wire.message("job-finished")
@dataclass(frozen=True)
class Finished(wire.Message):
    exit_code: int | None
    reason: str = field(metadata=wire.limit(32))
    cpu_seconds: float
    wall_seconds: float
    peak_memory: int
    result_hash: bytes = field(metadata=wire.limit(32))
    outputs: tuple[FileEntry, ...] = field(metadata=wire.limit(MAX_FILES))
    proposal: bytes = field(metadata=wire.limit(16 * 1024))  # ledger Propose, msgpack
    # Set for a group of a task session: its tasks, in the order of their files in `outputs`.
    tasks: tuple[TaskResult, ...] = field(default=(), metadata=wire.limit(MAX_GROUP))


@wire.message("task")
@dataclass(frozen=True)
class Task(wire.Message):
    """One job to run in the session (of the session's shape)."""

    job_id: str = field(metadata=wire.limit(64))
    spec: bytes = field(metadata=wire.limit(MAX_SPEC_BYTES))  # msgpack of JobSpec.to_wire()


@wire.message("tasks")
@dataclass(frozen=True)
class Tasks(wire.Message):
    """Run these next, in order (their specs together within MAX_SPEC_BYTES). The output of a
    lone task streams live; that of several comes with their results only."""

    tasks: tuple[Task, ...] = field(metadata=wire.limit(MAX_BATCH))


@wire.message("task-done")
@dataclass(frozen=True)
class TaskDone(wire.Message):
    """A task ended: claimed (its result waits for Collect), or not: cancelled, or `declined`
    (not run, and this session takes no more tasks: the reason)."""

    job_id: str = field(metadata=wire.limit(64))
    claimed: bool
    declined: str = field(default="", metadata=wire.limit(MAX_REASON))


@wire.message("tasks-done")
@dataclass(frozen=True)
class TasksDone(wire.Message):
    """The answer to Tasks: one TaskDone per task, in order."""

    done: tuple[TaskDone, ...] = field(metadata=wire.limit(MAX_BATCH))


@wire.message("task-collect")
@dataclass(frozen=True)
class Collect(wire.Message):
    """Propose for the claimed tasks not settled yet."""


@wire.message("job-settle")
@dataclass(frozen=True)
class Settle(wire.Message):
    """The requester's answer to the proposal: a ledger Agree or Refuse, msgpack."""

    answer: bytes = field(metadata=wire.limit(16 * 1024))


@wire.message("output-chunk")
@dataclass(frozen=True)
class OutputChunk(wire.Message):
    index: int
    offset: int
    data: bytes = field(metadata=wire.limit(CHUNK))


@wire.message("output-done")
@dataclass(frozen=True)
class OutputDone(wire.Message):
    pass


@wire.message("job-cancel")
@dataclass(frozen=True)
class Cancel(wire.Message):
    reason: str = field(metadata=wire.limit(MAX_REASON))
    job_id: str = field(default="", metadata=wire.limit(64))  # in a task session: which task


@wire.message("job-hold")
@dataclass(frozen=True)
class Hold(wire.Message):
    """Freeze (`on`) or thaw an MPI group's job: another member of its group was suspended by
    its owner, and ranks that run on would spin in their next collective, burning what the
    requester pays for. The worker bounds how long a job may be held (node.jobs.worker)."""

    on: bool
    reason: str = field(default="", metadata=wire.limit(MAX_REASON))


TO_WORKER: tuple[type[wire.Message], ...] = (
    Offer,
    LedgerFrame,
    InputChunk,
    InputDone,
    Settle,
    Cancel,
    Tasks,
    Collect,
    Hold,
)
TO_REQUESTER: tuple[type[wire.Message], ...] = (
    LedgerFrame,
    Accept,
    Decline,
    Progress,
    Output,
    Finished,
    OutputChunk,
    OutputDone,
    TasksDone,
)
