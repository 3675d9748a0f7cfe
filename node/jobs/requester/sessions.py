"""The requester's task sessions (`/rain/tasks`): many small jobs to one worker on one stream.

Jobs without files and with one copy, while several are being placed at once (an array), ride a
session instead of a stream each (node.jobs.worker.sessions is the worker's end). A session runs
jobs of one shape (image, CPUs, memory, GPUs), one after another in a slot of the worker's; we
open up to as many as the worker's record has slots for that shape. Quick tasks go several to a
message; up to jobproto.MAX_GROUP claimed tasks are paid by one exchange, whose id each job
records (`claim`), after each task's result is checked (node.jobs.requester.settle). A session
lost mid-way loses only its unsettled tasks' attempts (they run elsewhere; nothing is paid for
them); one lost after paying waits for the worker to deliver the held group.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from node.jobs.core import scheduler, terms
from node.jobs.core.conversation import Kind, ResultOffered, State
from node.jobs.requester.offers import (
    LEASE,
    AttemptLost,
    Declined,
    Load,
    Offers,
    OfferSlot,
    PaidAwaitingResult,
    Unreachable,
    lost,
    remember,
)
from node.jobs.requester.record import JobRecord, JobState
from node.jobs.requester.settle import Settlement
from node.jobs.requester.store import GroupCommit
from node.jobs.stream import JobStream
from rainnet import jobproto, wire
from rainnet.streams import ProtocolNotSupported, StreamGone

log = logging.getLogger("rainnet.requester")

# Task sessions carry jobs without files, one copy each, while at least this many such jobs are
# being placed at once: a lone job keeps its own stream, live to the end.
SESSION_BACKLOG = 2
SESSION_LINGER = 0.5  # a session with no job waiting this long is closed
QUICK_TASK = 0.25  # tasks quicker than this (seconds each) go several to a message
MAX_SESSION_LOCKS = 128


@dataclass
class Ride:
    """One job's attempt through a task session: handed to its driver, then told how it ended
    (`error` None: done, paid and its result stored)."""

    job: JobRecord
    load: Load
    ended: trio.Event = field(default_factory=trio.Event)
    seen_running: float = 0.0  # how long its batch took: what its claim is checked against
    error: Exception | None = None

    def end(self, error: Exception | None = None) -> None:
        if not self.ended.is_set():
            self.error = error
            self.ended.set()


class _Session:
    """Our end of one task session: a stream to `worker` running jobs of `shape`, one at a
    time; jobs wait to be taken on an unbuffered channel (each within RIDES_PER_WORKER)."""

    def __init__(self, worker: str, shape: terms.Shape, stream: JobStream) -> None:
        self.worker, self.shape, self.stream = worker, shape, stream
        self.rides_in, self.rides = trio.open_memory_channel[Ride](0)
        self.waiting = 0  # jobs waiting to be taken
        self.closing = False
        self.batch_limit = 1  # jobs handed over in one message (see _run)
        self.carried: list[Ride] = []  # taken, handed over in the next message


class TaskSessions:
    def __init__(
        self,
        offers: Offers,
        settlement: Settlement,
        saver: GroupCommit,
        candidates: Callable[[], list[scheduler.Candidate]],
    ) -> None:
        self._offers = offers
        self._settlement = settlement
        self._saver = saver
        self._candidates = candidates
        self._sessions: dict[tuple[str, terms.Shape], list[_Session]] = {}
        self._locks: dict[str, trio.Lock] = {}  # one session opened at a time per worker
        self.placing = 0  # jobs that could ride a session, being placed now: the backlog
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def should_ride(self, job: JobRecord, worker: str) -> bool:
        """Whether the job (rideable, and counted in `placing`) goes to `worker` by a session:
        one is open for its shape there, or enough such jobs are being placed at once."""
        return worker not in self._offers.no_sessions and bool(
            self.placing >= SESSION_BACKLOG or self._sessions.get((worker, terms.shape(job.spec)))
        )

    async def ride(self, job: JobRecord, worker: str, slot: OfferSlot, load: Load) -> None:
        """Run the job through a task session to `worker` (one of ours with room for it, or a
        new one): it waits to be taken, holding its offer slot, then for its group's end."""
        ride = Ride(job, load)
        # On disk before the worker may hold a result for it (accepted_by, after a restart),
        # and written with the other jobs waiting for a session meanwhile (GroupCommit).
        job.state, job.worker = JobState.OFFERING, worker
        job.accepted_by.add(worker)
        await self._saver.save(job)
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

    async def _session_for(self, worker: str, job: JobRecord) -> _Session:
        """A session of ours to `worker` for jobs like this one with nobody waiting on it, or
        the least waited-on once there are as many as the worker has slots for such jobs."""
        key = (worker, terms.shape(job.spec))
        lock = self._locks.get(worker)
        if lock is None:
            if len(self._locks) > MAX_SESSION_LOCKS:
                self._locks = {w: k for w, k in self._locks.items() if k.locked()}
            lock = self._locks[worker] = trio.Lock()
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
            session = await self._open(worker, job)
            self._sessions.setdefault(key, []).append(session)
            assert self._nursery is not None
            self._nursery.start_soon(self._run, session)
            return session

    async def _open(self, worker: str, job: JobRecord) -> _Session:
        """Offer a session for jobs shaped like `job` (Declined, or Unreachable: nothing ran)."""
        stream = await self._offers.open(worker, Kind.SESSION)
        try:
            await self._offers.offer(stream, worker, secrets.token_hex(8), 1, job.spec_bytes, ())
        except Declined:
            raise
        except ProtocolNotSupported:
            # A worker of an older version: its jobs go one by one (see Requester._attempt).
            remember(self._offers.no_sessions, worker, True)
            with trio.CancelScope(shield=True):
                await stream.reset()
            raise Declined("it takes no task sessions") from None
        except (StreamGone, wire.RemoteProtocolError, trio.TooSlowError) as e:
            with trio.CancelScope(shield=True):
                await stream.reset()
            raise Unreachable(f"task session: {e}") from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.reset()
            raise
        return _Session(worker, terms.shape(job.spec), stream)

    async def _run(self, session: _Session) -> None:
        """Drive one session: hand it the waiting jobs (several to a message while its tasks
        are quick), and collect and settle its claimed tasks when MAX_GROUP are claimed or no
        job waits; close it when idle, declined or broken (the jobs in it then go elsewhere;
        nothing is paid for a lost attempt)."""
        claimed: list[Ride] = []
        batch: list[Ride] = []
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
                claimed += await self._batch(session, batch)
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
                ride.end(lost(exc))
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
                await session.stream.close()

    async def _handover(self, session: _Session, room: int, claimed: list[Ride]) -> list[Ride]:
        """The jobs to hand over next: those waiting, up to the session's batch limit, `room`
        and one frame of specs; with nothing claimed, the next to come within SESSION_LINGER."""
        batch: list[Ride] = []
        size = 0
        limit = min(session.batch_limit, room)
        while len(batch) < limit and not session.closing:
            ride: Ride | None = None
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

    async def _batch(self, session: _Session, rides: list[Ride]) -> list[Ride]:
        """Run these jobs as the session's next tasks; those claimed (they end with their
        group's settlement). The others have ended: cancelled, declined, or given up there."""
        stream = session.stream
        for ride in rides:
            if ride.job.cancel.is_set():
                ride.end(Declined("cancelled"))
        rides = [r for r in rides if not r.job.cancel.is_set()]
        if not rides:
            return []
        tasks = tuple(jobproto.Task(r.job.job_id, r.job.spec_bytes) for r in rides)
        await stream.send(jobproto.Tasks(tasks=tasks))
        sent_at = trio.current_time()
        for ride in rides:
            job = ride.job
            job.attempts += 1
            if job.accepted_at is None:
                job.accepted_at = sent_at
            job.state, job.started, job.worker = JobState.RUNNING, time.time(), session.worker
        # Their owner may cancel them meanwhile: the Cancel goes out beside our reading.
        watches = [trio.CancelScope() for _ in rides]

        async def cancel_on_request(job: JobRecord, watch: trio.CancelScope) -> None:
            with watch, contextlib.suppress(StreamGone):
                await job.cancel.wait()
                # (Checked and sent in one step: once its batch is done, a task is not out.)
                if stream.conv.state is State.RUNNING and job.job_id in stream.conv.batch:
                    await stream.send(
                        jobproto.Cancel(reason="cancelled by its owner", job_id=job.job_id)
                    )

        assert self._nursery is not None
        for ride, watch in zip(rides, watches, strict=True):
            self._nursery.start_soon(cancel_on_request, ride.job, watch)
        lone = rides[0].job if len(rides) == 1 else None
        try:
            while True:
                msg = await stream.receive(LEASE)
                if isinstance(msg, jobproto.Progress):
                    if lone is not None:
                        lone.cpu_seconds = msg.cpu_seconds
                elif isinstance(msg, jobproto.Output):
                    assert lone is not None  # (the conversation refuses a batch's live output)
                    lone.keep_output(msg)
                else:
                    assert isinstance(msg, jobproto.TasksDone)
                    break
        finally:
            for watch in watches:
                watch.cancel()
        claimed = []
        for ride, done in zip(rides, msg.done, strict=True):
            ride.seen_running = trio.current_time() - sent_at
            ride.load.release()  # its CPUs there are free for the next
            # (A job may have ended meanwhile: a result held for us from before a restart, or
            # its owner's cancel. Its state stays; a group with a job paid for is refused.)
            unended = not ride.job.finished.is_set()
            if done.claimed:
                if unended:
                    ride.job.state = JobState.SETTLING
                claimed.append(ride)
            elif done.declined:
                session.closing = True  # no more tasks: collect what is claimed, then close
                if unended:
                    ride.job.requeue()
                ride.end(Declined(done.declined))
            else:
                ride.end(AttemptLost("the worker gave the task up"))
        return claimed

    async def _collect(self, session: _Session, claimed: list[Ride]) -> None:
        await session.stream.send(jobproto.Collect())
        event = await session.stream.receive_a(ResultOffered, LEASE)
        jobs = {r.job.job_id: r.job for r in claimed}
        seen = {r.job.job_id: r.seen_running for r in claimed}
        conclude = await self._settlement.group(session.worker, session.stream, event, jobs, seen)

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
