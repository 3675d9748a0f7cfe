"""Offering a job (or a task session) to a worker: the bounds on offers in flight, what we know
of each worker we offer to, and the offer itself up to the worker's answer.

An offer carries the blocks of our chain the worker has not verified yet as far as we know (it
says how far it holds our chain in each Accept), so it rarely has to ask; pages it asks for
anyway are served on the job stream until it answers. Offers in flight are bounded overall and
per worker (each costs the worker a chain check): a thousand queued jobs must not become a
thousand streams at once. A worker we could not reach is left alone for a while by every job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from ledger.messages import ChainRequest, encode_message
from node.jobs.core.conversation import ChainAsked, Kind, RequesterConversation
from node.jobs.core.pending import Refusal
from node.jobs.stream import JobStream
from node.ledger_link import LedgerLink, frame
from rainnet import jobproto, wire
from rainnet.jobproto import DeclineKind
from rainnet.streams import FramedStream, ProtocolNotSupported, StreamGone

LEASE = 15.0  # a worker silent this long has lost the job (it reports every 2 s)
# ...and an MPI group's member: its whole group waits on it, and must end within 10 s of it
# vanishing without a word (node.mpi).
GROUP_LEASE = 6.0
# The worker answers an offer within this: its checks (a checking slot and our chain's
# verification, 30 s in all) and its wait for capacity (10 s) come first.
ACCEPT_TIMEOUT = 90.0
MAX_OFFERS_IN_FLIGHT = 32  # offers awaiting an answer, all workers together
OFFERS_PER_WORKER = 4  # ...and to any one worker
RIDES_PER_WORKER = 2 * jobproto.MAX_BATCH  # jobs waiting for task sessions to one worker
UNREACHABLE_PAUSE = 5.0  # a worker we could not reach is skipped this long, by every job
OFFERED_BLOCKS = 16  # at most this many blocks of our chain go with an offer
MAX_WORKERS_REMEMBERED = 4096  # per-worker hints kept (see remember)
T = TypeVar("T")


class AttemptLost(Exception):
    """The worker vanished or broke the protocol mid-job: try another (nothing is paid)."""


class Unreachable(Exception):
    """The worker could not be reached at all (nothing was offered, nothing lost)."""


class PaidAwaitingResult(StreamGone):
    """We countersigned the result, then its files did not arrive: the worker holds them and
    offers them again (jobproto.RESULT); running the job elsewhere would only be unpaid work."""


class Declined(Exception):
    """The worker would not take the job (its reason, and what it is about)."""

    def __init__(self, text: str, kind: DeclineKind = DeclineKind.OTHER) -> None:
        super().__init__(text)
        self.refusal = Refusal(kind, text)


def remember(table: dict[str, T], worker: str, hint: T) -> None:
    """Note a hint about a worker, forgetting the oldest beyond MAX_WORKERS_REMEMBERED: many
    peers must not grow it without bound, and a hint forgotten costs a round trip at most."""
    table.pop(worker, None)
    table[worker] = hint
    while len(table) > MAX_WORKERS_REMEMBERED:
        del table[next(iter(table))]


class OfferSlot:
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


class Load:
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


class Offers:
    """Offers to workers, and what we learnt of each worker on the way."""

    def __init__(self, ledger: LedgerLink, open_stream: Callable[[str, str], Any]) -> None:
        self.ledger = ledger
        self._open_stream = open_stream
        self._offering = trio.Semaphore(MAX_OFFERS_IN_FLIGHT)
        self._worker_offers: dict[str, trio.Semaphore] = {}
        self._worker_rides: dict[str, trio.Semaphore] = {}
        self.unreachable: dict[str, float] = {}  # worker -> until when not to try it
        self.no_sessions: dict[str, bool] = {}  # workers that take no task sessions
        # CPUs of our jobs offered to or running on each worker: what ranking spreads jobs by.
        self.committed: dict[str, float] = {}
        # How far each worker holds our chain verified (from its Accepts): what to send along.
        self.chain_known: dict[str, int] = {}

    # ----- bounds -----------------------------------------------------------------------------

    def slot(self, worker: str, ride: bool) -> OfferSlot:
        """The bounds an offer to `worker` waits in. The worker's own first: jobs queued for a
        busy worker must not hold global slots that offers to idle workers need. A job for a
        task session waits within a bound of its own per worker (it opens no stream: one
        session's offer stands for all of them)."""
        if ride:
            return OfferSlot(self._per_worker(self._worker_rides, worker, RIDES_PER_WORKER))
        per_worker = self._per_worker(self._worker_offers, worker, OFFERS_PER_WORKER)
        return OfferSlot(per_worker, self._offering)

    def load(self, worker: str, cpus: float) -> Load:
        return Load(self.committed, worker, cpus)

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

    def shun(self, worker: str) -> None:
        """Probably gone (its heartbeats will tell): leave it alone for a while."""
        remember(self.unreachable, worker, trio.current_time() + UNREACHABLE_PAUSE)

    def shunned(self) -> set[str]:
        now = trio.current_time()
        self.unreachable = {w: until for w, until in self.unreachable.items() if until > now}
        return set(self.unreachable)

    # ----- the offer --------------------------------------------------------------------------

    async def open(self, worker: str, kind: Kind) -> JobStream:
        """A new job stream (or task session) to `worker`; Unreachable if it cannot be had."""
        protocol = jobproto.TASKS if kind is Kind.SESSION else jobproto.JOB
        try:
            stream = await self._open_stream(worker, protocol)
        except StreamGone as exc:
            raise Unreachable(str(exc)) from None
        fs = FramedStream(stream, jobproto.TO_REQUESTER, jobproto.JOB_MAX_FRAME)
        return JobStream(fs, RequesterConversation(kind, self.ledger.public_key))

    async def offer(
        self,
        stream: JobStream,
        worker: str,
        job_id: str,
        attempt: int,
        spec: bytes,
        inputs: tuple[jobproto.FileEntry, ...],
    ) -> jobproto.Accept:
        """Offer on `stream` and follow the conversation to the worker's answer, serving the
        pages of our chain it asks for on the way; its Accept, or Declined (the stream is then
        closed)."""
        await stream.send(
            jobproto.Offer(
                job_id=job_id,
                attempt=attempt,
                spec=spec,
                inputs=inputs,
                lease_seconds=LEASE,
                chain=await self._recent_chain(worker),
            )
        )
        with trio.fail_after(ACCEPT_TIMEOUT):
            while True:
                event = await stream.receive(ACCEPT_TIMEOUT)
                if not isinstance(event, ChainAsked):
                    break
                await stream.send(frame(await self.ledger.serve_chain(event.request)))
        if isinstance(event, jobproto.Decline):
            await stream.close()
            raise Declined(event.reason, event.kind)
        assert isinstance(event, jobproto.Accept)  # (the conversation allows nothing else)
        remember(self.chain_known, worker, event.chain_verified)
        return event

    async def _recent_chain(self, worker: str) -> bytes:
        """The blocks of our chain this worker has not verified yet as far as we know (it told
        us in its last Accept), as a ledger ChainPage to send with the offer; empty if we do not
        know or they are too many (it then asks for what it lacks on the job stream)."""
        since = self.chain_known.get(worker)
        if since is None:
            return b""
        page = await self.ledger.serve_chain(
            ChainRequest(self.ledger.public_key, since, OFFERED_BLOCKS)
        )
        return b"" if page.more else encode_message(page)


async def close_after(stream: JobStream, job_done: bool, cancelled: bool) -> None:
    """End an attempt's stream: closed when the job is done (py-libp2p keeps a stream, and its
    slot in the resource manager, until both ends close it); otherwise reset, after telling the
    worker its job is cancelled if it is."""
    with trio.CancelScope(shield=True):
        if job_done:
            await stream.close()
            return
        if cancelled and not stream.conv.ended:
            with trio.move_on_after(2), contextlib.suppress(StreamGone, wire.LocalProtocolError):
                await stream.send(jobproto.Cancel(reason="cancelled by its owner"), 2)
        await stream.reset()


def lost(exc: BaseException) -> AttemptLost:
    return AttemptLost(str(exc) or type(exc).__name__)


__all__ = [
    "AttemptLost",
    "Declined",
    "Load",
    "OfferSlot",
    "Offers",
    "PaidAwaitingResult",
    "ProtocolNotSupported",
    "Unreachable",
    "close_after",
    "lost",
    "remember",
]
