"""The worker's end of a task session (rainnet.jobproto.TASKS): many small jobs of one requester
and one shape, run one after another in the slot the session was admitted to, paid in groups.

The session is admitted like one job of its shape (Worker.take_offer: the idle policy, the
sandbox, the requester's verified credit, then capacity in the priority queue). Each Task must
then be of the session's shape and without files (the job conversation checks), the owner must
not be back, and the requester's verified balance at admission, less what this session's earlier
tasks cost, must stay above the credit floor with this task counted at its limits (as for jobs
offered one by one). A Collect signs one claim for the claimed tasks (their CPU-seconds summed,
their results hashed together: node.jobs.core.results.group_hash) and goes on as the end of a
job stream does (node.jobs.worker.claims: held, offered, released once paid).

A session ends when the requester closes it or stays silent for SESSION_IDLE; after
SESSION_SECONDS its next task is declined, so that the requester queues again behind requesters
with more credit. Tasks claimed and not settled when it ends are held for the requester like any
result, and offered when it is back.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ledger.admission import floor_problem
from ledger.block import JobLimits
from ledger.units import amount_milli
from node.jobs import blocking
from node.jobs.core import results, terms
from node.jobs.core.conversation import Kind, TasksReceived
from node.jobs.stream import JobStream
from node.jobs.worker.worker import Worker, owed, result_files
from rainnet import jobproto, wire
from rainnet.streams import StreamGone
from sandbox import Backend, JobSpec

log = logging.getLogger("rainnet.worker")

SESSION_IDLE = 10.0  # the requester's next message, at most this long after the last
SESSION_SECONDS = 60.0  # then the session's slot goes back to the priority queue


@dataclass(frozen=True)
class _Claimed:
    """A task run and claimed in this session, waiting for its group's settlement."""

    result: jobproto.TaskResult
    entries: list[jobproto.FileEntry]
    sources: list[Path | bytes]
    limits: JobLimits


async def serve(worker: Worker, raw: Any) -> None:
    """The stream handler of jobproto.TASKS."""
    stream = worker.stream(raw, Kind.SESSION)
    taken = await worker.take_offer(stream)
    if taken is None:
        return
    session_id = taken.offer.job_id
    log.info("task session %s for %s on %s", session_id, stream.remote_peer, taken.backend.name)
    session = _Session(worker, stream, session_id, taken.spec, taken.backend)
    try:
        await session.run()
    finally:
        worker.let_go(stream.remote_peer, session_id)

        def drop_released() -> None:
            for claim_id in session.released:
                worker.held.drop(claim_id)

        if session.released:
            with trio.CancelScope(shield=True):
                await blocking.run(drop_released)
            worker.claims.dropped(session.released)


class _Session:
    def __init__(
        self, worker: Worker, stream: JobStream, session_id: str, shape: JobSpec, backend: Backend
    ) -> None:
        self.worker, self.stream, self.shape, self.backend = worker, stream, shape, backend
        self.requester = stream.remote_peer
        guest = worker.running[(self.requester, session_id)]
        self.balance_milli = guest.balance_milli  # verified when the session was admitted
        self.owed_milli = guest.owed_milli  # what the requester owed here then, else
        self.paid_milli = 0  # claimed in groups settled, or offered and refused
        self.group: list[_Claimed] = []  # claimed, not offered yet
        self.released: list[str] = []  # claims settled whose held copies are not dropped yet
        self.began = trio.current_time()
        self.refusing: str | None = None

    async def run(self) -> None:
        try:
            while True:
                try:
                    event = await self.stream.receive(SESSION_IDLE)
                except StreamGone:
                    return  # closed by the requester (or it went silent): the session is over
                if isinstance(event, jobproto.Collect):
                    await self._settle()
                elif isinstance(event, TasksReceived):
                    await self._tasks(event)
                # (A Cancel read here was sent as its task ended: nothing runs now.)
        finally:
            if self.group:  # claimed, never settled: held for the requester's return
                with trio.CancelScope(shield=True):
                    await self._claim(None)

    async def _tasks(self, batch: TasksReceived) -> None:
        for task in batch.tasks.tasks:
            if (self.requester, task.job_id) in self.worker.running:
                raise wire.RemoteProtocolError(f"task {task.job_id} is running here already")
        lone = len(batch.specs) == 1
        done: list[jobproto.TaskDone] = []
        skip: set[str] = set()  # cancelled by the requester (before their turn, or running)
        for task, spec in zip(batch.tasks.tasks, batch.specs, strict=True):
            why = self.refusing or self._refusal(terms.job_limits(spec))
            if why is not None:
                # No more tasks in this session: the requester collects what is claimed, and
                # offers the rest again (here, after the queue, or elsewhere).
                self.refusing = why
                done.append(jobproto.TaskDone(task.job_id, False, why[: jobproto.MAX_REASON]))
            elif task.job_id in skip:
                done.append(jobproto.TaskDone(task.job_id, claimed=False))
            else:
                done.append(await self._run(task.job_id, spec, lone, skip))
        await self.stream.send(jobproto.TasksDone(done=tuple(done)))

    async def _run(
        self, job_id: str, spec: JobSpec, live: bool, skip: set[str]
    ) -> jobproto.TaskDone:
        # (No result directory: a task has no output files, its stdout and stderr are bytes.)
        result = await self.worker.sandboxed(
            self.stream, self.backend, job_id, spec, None, [], live=live, cancelled=skip
        )
        cpu_ms = terms.claimable_ms(result.cpu_seconds, spec)
        if not owed(result, job_id, skip, cpu_ms):
            # Given up by the idle policy, or cancelled before it used anything: no claim.
            return jobproto.TaskDone(job_id=job_id, claimed=False)
        entries, sources = result_files(result, None)
        verdict = results.Verdict(result.exit_code, result.reason.value)
        self.group.append(
            _Claimed(
                jobproto.TaskResult(
                    job_id=job_id,
                    exit_code=result.exit_code,
                    reason=result.reason.value,
                    cpu_ms=cpu_ms,
                    wall_seconds=result.wall_seconds,
                    peak_memory=result.peak_memory,
                    result_hash=results.result_hash(verdict, entries),
                    files=len(entries),
                ),
                entries,
                sources,
                terms.job_limits(spec),
            )
        )
        return jobproto.TaskDone(job_id=job_id, claimed=True)

    def _refusal(self, limits: JobLimits) -> str | None:
        """Why the next task may not start in this session (None if it may)."""
        if trio.current_time() - self.began > SESSION_SECONDS:
            return "this session has run its time: offer again"
        why = self.worker.may_start()
        if why is not None:
            return why
        # As for jobs offered one by one, each task is checked at its limits against the
        # verified balance less what this session's earlier tasks cost (claimed, paid or not).
        exposure = self.paid_milli + amount_milli(sum(c.result.cpu_ms for c in self.group), 0)
        return floor_problem(
            self.balance_milli, limits, self.worker.ledger.floor_milli, self.owed_milli + exposure
        )

    async def _settle(self) -> None:
        self.paid_milli += await self._claim(self.stream)

    async def _claim(self, stream: JobStream | None) -> int:
        """Claim the group (and offer it on `stream`; hold it if None, or if the stream is
        gone); what it claims, in milli-credits (counted as paid: the requester may have
        refused, never paid more)."""
        group, self.group = self.group, []
        tasks = tuple(c.result for c in group)
        cpu_ms = sum(t.cpu_ms for t in tasks)
        finished = jobproto.Finished(
            exit_code=None,
            reason="group",
            cpu_seconds=cpu_ms / 1000,
            wall_seconds=sum(t.wall_seconds for t in tasks),
            peak_memory=max(t.peak_memory for t in tasks),
            result_hash=results.group_hash(tasks),
            outputs=tuple(e for c in group for e in c.entries),
            proposal=b"",
            tasks=tasks,
        )
        limits = terms.group_limits([c.limits for c in group])
        sources = [s for c in group for s in c.sources]
        claim_id = secrets.token_hex(8)
        if stream is not None and stream.ending is not None:
            stream = None
        await self.worker.claims.claim_and_release(
            stream, self.requester, claim_id, cpu_ms, limits, finished, sources, self.released
        )
        return amount_milli(cpu_ms, 0)
