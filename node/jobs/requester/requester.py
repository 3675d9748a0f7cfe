"""The requester: our jobs, placed on workers, paid for, their results fetched.

`Requester.submit(specs)` stores the jobs and returns at once; a trio task per job then drives
it to its end (done, failed or cancelled), every step bounded:
1. it ranks the workers it knows (signed node records from the membership view, and the CPUs
   of our own jobs each already has; node.jobs.core.scheduler) and offers the job to them one
   at a time until one accepts (node.jobs.requester.offers);
2. it follows the attempt on the job's stream, whose messages pass through the job conversation
   (node.jobs.core.conversation): live output, progress reports (the lease: silence past LEASE
   means the worker is gone, and the job goes to another worker; nothing is paid for a lost
   attempt);
3. it settles the result: checked, countersigned, its files received and kept
   (node.jobs.requester.settle).
A job with `replicas` > 1 runs on that many distinct workers and is decided by vote; jobs
without files, while several are placed at once, ride task sessions
(node.jobs.requester.sessions). A job is on disk (node.jobs.requester.store) from its
submission, and driven again after a restart; a worker that held a result while we were away
offers it through `handle_result`. A job is paid at most once (the ledger's `max_payees`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from ledger.messages import Refuse
from node.jobs import blocking, transfer
from node.jobs.core import pending, scheduler, terms
from node.jobs.core.conversation import (
    Ending,
    Kind,
    RequesterConversation,
    ResultOffered,
)
from node.jobs.core.conversation import State as ConvState
from node.jobs.core.holds import MemberState
from node.jobs.core.pending import Refusal
from node.jobs.requester.offers import (
    GROUP_LEASE,
    LEASE,
    AttemptLost,
    Declined,
    Load,
    Offers,
    OfferSlot,
    PaidAwaitingResult,
    Unreachable,
    close_after,
    lost,
)
from node.jobs.requester.record import QUEUE_LIMIT, JobRecord, JobState
from node.jobs.requester.sessions import TaskSessions
from node.jobs.requester.settle import Settlement, Vote
from node.jobs.requester.store import GroupCommit, JobStore
from node.jobs.stream import JobStream
from node.ledger_link import LedgerLink
from node.units import format_duration
from rainnet import jobproto, wire
from rainnet.streams import FramedStream, ProtocolNotSupported, StreamGone
from sandbox import JobSpec

log = logging.getLogger("rainnet.requester")

MAX_LOST_ATTEMPTS = 6
# No known worker could ever run the job: fail after this (records may be a few seconds old).
HOPELESS_PATIENCE = 2.0
# Replicas that disagree and no worker left to run one more: how long one may still come.
TIEBREAK_PATIENCE = 60.0
DECLINE_PAUSE = 0.2  # after every known worker declined: first pause, doubling...
MAX_DECLINE_PAUSE = 5.0  # ...up to this
MAX_EXTRA_REPLICAS = 2  # runs beyond --replicas to break a disagreement
# Paid for a result whose transfer broke: how long to wait for the worker to offer it again
# (it does at once when it is back) before the job fails and the worker is distrusted.
RESULT_WAIT = 120.0
RESUME_GRACE = 20.0  # after a restart, how long a job that was running waits for its worker
CANCEL_GRACE = 30.0  # a job cancelled at its worker: how long its claim may take to settle
MAX_JOBS_KEPT = 10_000


class Requester:
    def __init__(
        self,
        ledger: LedgerLink,
        candidates: Callable[[], list[scheduler.Candidate]],
        open_stream: Callable[[str, str], Any],
        jobs_dir: Path,
        store: JobStore,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self._candidates = candidates
        self.jobs_dir = jobs_dir
        self.jobs: dict[str, JobRecord] = {}
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random()
        self._saver = GroupCommit(store)
        # Workers whose result was outvoted by replicas: offered no job again (kept in the job
        # store across restarts, for store.UNTRUSTED_FOR).
        self.untrusted: set[str] = set()
        self.offers = Offers(ledger, open_stream)
        self.settlement = Settlement(
            ledger, jobs_dir, store, self._saver, self.untrusted, self._end
        )
        self.sessions = TaskSessions(self.offers, self.settlement, self._saver, candidates)
        # Told when an MPI group's job reports a new state (node.mpi.groups holds the rest of
        # its group while one member's owner is back).
        self.on_member_state: Callable[[JobRecord], None] = lambda job: None
        # Told when a job finds no worker to offer it to among those known: look further (the
        # network looks workers up in the DHT sooner than its next round).
        self.look_further: Callable[[], None] = lambda: None

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Drive jobs until cancelled; first take back the unfinished ones from the store."""
        stored = await blocking.run(self.store.load)
        self.untrusted |= await blocking.run(self.store.untrusted, time.time())
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.sessions.start(nursery)
            for job in stored:
                self.jobs[job.job_id] = job
                if not job.finished.is_set() and job.group_job:
                    # Its group ended with our restart; only a result held for us may come.
                    nursery.start_soon(self._end_group_job, job)
                elif not job.finished.is_set():
                    log.info("job %s: resuming after a restart (was %s)", job.job_id, job.state)
                    # A job that was running, or handed to a task session, may finish where
                    # it ran: its worker holds the result and offers it when we are back. Give
                    # it that chance first.
                    handed = job.state is JobState.OFFERING and job.worker is not None
                    ran = job.state is JobState.RUNNING or handed
                    job.requeue()
                    nursery.start_soon(self._drive, job, RESUME_GRACE if ran else 0.0)
            task_status.started()
            await trio.sleep_forever()

    @property
    def nursery(self) -> trio.Nursery:
        """Where tasks that outlive a control request run (an MPI group's releases)."""
        if self._nursery is None:
            raise RuntimeError("the requester is not running")
        return self._nursery

    async def load_output(self, job: JobRecord) -> None:
        await self.settlement.load_output(job)

    async def submit(
        self,
        specs: list[JobSpec],
        inputs: tuple[tuple[jobproto.FileEntry, Path], ...] = (),
        replicas: int = 1,
        name: str | None = None,
        queue_limit: float = QUEUE_LIMIT,
        array: Sequence[int] | None = None,
        array_id: str | None = None,
    ) -> list[JobRecord]:
        """Accept jobs from the local user: on disk, in one transaction, before this returns;
        then driven. With `array` (an index per spec), they are the tasks of one array (sharing
        their inputs), `ID_INDEX` each: of a new array, or of `array_id` (more of it). Each job
        sees its id (RAIN_JOB_ID) and a task its array's and its index."""
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
            await blocking.run(self.store.forget_all, [j.job_id for j in done])
        if array is not None and len(array) != len(specs):
            raise ValueError("an array needs one index per task")
        if array_id is not None and not any(j.array_id == array_id for j in self.jobs.values()):
            raise ValueError(f"no array {array_id!r} here to add tasks to")
        base = array_id or secrets.token_hex(8)
        if array is not None:
            ids = [f"{base}_{i}" for i in array]
        else:  # jobs of their own
            ids = [base, *(secrets.token_hex(8) for _ in specs[1:])]
        if len(set(ids)) != len(ids) or any(i in self.jobs for i in ids):
            raise ValueError("an array's task indices must be new and distinct")
        jobs = [
            JobRecord(
                job_id=job_id,
                spec=_with_ids(spec, job_id),
                inputs=tuple(e for e, _ in inputs),
                input_sources=tuple(p for _, p in inputs),
                replicas=replicas,
                name=name,
                queue_limit=queue_limit,
                pending="looking for a worker",
            )
            for spec, job_id in zip(specs, ids, strict=True)
        ]
        await self._saver.save_now(jobs)
        for job in jobs:
            self.jobs[job.job_id] = job
            self._nursery.start_soon(self._drive, job)
        return jobs

    async def submit_to(
        self,
        spec: JobSpec,
        worker: str,
        inputs: tuple[tuple[jobproto.FileEntry, Path], ...] = (),
        job_id: str | None = None,
        name: str | None = None,
    ) -> JobRecord:
        """One job for `worker` only, attempted once: an MPI group's member job (node.mpi),
        whose ranks cannot move elsewhere. Declined, unreachable or lost, it fails saying so.
        `job_id`: its id (an MPI group's members are tasks GROUP_I of the group's id), if not
        one of its own."""
        if self._nursery is None:
            raise RuntimeError("the requester is not running")
        job_id = job_id or secrets.token_hex(8)
        if job_id in self.jobs:
            raise ValueError(f"job {job_id} exists already")
        job = JobRecord(
            job_id=job_id,
            spec=spec,
            inputs=tuple(e for e, _ in inputs),
            input_sources=tuple(p for _, p in inputs),
            name=name,
        )
        await self._saver.save_now([job])
        self.jobs[job.job_id] = job
        self._nursery.start_soon(self._drive_at, job, worker)
        return job

    async def _drive_at(self, job: JobRecord, worker: str) -> None:
        with trio.CancelScope() as scope:
            self._cancel_on_request(job, scope)
            why: str | None = None
            try:
                await self._attempt(job, worker)
            except (Declined, Unreachable) as exc:
                why = f"{worker[-8:]} did not take it: {exc}"
            except PaidAwaitingResult as exc:
                with trio.move_on_after(RESULT_WAIT):
                    await job.finished.wait()
                why = f"paid {worker[-8:]}, which has not delivered the result ({exc})"
            except AttemptLost as exc:
                why = f"lost {worker[-8:]}: {exc}"
                if job.worker_state in (MemberState.SUSPENDED.value, MemberState.GIVEN_UP.value):
                    # Its stream ended while its worker's owner held it frozen: given up.
                    why = f"given up by {worker[-8:]}: its owner came back and stayed ({exc})"
            except Exception as exc:
                log.exception("job %s failed", job.job_id)
                why = f"{type(exc).__name__}: {exc}"
            if not job.finished.is_set():
                await self._end(job, JobState.FAILED, why or f"{worker[-8:]} gave no result")
        if job.cancel.is_set():
            await self._end(job, JobState.CANCELLED, None)

    async def _end_group_job(self, job: JobRecord) -> None:
        job.requeue()
        with trio.move_on_after(RESUME_GRACE):
            await job.finished.wait()
        await self._end(job, JobState.FAILED, "its MPI group ended when this node restarted")

    # ----- driving a job to its end -----------------------------------------------------------

    async def _drive(self, job: JobRecord, grace: float = 0.0) -> None:
        """Run the job to its end: one lane, or one per replica (each on a distinct worker),
        plus one more lane each time the replicas' results disagree."""
        with trio.CancelScope() as scope:
            self._cancel_on_request(job, scope)
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
                await self._end(job, JobState.FAILED, f"{type(exc).__name__}: {exc}")
            if not job.finished.is_set():
                await self._end(job, JobState.FAILED, job.error or "no worker completed it")
        if job.cancel.is_set():
            await self._end(job, JobState.CANCELLED, None)

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
                # Ended once every run is paid (the lanes all return), not cancelled midway.
                job.error = vote.tally.differ_message(vote.results)

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
        """Offer the job until a worker runs it to the end, saying meanwhile why it waits
        (node.jobs.core.pending). Declines (busy workers) only delay it; attempts lost mid-run
        count against MAX_LOST_ATTEMPTS; a job no known worker could ever run fails after
        HOPELESS_PATIENCE, and none waits for a worker past its queue limit."""
        needs = terms.needs(job.spec)
        tried: set[str] = set()
        declined: dict[str, Refusal] = {}  # each worker's last decline of this job
        lost_attempts = 0
        queued_at = trio.current_time()
        hopeless_since: float | None = None
        tie_since: float | None = None
        pause = DECLINE_PAUSE
        while lost_attempts < MAX_LOST_ATTEMPTS:
            known = self._candidates()
            exclude = tried | self.offers.shunned() | self.untrusted | (used if vote else set())
            ranked = scheduler.rank_workers(
                known, needs, exclude=exclude, committed=self.offers.committed
            )
            if not ranked:
                self.look_further()
                records = [c.record for c in known]
                now = trio.current_time()
                if (
                    vote is not None
                    and len(vote.results) >= job.replicas
                    and not any(r.peer_id not in used and pending.fits(r, needs) for r in records)
                ):
                    # A run to break the tie needs a worker not used yet: one may still come.
                    tie_since = tie_since or now
                    if now - tie_since > TIEBREAK_PATIENCE:
                        vote.undecidable()
                        return
                    job.wait_for("results differ: waiting for another worker to break the tie")
                    await trio.sleep(MAX_DECLINE_PAUSE)
                    continue
                waiting = pending.explain(records, needs, declined, self.untrusted)
                job.wait_for(waiting.text)
                hopeless_since = (hopeless_since or now) if waiting.hopeless else None
                if hopeless_since is not None and now - hopeless_since > HOPELESS_PATIENCE:
                    await self._end(job, JobState.FAILED, waiting.text)
                    return
                if now - queued_at > job.queue_limit:
                    waited = format_duration(job.queue_limit)
                    await self._end(
                        job, JobState.FAILED, f"waited {waited} (its queue limit): {waiting.text}"
                    )
                    return
                tried.clear()  # everyone said no: ask again after a pause
                await trio.sleep(pause * (0.5 + self._rng.random()))
                pause = min(pause * 2, MAX_DECLINE_PAUSE)
                continue
            worker = ranked[0].peer_id
            tried.add(worker)
            used.add(worker)
            before = declined.get(worker)  # (said again while it is asked again: the news)
            job.wait_for(
                f"offered to worker {worker[-8:]} again (it declined: {before.said()})"
                if before
                else f"offered to worker {worker[-8:]} (it starts it when it has room, or declines)"
            )
            try:
                await self._attempt(job, worker, vote)
                return
            except Declined as exc:
                declined.pop(worker, None)  # (the latest last: it is the one shown)
                declined[worker] = exc.refusal
                used.discard(worker)
                job.requeue()
            except Unreachable as exc:
                log.info("job %s: %s unreachable: %s", job.job_id, worker, exc)
                self.offers.shun(worker)
                used.discard(worker)
                job.requeue()
            except PaidAwaitingResult as exc:
                log.warning(
                    "job %s: paid %s, result not received (%s); waiting", job.job_id, worker, exc
                )
                with trio.move_on_after(RESULT_WAIT):
                    await job.finished.wait()
                if not job.finished.is_set():
                    why = f"paid, but it withheld the result for {RESULT_WAIT:.0f} s"
                    await self.settlement.distrust(worker, job.job_id, why)
                    await self._end(
                        job,
                        JobState.FAILED,
                        f"paid {worker[-8:]}, which has not delivered the result (it is "
                        "untrusted until it does; the job is done if it still comes)",
                    )
                return
            except AttemptLost as exc:
                lost_attempts += 1
                log.warning("job %s lost on %s: %s; trying another worker", job.job_id, worker, exc)
                job.requeue()
                pause = DECLINE_PAUSE
        await self._end(job, JobState.FAILED, f"gave up: lost on {lost_attempts} workers")

    def _cancel_on_request(self, job: JobRecord, scope: trio.CancelScope) -> None:
        async def watch() -> None:
            await job.cancel.wait()
            if job.state in (JobState.RUNNING, JobState.SETTLING) and not job.finished.is_set():
                # At a worker: it stops the job and claims what it used, which the attempt
                # settles (a cancel buys no free work); cut it off only if that takes too long.
                scope.deadline = min(scope.deadline, trio.current_time() + CANCEL_GRACE)
            else:
                scope.cancel()

        assert self._nursery is not None
        self._nursery.start_soon(watch)

    async def _end(self, job: JobRecord, state: JobState, error: str | None = None) -> None:
        if job.finished.is_set():
            return
        job.state, job.error, job.ended = state, error, time.time()
        with trio.CancelScope(shield=True):  # a cancelled job's end is recorded all the same
            await self._saver.save(job)
        job.finished.set()
        job.touch()
        job.cancel.set()  # releases the cancel watcher
        log.info("job %s %s%s", job.job_id, state, f": {error}" if error else "")
        if job.group_job:
            self.on_member_state(job)

    # ----- one attempt ------------------------------------------------------------------------

    async def _attempt(self, job: JobRecord, worker: str, vote: Vote | None = None) -> None:
        # Offers in flight are bounded (node.jobs.requester.offers); the slot is held from the
        # offer until the worker answers it, not while the job runs.
        load = self.offers.load(worker, job.spec.limits.cpus)
        rideable = vote is None and job.rideable
        self.sessions.placing += rideable
        ride = rideable and self.sessions.should_ride(job, worker)
        slot = self.offers.slot(worker, ride)
        try:
            await slot.acquire()
            if job.finished.is_set():  # (settled meanwhile: a result held for us came back)
                return
            if ride:
                await self.sessions.ride(job, worker, slot, load)
            else:
                await self._offer_and_run(job, worker, vote, slot, load)
        finally:
            self.sessions.placing -= rideable
            slot.release()
            load.release()

    async def _offer_and_run(
        self, job: JobRecord, worker: str, vote: Vote | None, slot: OfferSlot, load: Load
    ) -> None:
        job.attempts += 1
        job.state, job.worker = JobState.OFFERING, worker
        try:
            stream = await self.offers.open(worker, Kind.JOB)
        except Unreachable:
            job.attempts -= 1
            raise
        try:
            await self._converse(job, worker, stream, vote, slot, load)
        except PaidAwaitingResult:
            raise
        except ProtocolNotSupported as exc:  # it does not take jobs (any more): nothing lost
            job.attempts -= 1
            raise Unreachable(str(exc)) from None
        except (StreamGone, wire.RemoteProtocolError, trio.TooSlowError) as exc:
            if stream.gone() is Ending.PAID_AWAITING_RESULT:
                raise PaidAwaitingResult(str(exc)) from None
            raise lost(exc) from None
        finally:
            await close_after(stream, job.finished.is_set(), job.cancel.is_set())

    async def _converse(
        self,
        job: JobRecord,
        worker: str,
        stream: JobStream,
        vote: Vote | None,
        slot: OfferSlot,
        load: Load,
    ) -> None:
        await self.offers.offer(
            stream, worker, job.job_id, job.attempts, job.spec_bytes, job.inputs
        )
        seen_from = trio.current_time()  # what a claim is checked against (overcharging)
        if job.accepted_at is None:
            job.accepted_at = seen_from
        slot.release()
        job.state, job.started, job.pending = JobState.RUNNING, time.time(), None
        job.accepted_by.add(worker)
        await self._saver.save(job)  # after a restart: wait for this worker's held result first

        async def send_chunk(index: int, offset: int, data: bytes) -> None:
            await stream.send(jobproto.InputChunk(index=index, offset=offset, data=data))

        if job.inputs:  # (without inputs the worker starts the job at once)
            await transfer.send(send_chunk, job.input_sources)
            await stream.send(jobproto.InputDone())

        # Its owner may cancel it meanwhile: the Cancel goes out beside our reading (and the
        # worker's claim for what the job used comes back as its result).
        watch = trio.CancelScope()

        async def cancel_on_request() -> None:
            with watch, contextlib.suppress(StreamGone):
                if job.group_job:
                    await self._hold_until_cancelled(job, stream)
                else:
                    await job.cancel.wait()
                await stream.send(jobproto.Cancel(reason="cancelled by its owner"))

        assert self._nursery is not None
        self._nursery.start_soon(cancel_on_request)
        lease = GROUP_LEASE if job.group_job else LEASE
        try:
            while True:
                event = await stream.receive(lease)
                if isinstance(event, jobproto.Progress):
                    job.cpu_seconds = event.cpu_seconds
                    if job.reported(event.state) and job.group_job:
                        self.on_member_state(job)
                elif isinstance(event, jobproto.Output):
                    job.keep_output(event)
                else:
                    assert isinstance(event, ResultOffered)  # (the conversation allows no other)
                    break
        finally:
            watch.cancel()
        load.release()  # the job has ended there: its CPUs are free for the next
        seen = trio.current_time() - seen_from
        await self.settlement.job(job, worker, stream, event, vote, seen)

    async def _hold_until_cancelled(self, job: JobRecord, stream: JobStream) -> None:
        """A group job's holds go out as its group asks (`on_member_state`), until it is
        cancelled (or ends)."""

        async def send_holds() -> None:
            sent = False
            while True:
                changed = job.changed
                # (Only while it runs: once its result is offered a hold means nothing.)
                if job.hold != sent and stream.conv.state is ConvState.RUNNING:
                    sent = job.hold
                    why = "another member of its MPI group is suspended" if sent else ""
                    await stream.send(jobproto.Hold(on=sent, reason=why))
                await changed.wait()

        async with trio.open_nursery() as n:
            n.start_soon(send_holds)
            await job.cancel.wait()
            n.cancel_scope.cancel()

    # ----- results held for us ------------------------------------------------------------------

    async def handle_result(self, raw: Any) -> None:
        """A worker offers a result it held while we were away (rainnet.jobproto.RESULT):
        settle it like the end of a job stream, unless the job is done already or gone."""
        fs = FramedStream(raw, jobproto.TO_REQUESTER, jobproto.JOB_MAX_FRAME)
        stream = JobStream(fs, RequesterConversation(Kind.HELD, self.ledger.public_key))
        worker = stream.remote_peer
        event = await stream.receive_a(ResultOffered, LEASE)
        claim_id = event.proposal.block.transaction.job_id
        if event.finished.tasks:
            await self._held_group(worker, stream, event, claim_id)
            return
        job = self.jobs.get(claim_id)
        if job is None or not _owes_held(job, worker):
            why = "no such job here" if job is None else "no result of yours is owed for this job"
            await stream.settle(Refuse(claim_id, why))
            await stream.close()
            return
        log.info("job %s: %s offers the result it held for us", claim_id, worker)
        job.worker = worker
        try:
            await self.settlement.job(job, worker, stream, event, None, job.seen_running())
        finally:
            await stream.close()

    async def _held_group(
        self, worker: str, stream: JobStream, event: ResultOffered, claim_id: str
    ) -> None:
        """A group of a task session held for us: paid only if every task in it is a job of
        ours that this worker ran and that nobody was paid for since."""
        jobs = {t.job_id: self.jobs.get(t.job_id) for t in event.finished.tasks}
        mine = {j: job for j, job in jobs.items() if job is not None and _owes_held(job, worker)}
        if len(mine) != len(jobs):
            why = "no result of yours is owed for some jobs of this group"
            await stream.settle(Refuse(claim_id, why))
            await stream.close()
            return
        log.info("%s offers the results of %d jobs it held for us", worker, len(mine))
        for job in mine.values():  # (requeued meanwhile, each names no worker now)
            job.worker = worker
        try:
            seen = {j: job.seen_running() for j, job in mine.items()}
            conclude = await self.settlement.group(worker, stream, event, mine, seen)
        finally:
            await stream.close()
        await conclude()


def _owes_held(job: JobRecord, worker: str) -> bool:
    """Whether a result `worker` held for us is one we owe: of a job of one copy it ran, not
    settled since, and unfinished; or cancelled by us (or an MPI group's, failed) before it was
    paid (what it used is owed); or paid to it, and failed for want of its files (they come at
    last)."""
    if job.replicas > 1 or job.settling or worker not in job.accepted_by:
        return False
    if not job.finished.is_set():
        return True
    if job.state is JobState.CANCELLED:
        return job.claim is None
    if job.state is JobState.FAILED and job.claim is None and job.group_job:
        # A group job fails when its group ends without it (we went away, or restarted): its
        # worker ended it for us, and what its ranks used until then is owed.
        return True
    return job.state is JobState.FAILED and job.claim == job.job_id and job.worker == worker


def _with_ids(spec: JobSpec, job_id: str) -> JobSpec:
    """The spec with the job's ids in its environment, as Slurm's SLURM_JOB_ID and
    SLURM_ARRAY_TASK_ID: RAIN_JOB_ID, and for a task RAIN_ARRAY_JOB_ID and RAIN_ARRAY_TASK_ID."""
    env = {**spec.env_dict, "RAIN_JOB_ID": job_id}
    array_id, _, index = job_id.partition("_")
    if index:
        env |= {"RAIN_ARRAY_JOB_ID": array_id, "RAIN_ARRAY_TASK_ID": index}
    return dataclasses.replace(spec, env=tuple(sorted(env.items())))


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
