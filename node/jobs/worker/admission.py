"""Whether this worker takes an offer, and when: the checks and the queue for capacity.

An offer (a job, or a task session admitted like one job of its shape) is checked first: the
idle policy lets guests in, a sandbox backend can run it, and the requester's verified balance
stays above the credit floor (its chain is verified first: the offer brings the blocks we lack as
far as the requester knows; anything else is asked for on the job stream). Those checks are
bounded in number at once. A checked offer then waits briefly for capacity in `AdmissionQueue`,
where requesters with more verified credit go first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import trio

from ledger.admission import Candidate, by_priority
from ledger.errors import RemoteFault
from ledger.messages import ChainRequest
from node.jobs.core import scheduler, terms
from node.jobs.core.pending import Refusal
from node.jobs.stream import JobStream
from node.ledger_link import Admitted, Commitments, LedgerLink
from rainnet import identity, jobproto, wire
from rainnet.jobproto import DeclineKind
from rainnet.streams import StreamGone
from sandbox import Backend, JobSpec, SandboxError

CHAIN_SYNC_TIMEOUT = 30.0
MAX_WAITING = 64
PER_REQUESTER = 2  # offers of one requester checked at once


class AdmissionQueue:
    """Offers waiting for capacity. Whenever capacity frees (or an offer arrives), the waiting
    offers are taken in ledger.admission.by_priority order (higher verified balance first, then
    first come) and the first whose needs fit starts. Bounded in size and in waiting time."""

    def __init__(self, fits: Callable[[scheduler.Needs], str | None]) -> None:
        self._fits = fits
        self._waiting: dict[int, tuple[Candidate, scheduler.Needs]] = {}
        self._arrivals = itertools.count()
        self._changed = trio.Event()

    def released(self) -> None:
        """Capacity or the queue changed: waiting offers look again."""
        self._changed.set()
        self._changed = trio.Event()

    def _next(self) -> int | None:
        ranked = by_priority(c for c, _ in self._waiting.values())
        for cand in ranked:
            if self._fits(self._waiting[cand.arrival][1]) is None:
                return cand.arrival
        return None

    async def wait_turn(
        self, requester: bytes, balance_milli: int, needs: scheduler.Needs, timeout: float
    ) -> Refusal | None:
        """None when this offer may start (the caller registers it at once); else why not."""
        if len(self._waiting) >= MAX_WAITING:
            return Refusal(DeclineKind.BUSY, f"{len(self._waiting)} jobs are already waiting here")
        me = next(self._arrivals)
        self._waiting[me] = (Candidate(requester, balance_milli, me), needs)
        self.released()
        try:
            with trio.move_on_after(timeout):
                while self._next() != me:
                    await self._changed.wait()
                return None
        finally:
            del self._waiting[me]
            self.released()
        why = self._fits(needs) or "busy: higher-priority jobs took the free capacity"
        return Refusal(DeclineKind.CAPACITY, why)


class OfferChecks:
    """Bounds on offers being checked: at most PER_REQUESTER of one requester's at once (one
    identity sending offers it never follows up must not hold the checking capacity), and at
    most `slots` doing local work (the ledger) at once; nobody holds a slot while waiting on its
    peer (a chain page it was asked for)."""

    def __init__(self, slots: int) -> None:
        self._slots = trio.Semaphore(slots)
        self._per_requester: dict[str, int] = {}

    def busy(self, requester: str) -> Refusal | None:
        """Why another offer of `requester` is not checked now, or None (then `enter`)."""
        n = self._per_requester.get(requester, 0)
        if n >= PER_REQUESTER:
            return Refusal(
                DeclineKind.BUSY, f"busy: {n} offers of yours are being checked here already"
            )
        return None

    def enter(self, requester: str) -> None:
        self._per_requester[requester] = self._per_requester.get(requester, 0) + 1

    def leave(self, requester: str) -> None:
        n = self._per_requester.pop(requester, 1) - 1
        if n > 0:
            self._per_requester[requester] = n

    async def check(
        self,
        ledger: LedgerLink,
        stream: JobStream,
        offer: jobproto.Offer,
        spec: JobSpec,
        backend: Backend,
        may_start: Callable[[], str | None],
        commitments: Commitments,
    ) -> Admitted | Refusal:
        """Whether this worker may run the job: the requester's verified balance if so, else
        why not (the idle policy, the sandbox, or credit: the requester's chain is brought up
        to date from the blocks sent with the offer, or else asked for on the job stream, and
        verified; then its standing here and the floor are applied)."""
        why = may_start()
        if why is not None:
            return Refusal(DeclineKind.OWNER, why)
        try:
            backend.check_spec(spec)
        except SandboxError as exc:
            return Refusal(DeclineKind.SANDBOX, str(exc))
        public = identity.public_bytes_from_peer_id(stream.remote_peer)
        limits = terms.job_limits(spec)
        try:
            offered = terms.offered_chain(offer.chain)
            # Sync and admit under the requester's chain lock: concurrent offers from one
            # requester take turns (the later ones fetch only what is new), and no agreement of
            # its lands between the sync and the floor check.
            async with ledger.chain_lock(public):
                with trio.fail_after(CHAIN_SYNC_TIMEOUT):
                    async with self._slots:
                        outcome = await ledger.weigh_offer(
                            public,
                            offer.job_id,
                            offered,
                            limits,
                            jobproto.JOB_PAGE_BLOCKS,
                            commitments,
                        )
                    if not isinstance(outcome, ChainRequest):
                        return _credit(outcome)
                    # (No slot held meanwhile: this waits on the requester, not on us.)
                    await ledger.fetch_pages(stream, outcome, jobproto.JOB_PAGE_BLOCKS)
                    async with self._slots:
                        return _credit(await ledger.admit(public, limits, commitments))
        except RemoteFault as exc:
            return Refusal(DeclineKind.CREDIT, str(exc))
        except (trio.TooSlowError, StreamGone, wire.RemoteProtocolError, ValueError) as exc:
            return Refusal(DeclineKind.CREDIT, f"could not verify your credit: {exc}")


def _credit(outcome: Admitted | str) -> Admitted | Refusal:
    """The ledger's verdict: admitted, or why not (its standing, its floor)."""
    return Refusal(DeclineKind.CREDIT, outcome) if isinstance(outcome, str) else outcome
