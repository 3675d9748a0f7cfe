"""The ledger over the network: `/rain/ledger/1.0.0`, and the node's calls into its own ledger.

Each frame carries one ledger message as the ledger's own msgpack bytes (`ledger.messages`), which
the ledger validates; this module only moves them, on trio, with every wait bounded. A stream
holds a run of request/response pairs:

    ChainRequest -> ChainPage      (a peer's chain, or the part since what we verified; paged)
    Heads        -> Heads          (both sides compare heads, so forks surface)
    ForkProofs   -> ForkProofs     (double-spending proofs are shared with those we deal with,
                                    and pushed to live peers as soon as found: node.fork_news)

Ledger calls are short synchronous SQLite transactions; they run in a worker thread so the node's
trio loop never blocks on the disk. `LedgerLink` names each call the node makes (`propose`,
`agree`, `accept_agreement`, `weigh_offer`, ...): nothing else reaches into the ledger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ledger.balance import Balance
from ledger.block import JobLimits
from ledger.exchange import Exchange
from ledger.fork import ForkProof
from ledger.messages import (
    MAX_PAGE_BLOCKS,
    Agree,
    ChainPage,
    ChainRequest,
    ForkProofs,
    Heads,
    LedgerMessage,
    Propose,
    decode_message,
    encode_message,
)
from ledger.service import Ledger
from ledger.store import ChainState, HistoryRow
from node.faults import blamed_on_peer
from node.jobs.core import standing as standing_rules
from rainnet import wire
from rainnet.ledgerproto import LEDGER_MAX_FRAME, LedgerFrame
from rainnet.streams import FramedStream, MessageChannel

__all__ = ["Admitted", "Commitments", "LedgerLink", "frame", "unframe"]

log = logging.getLogger("rainnet.ledger")

REQUEST_TIMEOUT = 20.0
MAX_REQUESTS_PER_STREAM = 1024
# A peer's whole chain is fetched in at most this many pages (256 blocks each: ~1M blocks).
MAX_PAGES = 4096
MAX_CHAIN_LOCKS = 4096
T = TypeVar("T")


def frame(msg: LedgerMessage) -> LedgerFrame:
    return LedgerFrame(encode_message(msg))


def unframe(f: LedgerFrame, expected: tuple[type, ...]) -> LedgerMessage:
    """The ledger message in a frame; RemoteProtocolError if it is malformed or unexpected."""
    with blamed_on_peer("ledger"):
        return decode_message(f.body, expected)


@dataclass(frozen=True)
class Admitted:
    """An offer passed the ledger's checks: the requester's verified balance, what it owes here
    already (node.jobs.core.standing), and how far we hold its chain verified (told to it in
    the Accept, so its next offer brings only what is newer)."""

    balance_milli: int
    owed_milli: int
    chain_verified: int
    newcomer: bool = False  # it never earned credit (node.jobs.core.standing)


@dataclass(frozen=True)
class Commitments:
    """What a worker has going with a requester besides the offer it weighs: its jobs running
    here (at most what they may cost), and the claims whose results it holds for the requester
    unanswered (not being offered right now)."""

    running_milli: int = 0
    held: frozenset[str] = frozenset()
    newcomers_running_milli: int = 0  # all newcomers' jobs running here, at their limits


class LedgerLink:
    """This node's ledger, reached from trio, and the ledger protocol's two ends."""

    def __init__(
        self, ledger: Ledger, *, in_thread: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        self.ledger = ledger
        # The time claims are stamped with and judged by (node.jobs.core.standing): the wall
        # clock; tests on a mock clock pass theirs.
        self._clock = clock
        # Tests on a mock clock call the ledger inline: a thread's real time would let the
        # clock jump past deadlines meanwhile (node.testing).
        self._in_thread = in_thread
        # One writer at a time keeps SQLite's own lock uncontended; reads are short anyway.
        self._limiter = trio.CapacityLimiter(1)
        # Per peer chain: a sync (request, pages, ingest) and the agreements we store for that
        # peer's jobs never interleave, or a page built before a new block lands looks short.
        self._chain_locks: dict[bytes, trio.Lock] = {}
        # Told of every fork proof new to our ledger, as soon as a call finds or receives one.
        self.on_fork_proofs: Callable[[tuple[ForkProof, ...]], None] | None = None

    def chain_lock(self, public_key: bytes) -> trio.Lock:
        lock = self._chain_locks.get(public_key)
        if lock is None:
            if len(self._chain_locks) > MAX_CHAIN_LOCKS:
                self._chain_locks = {k: v for k, v in self._chain_locks.items() if v.locked()}
            lock = self._chain_locks[public_key] = trio.Lock()
        return lock

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            if not self._in_thread:
                await trio.lowlevel.checkpoint()
                return fn(*args)
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        finally:
            # Any call may have found a fork (a page, heads, an agreement, proofs from a peer),
            # and may have raised for it: the proofs go out at once (node.fork_news).
            if self.on_fork_proofs is not None and self.ledger.has_fresh_fork_proofs:
                self.on_fork_proofs(self.ledger.take_fresh_fork_proofs())

    # ----- who we are, and our own chain -----------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self.ledger.public_key

    @property
    def peer_id(self) -> str:
        return self.ledger.peer_id

    @property
    def floor_milli(self) -> int:
        return self.ledger.floor_milli

    async def balance(self) -> Balance:
        return await self._call(self.ledger.balance)

    async def history(self, limit: int) -> list[HistoryRow]:
        return await self._call(self.ledger.history, limit)

    def close(self) -> None:
        self.ledger.close()

    # ----- as a worker ------------------------------------------------------------------------

    async def weigh_offer(
        self,
        requester: bytes,
        job_id: str,
        offered: ChainPage | None,
        limits: JobLimits,
        page_blocks: int,
        commitments: Commitments,
    ) -> Admitted | ChainRequest | str:
        """One thread hop in the usual case: an offer for `job_id` not claimed before, the
        requester's chain brought up to date by the page `offered` with it, admitted. Else why
        not (a RemoteFault: the ledger says why), or the ChainRequest for what we still lack
        (then `fetch_pages`, then `admit`)."""

        def weigh() -> Admitted | ChainRequest | str:
            if self.ledger.exchange(requester, job_id) is not None:
                # One run per (requester, job id): a repeated offer would get a run for
                # nothing, or collide with the earlier run's directory and claim.
                return f"job {job_id} ran here already"
            request = self.ledger.catch_up(requester, offered, page_blocks)
            return self._admit(requester, limits, commitments) if request is None else request

        return await self._call(weigh)

    async def admit(
        self, requester: bytes, limits: JobLimits, commitments: Commitments
    ) -> Admitted | str:
        """The requester's verified balance and what it owes here if a job with `limits` may
        run for it; why not if its standing refuses it (node.jobs.core.standing), or a
        RemoteFault (a fork, a chain sent short, the credit floor)."""
        return await self._call(self._admit, requester, limits, commitments)

    def _admit(
        self, requester: bytes, limits: JobLimits, commitments: Commitments
    ) -> Admitted | str:
        now_ms = int(self._clock() * 1000)
        since = now_ms - standing_rules.UNPAID_MEMORY_MS
        state = self.ledger.verified_state(requester)
        newcomer = state is None or state.balance.earned_milli == 0
        verdict = standing_rules.standing(
            self.ledger.unpaid(requester, since),
            commitments.held,
            commitments.running_milli,
            now_ms,
            newcomer=newcomer,
            newcomers_owe_milli=self.ledger.unpaid_by_newcomers(since) if newcomer else 0,
            newcomers_running_milli=commitments.newcomers_running_milli,
            cost_milli=limits.max_amount_milli,
        )
        if verdict.refusal is not None:
            return verdict.refusal
        balance = self.ledger.admit(requester, limits, verdict.owed_milli)
        return Admitted(
            balance.balance_milli,
            verdict.owed_milli,
            state.verified if state else 0,
            newcomer=balance.earned_milli == 0,
        )

    async def propose(
        self, requester: bytes, claim_id: str, cpu_ms: int, limits: JobLimits, result_hash: bytes
    ) -> Propose:
        """Sign and store our claim for a result (idempotent per requester and claim id: the
        first claim stands)."""
        return await self._call(
            lambda: self.ledger.propose(
                requester=requester,
                job_id=claim_id,
                cpu_ms=cpu_ms,
                gpu_ms=0,
                limits=limits,
                result_hash=result_hash,
                time_ms=int(self._clock() * 1000),
            )
        )

    async def accept_agreement(self, agreement: Agree) -> Exchange:
        """Check and store the requester's agreement to one of our claims (RemoteFault if it
        does not fit one), under its chain's lock."""
        async with self.chain_lock(agreement.block.public_key):
            return await self._call(self.ledger.accept_agreement, agreement)

    # ----- as a requester ---------------------------------------------------------------------

    async def agree(self, proposal: Propose, limits: JobLimits, max_payees: int) -> Agree:
        """Countersign a worker's claim within `limits` (RemoteFault saying why not: beyond the
        limits, paid `max_payees` times already, ...)."""
        return await self._call(lambda: self.ledger.agree(proposal, limits, max_payees=max_payees))

    async def serve_chain(self, request: ChainRequest) -> ChainPage:
        return await self._call(self.ledger.serve_chain, request)

    async def verified_state(self, public_key: bytes) -> ChainState | None:
        return await self._call(self.ledger.verified_state, public_key)

    # ----- serving ----------------------------------------------------------------------------

    async def handle(self, stream: Any) -> None:
        """Answer a peer's requests on one stream (used with rainnet.streams.guarded_handler)."""
        fs = FramedStream(stream, (LedgerFrame,), LEDGER_MAX_FRAME)
        for _ in range(MAX_REQUESTS_PER_STREAM):
            try:
                request = unframe(
                    await fs.receive_a(LedgerFrame, REQUEST_TIMEOUT),
                    (ChainRequest, Heads, ForkProofs),
                )
            except wire.RemoteProtocolError:
                raise
            except Exception:
                return  # the peer closed the stream or went quiet: done
            await fs.send(frame(await self._answer(request)))
        await fs.close()

    async def _answer(self, request: LedgerMessage) -> LedgerMessage:
        with blamed_on_peer("ledger"):
            if isinstance(request, ChainRequest):
                return await self._call(self.ledger.serve_chain, request)
            if isinstance(request, Heads):
                proofs = await self._call(self.ledger.observe_heads, request)
                if proofs:
                    log.warning("fork proof against %d chain(s) from heads", len(proofs))
                return await self._call(self.ledger.heads)
            assert isinstance(request, ForkProofs)
            await self._call(self.ledger.receive_fork_proofs, request)
            return await self._call(self.ledger.fork_proofs)

    # ----- asking -----------------------------------------------------------------------------

    async def sync_chain(
        self,
        fs: MessageChannel,
        public_key: bytes,
        offered: ChainPage | None = None,
        page_blocks: int = MAX_PAGE_BLOCKS,
    ) -> None:
        """Fetch and verify the part of `public_key`'s chain we do not hold yet, page by page,
        over `fs`, after using the page the peer `offered` unasked if it fits (see
        Ledger.catch_up).

        Raises RemoteFault (bad block, fork) through RemoteProtocolError: the peer is at fault.
        """
        with blamed_on_peer("ledger"):
            request = await self._call(self.ledger.catch_up, public_key, offered, page_blocks)
        if request is not None:
            await self.fetch_pages(fs, request, page_blocks)

    async def fetch_pages(
        self, fs: MessageChannel, request: ChainRequest, page_blocks: int
    ) -> None:
        """Ask the peer on `fs` (a ledger stream, or the job stream of an offer) for its chain
        from `request` on, page by page, verifying each, until we hold all of it."""
        public_key = request.public_key
        with blamed_on_peer("ledger"):
            for _ in range(MAX_PAGES):
                await fs.send(frame(request), REQUEST_TIMEOUT)
                page = unframe(await fs.receive_a(LedgerFrame, REQUEST_TIMEOUT), (ChainPage,))
                assert isinstance(page, ChainPage)
                if page.public_key != public_key:
                    raise wire.RemoteProtocolError("ledger: a page of another chain than asked")
                if not (await self._call(self.ledger.ingest_page, page)).more:
                    return
                request = await self._call(self.ledger.chain_request, public_key, page_blocks)
        raise wire.RemoteProtocolError(f"ledger: chain longer than {MAX_PAGES} pages")

    async def push_fork_proofs(self, fs: MessageChannel, proofs: ForkProofs) -> int:
        """Give the peer on `fs` these proofs (it checks each before keeping it); keep what it
        answers with, checked likewise. The number of proofs new to us in its answer."""
        await fs.send(frame(proofs), REQUEST_TIMEOUT)
        with blamed_on_peer("ledger"):
            reply = unframe(await fs.receive_a(LedgerFrame, REQUEST_TIMEOUT), (ForkProofs,))
            assert isinstance(reply, ForkProofs)
            return len(await self._call(self.ledger.receive_fork_proofs, reply))

    async def gossip(self, fs: FramedStream) -> int:
        """Exchange heads and fork proofs with the peer on `fs`; the number of new fork proofs."""
        await fs.send(frame(await self._call(self.ledger.heads)), REQUEST_TIMEOUT)
        heads = unframe(await fs.receive_a(LedgerFrame, REQUEST_TIMEOUT), (Heads,))
        assert isinstance(heads, Heads)
        with blamed_on_peer("ledger"):
            new = len(await self._call(self.ledger.observe_heads, heads))
            await fs.send(frame(await self._call(self.ledger.fork_proofs)), REQUEST_TIMEOUT)
            proofs = unframe(await fs.receive_a(LedgerFrame, REQUEST_TIMEOUT), (ForkProofs,))
            assert isinstance(proofs, ForkProofs)
            new += len(await self._call(self.ledger.receive_fork_proofs, proofs))
        return new
