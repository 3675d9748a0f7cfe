"""The requester's end of the job protocol: find a worker, hand it the job, pay, fetch the result.

`Requester.submit(spec)` returns a job id at once; a trio task per job then:
1. ranks the workers it knows (signed node records from the membership view, and the CPUs
   of our own jobs each already has; see node.jobs.core.scheduler) and offers the job to them
   one at a time until one accepts; an offer carries the blocks of our chain the worker has not
   verified yet, as far as we know (it tells us in each Accept), so it need not ask for them;
2. follows the attempt: live output, progress reports (the lease: silence past `LEASE` means the
   worker is gone, and the job goes to another worker; nothing is paid for a lost attempt);
3. checks the worker's proposal (the manifest it announced hashes to the hash it signed; the
   amount is within the job's limits) and countersigns it in the ledger;
4. receives the result files in bounded chunks and checks each against the signed manifest.
A job is on disk (node.jobs.requester.store) from its submission, and driven again after a restart;
a job with `replicas` > 1 runs on that many workers and is decided by node.jobs.core.voting; a
worker that held a result while we were away offers it through `handle_result`. A job is paid at
most once (the ledger's `max_payees`). Every step is bounded; every job ends done, failed or
cancelled.

Jobs without files and with one copy, while several are placed at once (an array), ride task
sessions instead (`_ride`; node.jobs.worker.sessions is the worker's end): one stream per
worker slot, quick jobs several to a message, paid in groups of up to jobproto.MAX_GROUP by
one exchange whose id each job records (`claim`). Each task's result is checked as in step 3
(node.jobs.core.results.group_problem), and a group is paid once or not at all.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import trio

from ledger.errors import RemoteFault
from ledger.messages import ChainRequest, Refuse, encode_message
from node.jobs import transfer
from node.jobs.core import results, scheduler, voting
from node.jobs.requester.store import FINISHED_STATES, JobStore, StoredJob
from node.jobs.worker.sessions import group_limits
from node.jobs.worker.worker import job_limits, propose_from
from node.ledger_link import frame, unframe
from rainnet import identity, jobproto, wire
from rainnet.ledgerproto import LedgerFrame
from rainnet.streams import FramedStream, ProtocolNotSupported, StreamGone
from sandbox import JobSpec

log = logging.getLogger("rainnet.requester")

LEASE = 15.0  # a worker silent this long has lost the job (it reports every 2 s)
# The worker answers an offer within this: its checks (a checking slot and our chain's
# verification, 30 s in all) and its wait for capacity (10 s) come first.
ACCEPT_TIMEOUT = 90.0
MAX_LOST_ATTEMPTS = 6
NO_WORKER_PATIENCE = 60.0  # no known worker could run the job at all: fail after this
MAX_QUEUE = 7 * 86400.0  # busy workers only delay a job, but not forever
DECLINE_PAUSE = 0.2  # after every known worker declined: first pause, doubling...
MAX_DECLINE_PAUSE = 5.0  # ...up to this
UNREACHABLE_PAUSE = 5.0  # a worker we could not reach is skipped this long, by every job
MAX_EXTRA_REPLICAS = 2  # runs beyond --replicas to break a disagreement
MAX_OFFERS_IN_FLIGHT = 32  # offers awaiting an answer, all workers together
OFFERS_PER_WORKER = 4  # ...and to any one worker
VOTE_SLACK = 120.0  # beyond the job's wall-time limit, how long a replica waits for the others
RESULT_WAIT = 3600.0  # paid for a result whose transfer broke: how long to wait for it again
RESUME_GRACE = 20.0  # after a restart, how long a job that was running waits for its worker
MAX_KEPT_OUTPUT = 1 << 20
MAX_RESULT_BYTES = 1 << 30
MAX_JOBS_KEPT = 10_000
T = TypeVar("T")
MAX_WORKERS_REMEMBERED = 4096  # per-worker hints kept (see _remember)
OFFERED_BLOCKS = 16  # at most this many blocks of our chain go with an offer
MAX_CHAIN_ASKS = 4096  # pages of our chain a worker may ask for before answering an offer
# Task sessions (jobproto.TASKS) carry jobs without files, one copy each, while at least this
# many such jobs are being placed at once: a lone job keeps its own stream, live to the end.
SESSION_BACKLOG = 2
SESSION_LINGER = 0.5  # a session with no job waiting this long is closed
QUICK_TASK = 0.25  # tasks quicker than this (seconds each) go several to a message
RIDES_PER_WORKER = 2 * jobproto.MAX_BATCH  # jobs waiting for task sessions to one worker


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
    state: str = "queued"  # queued, offering, running, settling, done, failed, cancelled
    worker: str | None = None
    attempts: int = 0
    started: float | None = None
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
        return msgpack.packb(self.spec.to_wire(), use_bin_type=True)  # type: ignore[no-any-return]

    def touch(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def stored(self) -> StoredJob:
        return StoredJob(
            job_id=self.job_id,
            spec=self.spec.to_wire(),
            inputs=[
                (e.path, e.size, e.sha256, str(src))
                for e, src in zip(self.inputs, self.input_sources, strict=True)
            ],
            state=self.state,
            worker=self.worker,
            attempts=self.attempts,
            replicas=self.replicas,
            submitted=self.submitted,
            started=self.started,
            ended=self.ended,
            cpu_seconds=self.cpu_seconds,
            credit=self.credit,
            exit_code=self.exit_code,
            reason=self.reason,
            error=self.error,
            outputs=self.outputs,
            claim=self.claim,
        )

    @classmethod
    def from_stored(cls, st: StoredJob) -> JobRecord:
        job = cls(
            job_id=st.job_id,
            spec=JobSpec.from_wire(st.spec),
            inputs=tuple(jobproto.FileEntry(p, size, sha) for p, size, sha, _ in st.inputs),
            input_sources=tuple(Path(src) for *_, src in st.inputs),
            replicas=st.replicas,
            submitted=st.submitted,
            state=st.state,
            worker=st.worker,
            attempts=st.attempts,
            started=st.started,
            ended=st.ended,
            cpu_seconds=st.cpu_seconds,
            credit=st.credit,
            exit_code=st.exit_code,
            reason=st.reason,
            error=st.error,
            outputs=st.outputs,
            claim=st.claim,
        )
        job.output_loaded = st.state != "done"
        if st.worker:
            job.accepted_by.add(st.worker)
        if st.state in FINISHED_STATES:
            job.finished.set()
            job.cancel.set()
        return job

    def as_dict(self) -> dict[str, Any]:
        now = self.ended or time.time()
        return {
            "job_id": self.job_id,
            "state": self.state,
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
        }


@dataclass
class _SaveBatch:
    """Job states written to the store in one transaction (see Requester._save)."""

    written: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None


class _OfferSlot:
    """One offer's place in the global and per-worker bounds; released once (idempotent)."""

    def __init__(self, *semaphores: trio.Semaphore) -> None:
        self._semaphores = semaphores
        self._held: list[trio.Semaphore] = []

    async def acquire(self) -> None:
        for sem in self._semaphores:
            await sem.acquire()
            self._held.append(sem)

    def release(self) -> None:
        while self._held:
            self._held.pop().release()


class _Load:
    """One attempt's CPUs in the requester's per-worker commitments; released once."""

    def __init__(self, committed: dict[str, float], worker: str, cpus: float) -> None:
        self._committed, self._worker, self._cpus = committed, worker, cpus
        committed[worker] = committed.get(worker, 0.0) + cpus

    def release(self) -> None:
        if self._cpus:
            left = self._committed.get(self._worker, 0.0) - self._cpus
            if left > 1e-9:
                self._committed[self._worker] = left
            else:
                self._committed.pop(self._worker, None)
            self._cpus = 0.0


def _remember(table: dict[str, T], worker: str, hint: T) -> None:
    """Note a hint about a worker, forgetting the oldest beyond MAX_WORKERS_REMEMBERED: many
    peers must not grow it without bound, and a hint forgotten costs a round trip at most."""
    table.pop(worker, None)
    table[worker] = hint
    while len(table) > MAX_WORKERS_REMEMBERED:
        del table[next(iter(table))]


class Vote:
    """The replicas of one job report their result hashes here and wait for the decision
    (node.jobs.core.voting): ("fetch" | "pay" | "refuse", number of workers paid)."""

    def __init__(self, replicas: int, max_runs: int) -> None:
        self.replicas = replicas
        self.max_runs = max_runs
        self.results: dict[str, bytes] = {}
        self.decided = trio.Event()
        self.extra = trio.Event()  # set when one more run is needed
        self.tally: voting.Tally | None = None
        self._fetcher: str | None = None

    async def cast(self, worker: str, result_hash: bytes) -> tuple[str, int]:
        if not self.decided.is_set():  # once decided, late results change nothing
            self.results[worker] = result_hash
            t = voting.tally(self.results, self.replicas, self.max_runs)
            if t.decided or t.failed:
                self.tally = t
                self.decided.set()
            elif t.more_runs and len(self.results) >= self.replicas:
                self.extra.set()
        await self.decided.wait()
        assert self.tally is not None
        if worker not in self.tally.winners:
            return "refuse", 0
        if self._fetcher is None:
            self._fetcher = worker
        return ("fetch" if self._fetcher == worker else "pay"), len(self.tally.winners)


class AttemptLost(Exception):
    """The worker vanished or broke the protocol mid-job: try another (nothing is paid)."""


class Unreachable(Exception):
    """The worker could not be reached at all (nothing was offered, nothing lost)."""


class PaidAwaitingResult(StreamGone):
    """We countersigned the result, then its files did not arrive: the worker holds them and
    offers them again (jobproto.RESULT); running the job elsewhere would only be unpaid work."""


class Declined(Exception):
    """The worker would not take the job (its reason)."""


Shape = tuple[str | None, float, int, int]  # image, CPUs, memory, GPUs: what a session runs


def _shape(spec: JobSpec) -> Shape:
    return (spec.image, spec.limits.cpus, spec.limits.memory, spec.limits.gpus)


@dataclass
class _Ride:
    """One job's attempt through a task session: handed to its driver, then told how it ended
    (`error` None: done, paid and its result stored)."""

    job: JobRecord
    load: _Load
    ended: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None

    def end(self, error: Exception | None = None) -> None:
        if not self.ended.is_set():
            self.error = error
            self.ended.set()


class _TaskSession:
    """Our end of one task session: a stream to `worker` running jobs of `shape`, one at a
    time; jobs wait to be taken on an unbuffered channel (each within RIDES_PER_WORKER)."""

    def __init__(self, worker: str, shape: Shape, fs: FramedStream) -> None:
        self.worker, self.shape, self.fs = worker, shape, fs
        self.rides_in, self.rides = trio.open_memory_channel[_Ride](0)
        self.waiting = 0  # jobs waiting to be taken
        self.closing = False
        self.batch_limit = 1  # jobs handed over in one message (see _run_session)
        self.carried: list[_Ride] = []  # taken, handed over in the next message


class Requester:
    def __init__(
        self,
        me: identity.Identity,
        ledger: Any,
        candidates: Callable[[], list[scheduler.Candidate]],
        open_stream: Callable[[str, str], Any],
        jobs_dir: Path,
        store: JobStore,
    ) -> None:
        self.me = me
        self.store = store
        self.ledger = ledger
        self._candidates = candidates
        self._open_stream = open_stream
        self.jobs_dir = jobs_dir
        self.jobs: dict[str, JobRecord] = {}
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random()
        self._unreachable: dict[str, float] = {}  # worker -> until when not to try it
        self._offering = trio.Semaphore(MAX_OFFERS_IN_FLIGHT)
        self._worker_offers: dict[str, trio.Semaphore] = {}
        self._worker_rides: dict[str, trio.Semaphore] = {}
        self._no_sessions: dict[str, bool] = {}  # workers that take no task sessions
        # CPUs of our jobs offered to or running on each worker: what ranking spreads jobs by.
        self.committed: dict[str, float] = {}
        # Workers whose result was outvoted by replicas: offered no job again (kept in the job
        # store across restarts, for jobstore.UNTRUSTED_FOR).
        self.untrusted: set[str] = set()
        # How far each worker holds our chain verified (from its Accepts): what to send along.
        self._chain_known: dict[str, int] = {}
        self._sessions: dict[tuple[str, Shape], list[_TaskSession]] = {}
        self._session_locks: dict[str, trio.Lock] = {}  # one session opened at a time per worker
        self._placing = 0  # jobs that could ride a session, now in _attempt: the backlog
        self._unsaved: dict[str, JobRecord] = {}  # (see _save)
        self._next_batch = _SaveBatch()
        self._saving = False

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Drive jobs until cancelled; first take back the unfinished ones from the store."""
        stored = await trio.to_thread.run_sync(self.store.load)
        self.untrusted |= await trio.to_thread.run_sync(self.store.untrusted, time.time())
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for st in stored:
                job = JobRecord.from_stored(st)
                self.jobs[job.job_id] = job
                if not job.finished.is_set():
                    log.info("job %s: resuming after a restart (was %s)", job.job_id, job.state)
                    # A job that was running, or handed to a task session, may finish where
                    # it ran: its worker holds the result and offers it when we are back. Give
                    # it that chance first.
                    handed = job.state == "offering" and job.worker is not None
                    grace = RESUME_GRACE if job.state == "running" or handed else 0.0
                    job.state, job.worker = "queued", None
                    nursery.start_soon(self._drive, job, grace)
            task_status.started()
            await trio.sleep_forever()

    async def load_output(self, job: JobRecord) -> None:
        """The head of a done job's stdout and stderr back in memory (`rain logs` after a
        restart), from the files it was stored in."""
        if job.output_loaded:
            return
        job.output_loaded = True
        folder = self.jobs_dir / job.job_id
        with contextlib.suppress(OSError):  # (removed by hand: nothing to show)
            out, err = await trio.to_thread.run_sync(
                lambda: (_head(folder / "stdout"), _head(folder / "stderr"))
            )
            job.stdout[:], job.stderr[:] = out, err

    async def _save(self, job: JobRecord) -> None:
        """Store the job's state. Saves asked for while one is being written go together in
        the next transaction (group commit): under load, one thread hop stores many."""
        self._unsaved[job.job_id] = job
        batch = self._next_batch
        if self._saving:
            await batch.written.wait()
        else:
            self._saving = True
            try:
                with trio.CancelScope(shield=True):  # others wait on this writer
                    while self._unsaved:
                        jobs, self._unsaved = list(self._unsaved.values()), {}
                        writing, self._next_batch = self._next_batch, _SaveBatch()
                        try:
                            stored = [j.stored() for j in jobs]
                            await trio.to_thread.run_sync(self.store.save_all, stored)
                        except Exception as exc:
                            writing.error = exc
                        writing.written.set()
            finally:
                self._saving = False
        if batch.error is not None:
            raise batch.error

    async def submit(
        self,
        specs: list[JobSpec],
        inputs: tuple[tuple[jobproto.FileEntry, Path], ...] = (),
        replicas: int = 1,
    ) -> list[JobRecord]:
        """Accept jobs from the local user (the tasks of an array share their inputs): on disk,
        in one transaction, before this returns; then driven."""
        if self._nursery is None:
            raise RuntimeError("the requester is not running")
        room = MAX_JOBS_KEPT - len(specs)
        if len(self.jobs) > room:
            done = sorted(
                (j for j in self.jobs.values() if j.finished.is_set()), key=lambda j: j.submitted
            )[: len(self.jobs) - room]
            if len(self.jobs) - len(done) > room:
                raise ValueError(f"{MAX_JOBS_KEPT} jobs in flight: wait for some to finish")
            for old in done:
                del self.jobs[old.job_id]
            await trio.to_thread.run_sync(self.store.forget_all, [j.job_id for j in done])
        jobs = [
            JobRecord(
                job_id=secrets.token_hex(8),
                spec=spec,
                inputs=tuple(e for e, _ in inputs),
                input_sources=tuple(p for _, p in inputs),
                replicas=replicas,
            )
            for spec in specs
        ]
        await trio.to_thread.run_sync(self.store.save_all, [j.stored() for j in jobs])
        for job in jobs:
            self.jobs[job.job_id] = job
            self._nursery.start_soon(self._drive, job)
        return jobs

    async def _drive(self, job: JobRecord, grace: float = 0.0) -> None:
        """Run the job to its end: one lane, or one per replica (each on a distinct worker),
        plus one more lane each time the replicas' results disagree."""
        with trio.CancelScope() as scope:
            self._nursery_cancel_on(job, scope)
            with trio.move_on_after(grace):
                await job.finished.wait()
            if job.finished.is_set():  # settled meanwhile, by the result its worker held
                return
            used: set[str] = set()
            try:
                if job.replicas == 1:
                    await self._lane(job, None, used)
                else:
                    await self._replicated(job, used)
            except Exception as exc:
                # A bug or a local fault (an input file gone) fails this job, never the node.
                log.exception("job %s failed", job.job_id)
                await self._end(job, "failed", error=f"{type(exc).__name__}: {exc}")
            if not job.finished.is_set():
                await self._end(job, "failed", error=job.error or "no worker completed it")
        if job.cancel.is_set():
            await self._end(job, "cancelled")

    async def _replicated(self, job: JobRecord, used: set[str]) -> None:
        vote = Vote(job.replicas, job.replicas + MAX_EXTRA_REPLICAS)
        running = 0
        all_done = trio.Event()

        async def lane() -> None:
            nonlocal running
            running += 1
            try:
                await self._lane(job, vote, used)
            finally:
                running -= 1
                if running == 0:
                    all_done.set()

        async def extra_runs() -> None:
            for _ in range(MAX_EXTRA_REPLICAS):
                await vote.extra.wait()
                vote.extra = trio.Event()
                lanes.start_soon(lane)

        async def verdict() -> None:
            await vote.decided.wait()
            if vote.tally is not None and vote.tally.failed:
                await self._end(job, "failed", error="the replicas' results disagree")

        async with trio.open_nursery() as lanes:
            for _ in range(job.replicas):
                lanes.start_soon(lane)
            lanes.start_soon(extra_runs)
            lanes.start_soon(verdict)
            # Done when the job ended (the winner fetched, or it failed), or every lane gave up.
            async with trio.open_nursery() as first:
                for event in (job.finished, all_done):
                    first.start_soon(_wait_then_cancel, event, first.cancel_scope)
            lanes.cancel_scope.cancel()

    async def _lane(self, job: JobRecord, vote: Vote | None, used: set[str]) -> None:
        """Offer the job until a worker runs it to the end. Declines (busy workers) only delay
        it; attempts lost mid-run count against MAX_LOST_ATTEMPTS; with no worker able to run it
        at all for NO_WORKER_PATIENCE, it fails saying why; it never waits past MAX_QUEUE."""
        needs = scheduler.Needs(
            cpus=job.spec.limits.cpus,
            memory=job.spec.limits.memory,
            gpus=job.spec.limits.gpus,
            image=job.spec.image,
        )
        tried: set[str] = set()
        declines: list[str] = []
        lost = 0
        queued_at = unable_since = trio.current_time()
        pause = DECLINE_PAUSE
        while lost < MAX_LOST_ATTEMPTS and trio.current_time() - queued_at < MAX_QUEUE:
            known = self._candidates()
            now = trio.current_time()
            self._unreachable = {w: until for w, until in self._unreachable.items() if until > now}
            shunned = set(self._unreachable)
            exclude = tried | shunned | self.untrusted | (used if vote else set())
            ranked = scheduler.rank_workers(known, needs, exclude=exclude, committed=self.committed)
            if not ranked:
                if any(scheduler.can_run(c.record, needs) is None for c in known):
                    unable_since = trio.current_time()  # workers exist, just busy
                elif trio.current_time() - unable_since > NO_WORKER_PATIENCE:
                    why = scheduler.explain_no_worker([c.record for c in known], needs)
                    detail = f"; declined: {'; '.join(declines[-3:])}" if declines else ""
                    await self._end(job, "failed", error=why + detail)
                    return
                tried.clear()  # everyone said no: ask again after a pause
                await trio.sleep(pause * (0.5 + self._rng.random()))
                pause = min(pause * 2, MAX_DECLINE_PAUSE)
                continue
            worker = ranked[0].peer_id
            tried.add(worker)
            used.add(worker)
            try:
                await self._attempt(job, worker, vote)
                return
            except Declined as exc:
                declines = [*declines[-9:], f"{worker[-8:]}: {exc}"]
                used.discard(worker)
                job.state, job.worker = "queued", None
            except Unreachable as exc:
                # Probably gone (its heartbeats will tell): leave it alone for a while.
                log.info("job %s: %s unreachable: %s", job.job_id, worker, exc)
                _remember(self._unreachable, worker, trio.current_time() + UNREACHABLE_PAUSE)
                used.discard(worker)
                job.state, job.worker = "queued", None
            except PaidAwaitingResult as exc:
                log.warning(
                    "job %s: paid %s, result not received (%s); waiting", job.job_id, worker, exc
                )
                with trio.move_on_after(RESULT_WAIT):
                    await job.finished.wait()
                await self._end(
                    job, "failed", error="paid, but the worker never delivered the result"
                )
                return
            except AttemptLost as exc:
                lost += 1
                log.warning("job %s lost on %s: %s; trying another worker", job.job_id, worker, exc)
                job.state, job.worker = "queued", None
                pause = DECLINE_PAUSE
        why = f"lost on {lost} workers" if lost >= MAX_LOST_ATTEMPTS else "queued too long"
        await self._end(job, "failed", error=f"gave up: {why}")

    def _nursery_cancel_on(self, job: JobRecord, scope: trio.CancelScope) -> None:
        async def watch() -> None:
            await job.cancel.wait()
            scope.cancel()

        assert self._nursery is not None
        self._nursery.start_soon(watch)

    async def _end(self, job: JobRecord, state: str, error: str | None = None) -> None:
        if job.finished.is_set():
            return
        job.state, job.error, job.ended = state, error, time.time()
        with trio.CancelScope(shield=True):  # a cancelled job's end is recorded all the same
            await self._save(job)
        job.finished.set()
        job.touch()
        job.cancel.set()  # releases the cancel watcher
        log.info("job %s %s%s", job.job_id, state, f": {error}" if error else "")

    async def handle_result(self, stream: Any) -> None:
        """A worker offers a result it held while we were away (rainnet.jobproto.RESULT):
        settle it like the end of a job stream, unless the job is done already or gone."""
        fs = FramedStream(stream, jobproto.TO_REQUESTER, jobproto.JOB_MAX_FRAME)
        worker = fs.remote_peer
        finished = await fs.receive_a(jobproto.Finished, LEASE)
        if finished.tasks:
            await self._held_group(worker, fs, finished)
            return
        job_id = propose_from(finished.proposal).block.transaction.job_id
        job = self.jobs.get(job_id)
        if (
            job is None
            or job.finished.is_set()
            or job.replicas > 1
            or job.settling
            or worker not in job.accepted_by
        ):
            why = "no such job here" if job is None else "no result of yours is owed for this job"
            await fs.send(jobproto.Settle(answer=encode_message(Refuse(job_id, why))))
            await fs.close()
            return
        log.info("job %s: %s offers the result it held for us", job_id, worker)
        job.worker = worker
        try:
            await self._settle(job, worker, fs, finished, None)
        finally:
            await fs.close()

    async def _held_group(self, worker: str, fs: FramedStream, finished: jobproto.Finished) -> None:
        """A group of a task session held for us: paid only if every task in it is a job of
        ours that this worker ran and that nobody was paid for since."""
        jobs = {t.job_id: self.jobs.get(t.job_id) for t in finished.tasks}
        mine = {
            j: job
            for j, job in jobs.items()
            if job is not None
            and not job.finished.is_set()
            and job.replicas == 1
            and worker in job.accepted_by
        }
        if len(mine) != len(jobs):
            claim = propose_from(finished.proposal).block.transaction.job_id
            why = "no result of yours is owed for some jobs of this group"
            await fs.send(jobproto.Settle(answer=encode_message(Refuse(claim, why))))
            await fs.close()
            return
        log.info("%s offers the results of %d jobs it held for us", worker, len(mine))
        try:
            conclude = await self._settle_group(worker, fs, finished, mine)
        finally:
            await fs.close()
        await conclude()

    # ----- one attempt ------------------------------------------------------------------------

    async def _attempt(self, job: JobRecord, worker: str, vote: Vote | None = None) -> None:
        # Offers in flight are bounded, overall and per worker (each costs the worker a chain
        # check): a thousand queued jobs must not become a thousand simultaneous streams. The
        # slot is held from the offer until the worker answers it, not while the job runs.
        # The worker's own slot first: jobs queued for a busy worker must not hold global
        # slots that offers to idle workers need.
        load = _Load(self.committed, worker, job.spec.limits.cpus)
        rideable = vote is None and _rideable(job)
        self._placing += rideable
        # A job for a task session waits for it instead, within a bound of its own per worker
        # (it opens no stream: one session's offer stands for all of them).
        ride = (
            rideable
            and worker not in self._no_sessions
            and bool(
                self._placing >= SESSION_BACKLOG or self._sessions.get((worker, _shape(job.spec)))
            )
        )
        if ride:
            slot = _OfferSlot(self._per_worker(self._worker_rides, worker, RIDES_PER_WORKER))
        else:
            per_worker = self._per_worker(self._worker_offers, worker, OFFERS_PER_WORKER)
            slot = _OfferSlot(per_worker, self._offering)
        try:
            await slot.acquire()
            if job.finished.is_set():  # (settled meanwhile: a result held for us came back)
                return
            if ride:
                await self._ride(job, worker, slot, load)
            else:
                await self._offer_and_run(job, worker, vote, slot, load)
        finally:
            self._placing -= rideable
            slot.release()
            load.release()

    def _per_worker(
        self, table: dict[str, trio.Semaphore], worker: str, size: int
    ) -> trio.Semaphore:
        sem = table.get(worker)
        if sem is None:
            if len(table) > 4 * MAX_OFFERS_IN_FLIGHT:  # forget the idle ones
                idle = [w for w, s in table.items() if s.value == size]
                for w in idle:
                    del table[w]
            sem = table[worker] = trio.Semaphore(size)
        return sem

    async def _offer_and_run(
        self, job: JobRecord, worker: str, vote: Vote | None, slot: _OfferSlot, load: _Load
    ) -> None:
        job.attempts += 1
        job.state, job.worker = "offering", worker
        try:
            stream = await self._open_stream(worker, jobproto.JOB)
        except StreamGone as exc:
            job.attempts -= 1
            raise Unreachable(str(exc)) from None
        fs = FramedStream(stream, jobproto.TO_REQUESTER, jobproto.JOB_MAX_FRAME)
        try:
            await self._converse(job, worker, fs, vote, slot, load)
        except PaidAwaitingResult:
            raise
        except ProtocolNotSupported as exc:  # it does not take jobs (any more): nothing lost
            job.attempts -= 1
            raise Unreachable(str(exc)) from None
        except (StreamGone, wire.RemoteProtocolError, trio.TooSlowError) as exc:
            raise AttemptLost(str(exc) or type(exc).__name__) from None
        finally:
            with trio.CancelScope(shield=True):
                if job.finished.is_set():
                    # Closed, not left half-open: py-libp2p keeps a stream (and its slot in the
                    # resource manager, 8192 in all) until both ends close it.
                    await fs.close()
                else:
                    if job.cancel.is_set():
                        with trio.move_on_after(2):
                            with contextlib.suppress(StreamGone):
                                await fs.send(jobproto.Cancel(reason="cancelled by its owner"), 2)
                    await fs.reset()

    async def _converse(
        self,
        job: JobRecord,
        worker: str,
        fs: FramedStream,
        vote: Vote | None,
        slot: _OfferSlot,
        load: _Load,
    ) -> None:
        await fs.send(
            jobproto.Offer(
                job_id=job.job_id,
                attempt=job.attempts,
                spec=job.spec_bytes,
                inputs=job.inputs,
                lease_seconds=LEASE,
                chain=await self._recent_chain(worker),
            )
        )
        reply = await self._answer_to_offer(fs)
        slot.release()
        if isinstance(reply, jobproto.Decline):
            await fs.close()
            raise Declined(reply.reason)
        if not isinstance(reply, jobproto.Accept):
            raise wire.RemoteProtocolError(f"{reply.TYPE} instead of an answer to the offer")
        _remember(self._chain_known, worker, reply.chain_verified)
        job.state, job.started = "running", time.time()
        job.accepted_by.add(worker)
        await self._save(job)  # after a restart: wait for this worker's held result first

        async def send_chunk(index: int, offset: int, data: bytes) -> None:
            await fs.send(jobproto.InputChunk(index=index, offset=offset, data=data))

        if job.inputs:  # (without inputs the worker starts the job at once)
            await transfer.send(send_chunk, job.input_sources)
            await fs.send(jobproto.InputDone())
        while True:
            msg = await fs.receive(LEASE)
            if isinstance(msg, jobproto.Progress):
                job.cpu_seconds = msg.cpu_seconds
            elif isinstance(msg, jobproto.Output):
                _keep_output(job, msg)
            elif isinstance(msg, jobproto.Finished):
                load.release()  # the job has ended there: its CPUs are free for the next
                await self._settle(job, worker, fs, msg, vote)
                return
            else:
                raise wire.RemoteProtocolError(f"{msg.TYPE} while the job runs")

    async def _recent_chain(self, worker: str) -> bytes:
        """The blocks of our chain this worker has not verified yet as far as we know (it told
        us in its last Accept), as a ledger ChainPage to send with the offer; empty if we do not
        know or they are too many (it then asks for what it lacks on the job stream)."""
        since = self._chain_known.get(worker)
        if since is None:
            return b""
        ledger = self.ledger.ledger
        request = ChainRequest(ledger.public_key, since, OFFERED_BLOCKS)
        page = await self.ledger.call(ledger.serve_chain, request)
        return b"" if page.more else encode_message(page)

    async def _answer_to_offer(self, fs: FramedStream) -> wire.Message:
        """The worker's answer to our offer, after serving the pages of our chain it asks for
        on the way (it verifies our credit before it answers)."""
        ledger = self.ledger.ledger
        with trio.fail_after(ACCEPT_TIMEOUT):
            for _ in range(MAX_CHAIN_ASKS):
                reply = await fs.receive(ACCEPT_TIMEOUT)
                if not isinstance(reply, LedgerFrame):
                    return reply
                request = unframe(reply, (ChainRequest,))
                assert isinstance(request, ChainRequest)
                if request.public_key != ledger.public_key:
                    raise wire.RemoteProtocolError("asked for another chain than ours")
                await fs.send(frame(await self.ledger.call(ledger.serve_chain, request)))
        raise wire.RemoteProtocolError(f"more than {MAX_CHAIN_ASKS} chain requests for one offer")

    # ----- task sessions ----------------------------------------------------------------------

    async def _ride(self, job: JobRecord, worker: str, slot: _OfferSlot, load: _Load) -> None:
        """Run the job through a task session to `worker` (one of ours with room for it, or a
        new one): it waits to be taken, holding its offer slot, then for its group's end."""
        ride = _Ride(job, load)
        # On disk before the worker may hold a result for it (accepted_by, after a restart),
        # and written with the other jobs waiting for a session meanwhile (see _save).
        job.state, job.worker = "offering", worker
        job.accepted_by.add(worker)
        await self._save(job)
        for _ in range(2):  # the session chosen may close before it takes us: once more
            session = await self._session_for(worker, job)
            session.waiting += 1
            try:
                await session.rides_in.send(ride)
                break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue
            finally:
                session.waiting -= 1
        else:
            raise Declined("its task sessions there ended")
        slot.release()  # taken: the next job may wait for this session
        await ride.ended.wait()
        if ride.error is not None:
            raise ride.error

    async def _session_for(self, worker: str, job: JobRecord) -> _TaskSession:
        """A session of ours to `worker` for jobs like this one with nobody waiting on it, or
        the least waited-on once there are as many as the worker has slots for such jobs."""
        key = (worker, _shape(job.spec))
        lock = self._session_locks.get(worker)
        if lock is None:
            if len(self._session_locks) > 4 * MAX_OFFERS_IN_FLIGHT:
                self._session_locks = {w: k for w, k in self._session_locks.items() if k.locked()}
            lock = self._session_locks[worker] = trio.Lock()
        async with lock:
            live = [x for x in self._sessions.get(key, []) if not x.closing]
            record = next(
                (c.record for c in self._candidates() if c.record.peer_id == worker), None
            )
            slots = max(1, int(record.cpus // job.spec.limits.cpus)) if record else 1
            if live:
                best = min(live, key=lambda x: x.waiting)
                if best.waiting == 0 or len(live) >= slots:
                    return best
            session = await self._open_session(worker, job)
            self._sessions.setdefault(key, []).append(session)
            assert self._nursery is not None
            self._nursery.start_soon(self._run_session, session)
            return session

    async def _open_session(self, worker: str, job: JobRecord) -> _TaskSession:
        """Offer a session for jobs shaped like `job` (Declined, or Unreachable: nothing ran)."""
        try:
            stream = await self._open_stream(worker, jobproto.TASKS)
        except StreamGone as exc:
            raise Unreachable(str(exc)) from None
        fs = FramedStream(stream, jobproto.TO_REQUESTER, jobproto.JOB_MAX_FRAME)
        try:
            await fs.send(
                jobproto.Offer(
                    job_id=secrets.token_hex(8),
                    attempt=1,
                    spec=job.spec_bytes,
                    inputs=(),
                    lease_seconds=LEASE,
                    chain=await self._recent_chain(worker),
                )
            )
            reply = await self._answer_to_offer(fs)
            if isinstance(reply, jobproto.Decline):
                await fs.close()
                raise Declined(reply.reason)
            if not isinstance(reply, jobproto.Accept):
                raise wire.RemoteProtocolError(f"{reply.TYPE} instead of an answer to the offer")
        except ProtocolNotSupported:
            # A worker of an older version: its jobs go one by one (see _attempt).
            _remember(self._no_sessions, worker, True)
            with trio.CancelScope(shield=True):
                await fs.reset()
            raise Declined("it takes no task sessions") from None
        except (StreamGone, wire.RemoteProtocolError, trio.TooSlowError) as e:
            with trio.CancelScope(shield=True):
                await fs.reset()
            raise Unreachable(f"task session: {e}") from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await fs.reset()
            raise
        _remember(self._chain_known, worker, reply.chain_verified)
        return _TaskSession(worker, _shape(job.spec), fs)

    async def _run_session(self, session: _TaskSession) -> None:
        """Drive one session: hand it the waiting jobs (several to a message while its tasks
        are quick), and collect and settle its claimed tasks when MAX_GROUP are claimed or no
        job waits; close it when idle, declined or broken (the jobs in it then go elsewhere;
        nothing is paid for a lost attempt)."""
        claimed: list[_Ride] = []
        batch: list[_Ride] = []
        try:
            while True:
                batch = await self._handover(session, jobproto.MAX_GROUP - len(claimed), claimed)
                if not batch:
                    if not claimed:
                        return
                    await self._collect(session, claimed)
                    claimed = []
                    continue
                began = trio.current_time()
                claimed += await self._session_batch(session, batch)
                # Quick tasks go several to a message (fewer messages per job); a slow one
                # alone, so that no job waits behind another for long.
                quick = (trio.current_time() - began) / len(batch) < QUICK_TASK
                doubled = min(2 * session.batch_limit, jobproto.MAX_BATCH)
                session.batch_limit = doubled if quick else 1
                batch = []
        except PaidAwaitingResult as exc:
            for ride in claimed:
                ride.end(exc)
        except (StreamGone, wire.RemoteProtocolError, trio.TooSlowError) as exc:
            log.warning("task session to %s lost: %s", session.worker, exc)
            for ride in [*claimed, *batch]:
                ride.end(AttemptLost(str(exc) or type(exc).__name__))
        except Exception as exc:
            # A bug or a local fault fails this session's jobs (their lanes say so), not the node.
            log.exception("task session to %s failed", session.worker)
            for ride in [*claimed, *batch]:
                ride.end(exc)
        finally:
            session.closing = True
            session.rides.close()
            for ride in session.carried:
                ride.end(Declined("its task session ended"))
            key = (session.worker, session.shape)
            left = [x for x in self._sessions.get(key, []) if x is not session]
            if left:
                self._sessions[key] = left
            else:
                self._sessions.pop(key, None)
            with trio.CancelScope(shield=True):
                await session.fs.close()

    async def _handover(
        self, session: _TaskSession, room: int, claimed: list[_Ride]
    ) -> list[_Ride]:
        """The jobs to hand over next: those waiting, up to the session's batch limit, `room`
        and one frame of specs; with nothing claimed, the next to come within SESSION_LINGER."""
        batch: list[_Ride] = []
        size = 0
        limit = min(session.batch_limit, room)
        while len(batch) < limit and not session.closing:
            ride: _Ride | None = None
            if session.carried:
                ride = session.carried.pop()
            elif not batch and not claimed:
                with trio.move_on_after(SESSION_LINGER):
                    ride = await session.rides.receive()
            else:
                with contextlib.suppress(trio.WouldBlock):
                    ride = session.rides.receive_nowait()
            if ride is None:
                break
            spec = ride.job.spec_bytes
            if batch and size + len(spec) > jobproto.MAX_SPEC_BYTES:
                session.carried.append(ride)  # (its turn comes in the next message)
                break
            batch.append(ride)
            size += len(spec)
        return batch

    async def _session_batch(self, session: _TaskSession, rides: list[_Ride]) -> list[_Ride]:
        """Run these jobs as the session's next tasks; those claimed (they end with their
        group's settlement). The others have ended: cancelled, declined, or given up there."""
        fs = session.fs
        for ride in rides:
            if ride.job.cancel.is_set():
                ride.end(Declined("cancelled"))
        rides = [r for r in rides if not r.job.cancel.is_set()]
        if not rides:
            return []
        tasks = tuple(jobproto.Task(r.job.job_id, r.job.spec_bytes) for r in rides)
        await fs.send(jobproto.Tasks(tasks=tasks))
        for ride in rides:
            job = ride.job
            job.attempts += 1
            job.state, job.started, job.worker = "running", time.time(), session.worker
        # Their owner may cancel them meanwhile: the Cancel goes out beside our reading.
        watches = [trio.CancelScope() for _ in rides]

        async def cancel_on_request(job: JobRecord, watch: trio.CancelScope) -> None:
            with watch, contextlib.suppress(StreamGone):
                await job.cancel.wait()
                await fs.send(jobproto.Cancel(reason="cancelled by its owner", job_id=job.job_id))

        assert self._nursery is not None
        for ride, watch in zip(rides, watches, strict=True):
            self._nursery.start_soon(cancel_on_request, ride.job, watch)
        lone = rides[0].job if len(rides) == 1 else None
        try:
            while True:
                msg = await fs.receive(LEASE)
                if isinstance(msg, jobproto.Progress):
                    if lone is not None:
                        lone.cpu_seconds = msg.cpu_seconds
                elif isinstance(msg, jobproto.Output) and lone is not None:
                    _keep_output(lone, msg)
                elif isinstance(msg, jobproto.TasksDone):
                    break
                else:
                    raise wire.RemoteProtocolError(f"{msg.TYPE} while tasks run")
        finally:
            for watch in watches:
                watch.cancel()
        if [d.job_id for d in msg.done] != [t.job_id for t in tasks]:
            raise wire.RemoteProtocolError("the tasks done are not the tasks handed over")
        claimed = []
        for ride, done in zip(rides, msg.done, strict=True):
            ride.load.release()  # its CPUs there are free for the next
            # (A job may have ended meanwhile: a result held for us from before a restart, or
            # its owner's cancel. Its state stays; a group with a job paid for is refused.)
            unended = not ride.job.finished.is_set()
            if done.claimed:
                if unended:
                    ride.job.state = "settling"
                claimed.append(ride)
            elif done.declined:
                session.closing = True  # no more tasks: collect what is claimed, then close
                if unended:
                    ride.job.state, ride.job.worker = "queued", None
                ride.end(Declined(done.declined))
            else:
                ride.end(AttemptLost("the worker gave the task up"))
        return claimed

    async def _collect(self, session: _TaskSession, claimed: list[_Ride]) -> None:
        await session.fs.send(jobproto.Collect())
        finished = await session.fs.receive_a(jobproto.Finished, LEASE)
        jobs = {r.job.job_id: r.job for r in claimed}
        conclude = await self._settle_group(session.worker, session.fs, finished, jobs)

        async def conclude_then_end() -> None:
            # Beside the session's next task: storing the results is not on its path.
            error: Exception | None = None
            try:
                await conclude()
            except Exception as exc:  # a local fault (the disk): these jobs fail, not the node
                log.exception("storing the results of a group failed")
                error = exc
            for ride in claimed:
                ride.end(error)

        assert self._nursery is not None
        self._nursery.start_soon(conclude_then_end)

    async def _settle_group(
        self,
        worker: str,
        fs: FramedStream,
        finished: jobproto.Finished,
        jobs: dict[str, JobRecord],
    ) -> Callable[[], Awaitable[None]]:
        """Check and pay a group of tasks (one claim), then receive their results; what stores
        them and ends their jobs (the caller awaits it, or lets it run beside the next task).
        `jobs` are the tasks we may pay for: run by this worker, never paid elsewhere."""
        proposal = propose_from(finished.proposal)
        block = proposal.block
        allowed = {j: job_limits(job.spec).max_cpu_ms for j, job in jobs.items()}
        problem = results.group_problem(
            finished, block.transaction.result_hash, block.transaction.cpu_ms, allowed
        )
        if problem is None and block.public_key != identity.public_bytes_from_peer_id(worker):
            problem = "the proposal is not signed by the worker"
        elif problem is None and sum(f.size for f in finished.outputs) > MAX_RESULT_BYTES:
            problem = "the result is larger than this node accepts"
        elif problem is None and any(
            job.settling or (job.finished.is_set() and job.state != "cancelled")
            for job in jobs.values()
        ):
            problem = "a job of this group was settled already"  # (paid once, at most)
        if problem is None:
            limits = group_limits([job_limits(j.spec) for j in jobs.values()])
            try:
                answer = await self.ledger.call(
                    lambda: self.ledger.ledger.agree(proposal, limits, max_payees=1)
                )
            except RemoteFault as exc:
                problem = str(exc)
        if problem is not None:
            refusal = Refuse(block.transaction.job_id, problem)
            await fs.send(jobproto.Settle(answer=encode_message(refusal)))
            raise wire.RemoteProtocolError(f"refused to pay: {problem}")
        for job in jobs.values():
            job.settling = True
        concluding = False
        try:
            await fs.send(jobproto.Settle(answer=encode_message(answer)))
            for t in finished.tasks:
                job = jobs[t.job_id]
                job.credit = job.cpu_seconds = t.cpu_ms / 1000
                job.claim = block.transaction.job_id
            partial = self.jobs_dir / f".group-{block.transaction.job_id}"
            incoming = transfer.Incoming(finished.outputs, partial)
            try:
                paths = await transfer.receive(
                    fs, incoming, jobproto.OutputChunk, jobproto.OutputDone, LEASE
                )
            except (StreamGone, wire.RemoteProtocolError) as exc:
                raise PaidAwaitingResult(str(exc)) from None
            concluding = True
        finally:
            if not concluding:
                for job in jobs.values():
                    job.settling = False
        log.info("%d jobs settled in one group with %s", len(jobs), worker)
        return functools.partial(self._conclude_group, finished, jobs, partial, paths)

    async def _conclude_group(
        self,
        finished: jobproto.Finished,
        jobs: dict[str, JobRecord],
        partial: Path,
        paths: list[Path],
    ) -> None:
        """Store a paid group's received results in its jobs' folders; the jobs are done."""
        try:
            heads = await trio.to_thread.run_sync(
                _store_group, self.jobs_dir, partial, finished.tasks, finished.outputs, paths
            )
            done = []
            for t, (out, err) in zip(finished.tasks, heads, strict=True):
                job = jobs[t.job_id]
                if job.finished.is_set():
                    continue  # cancelled while its group ran: paid, but not done
                job.stdout[:], job.stderr[:] = out, err
                job.outputs, job.exit_code, job.reason = [], t.exit_code, t.reason
                job.state, job.ended = "done", time.time()
                done.append(job)
            with trio.CancelScope(shield=True):  # (the cancelled ones too: paid all the same)
                stored = [j.stored() for j in jobs.values()]
                await trio.to_thread.run_sync(self.store.save_all, stored)
            for job in done:
                job.finished.set()
                job.touch()
                job.cancel.set()  # releases the cancel watcher
        finally:
            for job in jobs.values():
                job.settling = False

    async def _settle(
        self,
        job: JobRecord,
        worker: str,
        fs: FramedStream,
        finished: jobproto.Finished,
        vote: Vote | None,
    ) -> None:
        if vote is not None:  # replicas settle side by side, by design
            await self._settle_one(job, worker, fs, finished, vote)
            return
        if job.settling:
            raise wire.RemoteProtocolError("another result of this job is being settled")
        job.settling = True
        try:
            await self._settle_one(job, worker, fs, finished, None)
        finally:
            job.settling = False

    async def _settle_one(
        self,
        job: JobRecord,
        worker: str,
        fs: FramedStream,
        finished: jobproto.Finished,
        vote: Vote | None,
    ) -> None:
        job.state = "settling"
        verdict = results.Verdict(finished.exit_code, finished.reason)
        proposal = propose_from(finished.proposal)
        block = proposal.block
        problem = None
        if job.state == "done":  # (paid in a task session's group meanwhile)
            problem = "this job was settled already"
        elif results.result_hash(verdict, finished.outputs) != finished.result_hash:
            problem = "the announced result does not hash to the signed hash"
        elif block.transaction.result_hash != finished.result_hash:
            problem = "the proposal signs another result than the one announced"
        elif block.public_key != identity.public_bytes_from_peer_id(worker):
            problem = "the proposal is not signed by the worker"
        elif block.transaction.job_id != job.job_id:
            problem = "the proposal is for another job"
        elif sum(f.size for f in finished.outputs) > MAX_RESULT_BYTES:
            problem = "the result is larger than this node accepts"
        elif not results.safe_layout(finished.outputs):
            problem = "the result's files are not stdout, stderr and relative output paths"
        role, payees = "fetch", 1
        if problem is None and vote is not None:
            # Wait for the other replicas (they run side by side, within the same limits).
            with trio.fail_after(job.spec.limits.wall_seconds + VOTE_SLACK):
                role, payees = await vote.cast(worker, finished.result_hash)
            if role == "refuse":
                self.untrusted.add(worker)
                await trio.to_thread.run_sync(self.store.distrust, worker, job.job_id, time.time())
                log.warning("job %s: %s was outvoted by the other replicas", job.job_id, worker)
                problem = "outvoted: your result differs from the other replicas' majority"
                await fs.send(jobproto.Settle(answer=encode_message(Refuse(job.job_id, problem))))
                await fs.close()
                return
        if problem is None:
            try:
                answer = await self.ledger.call(
                    lambda: self.ledger.ledger.agree(
                        proposal, job_limits(job.spec), max_payees=payees
                    )
                )
            except RemoteFault as exc:
                problem = str(exc)
        if problem is not None:
            await fs.send(jobproto.Settle(answer=encode_message(Refuse(job.job_id, problem))))
            raise wire.RemoteProtocolError(f"refused to pay: {problem}")
        await fs.send(jobproto.Settle(answer=encode_message(answer)))
        # Paid CPU-seconds add up over the replicas paid; `cpu_seconds` showed the live figure of
        # progress reports until now, so it is set from the sum, not added to.
        job.credit += block.transaction.cpu_ms / 1000
        job.cpu_seconds = job.credit
        job.claim = job.job_id
        if role == "pay":  # a replica that agreed with the winner: paid, its copy not needed
            await fs.close()
            return
        out_dir = self.jobs_dir / job.job_id
        incoming = transfer.Incoming(finished.outputs, out_dir / ".partial")
        try:
            paths = await transfer.receive(
                fs, incoming, jobproto.OutputChunk, jobproto.OutputDone, LEASE
            )
        except (StreamGone, wire.RemoteProtocolError) as exc:
            raise PaidAwaitingResult(str(exc)) from None
        job.stdout[:], job.stderr[:] = await trio.to_thread.run_sync(
            _store_files, out_dir, finished.outputs, paths
        )
        job.outputs = [e.path for e in finished.outputs[2:]]
        job.exit_code, job.reason = finished.exit_code, finished.reason
        await self._end(job, "done")


def _rideable(job: JobRecord) -> bool:
    """Whether a task session can carry the job: one copy, no files in or out."""
    return job.replicas == 1 and not (job.inputs or job.spec.inputs or job.spec.outputs)


def _keep_output(job: JobRecord, msg: jobproto.Output) -> None:
    """Live output of a running job, kept up to MAX_KEPT_OUTPUT per stream."""
    buf = job.stdout if msg.stream == "stdout" else job.stderr
    if len(buf) < MAX_KEPT_OUTPUT:
        buf += msg.data[: MAX_KEPT_OUTPUT - len(buf)]
        job.touch()


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _store_files(
    out_dir: Path, entries: tuple[jobproto.FileEntry, ...], paths: list[Path]
) -> tuple[bytes, bytes]:
    """Move the checked files of a job received in `out_dir/.partial` into place."""
    heads = _place_files(out_dir, entries, paths)
    (out_dir / ".partial").rmdir()
    return heads


def _store_group(
    jobs_dir: Path,
    partial: Path,
    tasks: tuple[jobproto.TaskResult, ...],
    entries: tuple[jobproto.FileEntry, ...],
    paths: list[Path],
) -> list[tuple[bytes, bytes]]:
    """Move the checked files of a group, received in `partial`, to their jobs' folders."""
    heads, start = [], 0
    for t in tasks:
        end = start + t.files
        heads.append(_place_files(jobs_dir / t.job_id, entries[start:end], paths[start:end]))
        start = end
    partial.rmdir()
    return heads


def _place_files(
    out_dir: Path, entries: tuple[jobproto.FileEntry, ...], paths: list[Path]
) -> tuple[bytes, bytes]:
    """Move the checked files into place, with a manifest.json (`rain get` re-checks from it);
    the head of stdout and stderr, which `rain logs` shows from memory."""
    names = {results.STDOUT: "stdout", results.STDERR: "stderr"}
    manifest = []
    for entry, path in zip(entries, paths, strict=True):
        name = names.get(entry.path)
        stored = name if name else f"outputs/{entry.path}"
        target = out_dir / stored
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
        manifest.append(
            {"name": name or entry.path, "stored_as": stored, "sha256": entry.sha256.hex()}
        )
    (out_dir / "manifest.json").write_text(json.dumps({"files": manifest}, indent=1))
    return _head(out_dir / "stdout"), _head(out_dir / "stderr")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_KEPT_OUTPUT)
