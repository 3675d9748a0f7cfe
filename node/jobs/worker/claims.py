"""Getting paid for a result: the worker signs its claim, holds the result, offers it, and
releases the files only once the requester has countersigned that very claim.

The claim (a ledger proposal for the measured CPU-seconds, against the hash of the result
manifest) is signed and the result kept in `HOME/held` (node.jobs.worker.held) before it is
offered: if the requester vanishes, or this node dies after being paid, the result is settled or
released when both are back (`deliver_held`, on `/rain/result`). It goes only once released, or
refused. The exchange runs through the job conversation: the Settle is decoded there, and only
an agreement stored by our ledger for the proposal offered releases the files.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from ledger.block import JobLimits
from ledger.errors import LedgerError
from ledger.messages import Refuse, encode_message
from node.faults import blamed_on_peer
from node.jobs import blocking, transfer
from node.jobs.core.conversation import Kind, SettleReceived, WorkerConversation
from node.jobs.stream import JobStream
from node.jobs.worker.held import HeldResults
from node.ledger_link import LedgerLink
from rainnet import identity, jobproto, wire
from rainnet.streams import FramedStream, StreamGone

log = logging.getLogger("rainnet.worker")

# The requester answers a result within this (plus the job's wall time, for replicas waiting on
# each other); longer than its own vote timeout (VOTE_SLACK), so it never pays a worker gone.
SETTLE_TIMEOUT = 180.0
SEND_TIMEOUT = 30.0
HELD_RETRY = 30.0  # how often held results are offered again to requesters that are live


class Claims:
    def __init__(
        self, ledger: LedgerLink, held: HeldResults, open_stream: Callable[[str, str], Any]
    ) -> None:
        self.ledger = ledger
        self.held = held
        self._open_stream = open_stream
        self._delivering: set[str] = set()
        # Held results offered on their job stream now, or released and not yet dropped.
        self.in_exchange: set[str] = set()

    async def claim_and_release(
        self,
        stream: JobStream | None,
        requester: str,
        claim_id: str,
        cpu_ms: int,
        limits: JobLimits,
        finished: jobproto.Finished,
        sources: Sequence[Path | bytes],
        drop_later: list[str] | None = None,
    ) -> None:
        """Sign the claim for a result (`finished`, its proposal still empty), hold the result,
        and offer it on `stream`: released once paid, refused, or held for the requester's
        return (at once if `stream` is None: it is gone). A task session passes `drop_later`:
        the held copies in it are dropped in the same thread hop as this one is kept, and this
        one is added to it once released, rather than dropped at once (a hop on its next task's
        path)."""
        try:
            proposal = await self.ledger.propose(
                identity.public_bytes_from_peer_id(requester),
                claim_id,
                cpu_ms,
                limits,
                finished.result_hash,
            )
        except LedgerError as exc:
            log.error("job %s: cannot sign the claim: %s", claim_id, exc)
            return
        if proposal.block.transaction.result_hash != finished.result_hash:
            # propose() is idempotent per (requester, job): an earlier claim for this job id
            # stands, and it is not for this result.
            log.error("job %s: claimed before for another result; not releasing", claim_id)
            return
        finished = dataclasses.replace(finished, proposal=encode_message(proposal))
        # (Not in the ledger's thread: moving files must not hold up admissions and agreements.)
        released = list(drop_later or ())

        def keep() -> list[Path]:
            for old in released:
                self.held.drop(old)
            return self.held.keep(claim_id, requester, finished, sources)

        paths = await blocking.run(keep)
        if drop_later is not None:
            self.dropped(released)
            drop_later.clear()
        if stream is None:
            log.info("job %s: requester gone; holding its result", claim_id)
            return
        # Replicas of the job wait for each other before the requester answers.
        timeout = SETTLE_TIMEOUT + limits.wall_ms / 1000
        # deliver_held leaves it alone meanwhile, and until its held copy is dropped.
        self.in_exchange.add(claim_id)
        try:
            await self._exchange(stream, claim_id, requester, finished, paths, timeout)
        except BaseException as exc:
            self.in_exchange.discard(claim_id)
            if isinstance(exc, StreamGone):
                log.info("job %s: requester gone (%s); holding its result", claim_id, exc)
                return
            raise
        if drop_later is None:
            await blocking.run(self.held.drop, claim_id)
            self.in_exchange.discard(claim_id)
        else:
            drop_later.append(claim_id)

    def held_unanswered(self, requester: str) -> frozenset[str]:
        """The claims whose results we hold for `requester`, not being offered right now."""
        return frozenset(self.held.held_for(requester) - self.in_exchange)

    def dropped(self, claim_ids: Sequence[str]) -> None:
        """The held copies of these released claims are gone (see claim_and_release)."""
        self.in_exchange.difference_update(claim_ids)

    async def _exchange(
        self,
        stream: JobStream,
        job_id: str,
        requester: str,
        finished: jobproto.Finished,
        sources: Sequence[Path | bytes],
        settle_timeout: float,
    ) -> None:
        """Offer the result, take the answer, and release the files once we are paid for
        exactly this proposal (an agreement to another of ours must not buy these files)."""
        await stream.send(finished, SEND_TIMEOUT)
        answer = (await stream.receive_a(SettleReceived, settle_timeout)).answer
        if isinstance(answer, Refuse):
            log.warning("job %s: %s refused to pay: %s", job_id, requester, answer.reason)
            return
        with blamed_on_peer("agreement"):
            exchange = await self.ledger.accept_agreement(answer)
        assert isinstance(stream.conv, WorkerConversation)
        stream.conv.agreement_stored(exchange.proposal.hash)
        log.info("job %s settled: %.3f CPU-seconds", job_id, finished.cpu_seconds)

        async def send_chunk(index: int, offset: int, data: bytes) -> None:
            await stream.send(
                jobproto.OutputChunk(index=index, offset=offset, data=data), SEND_TIMEOUT
            )

        # (An empty file is not opened: most jobs leave stderr, or both, empty.)
        nonempty = [
            b"" if e.size == 0 else s for e, s in zip(finished.outputs, sources, strict=True)
        ]
        await transfer.send(send_chunk, nonempty)
        await stream.send(jobproto.OutputDone(), SEND_TIMEOUT)
        # (Not closed here: a task session goes on; the handler closes a job's stream.)

    async def deliver_held(self, requester: str) -> None:
        """`requester` is back: settle the results we held for it, one at a time (and one
        delivery per requester at a time: hellos and the retry loop may both ask)."""
        if requester in self._delivering:
            return
        self._delivering.add(requester)
        try:
            await self._deliver_held(requester)
        finally:
            self._delivering.discard(requester)

    async def retry_held(self, live_peers: Callable[[], list[str]]) -> None:
        """Until cancelled: offer held results again to requesters that are live, and drop
        the ones held too long (first: read what a run before a restart held)."""
        await blocking.run(self.held.index)
        while True:
            await trio.sleep(HELD_RETRY)
            await blocking.run(self.held.expire, time.time())
            if not await blocking.run(self.held.job_ids):
                continue
            for peer_id in live_peers():
                with trio.move_on_after(HELD_RETRY):
                    await self.deliver_held(peer_id)

    async def _deliver_held(self, requester: str) -> None:
        for job_id in await blocking.run(self.held.for_requester, requester):
            if job_id in self.in_exchange:
                continue  # being offered on its own job stream right now
            try:
                finished, paths = await blocking.run(self.held.load, job_id)
                raw = await self._open_stream(requester, jobproto.RESULT)
                fs = FramedStream(raw, (jobproto.Settle,), jobproto.JOB_MAX_FRAME)
                stream = JobStream(fs, WorkerConversation(Kind.HELD))
                try:
                    await self._exchange(stream, job_id, requester, finished, paths, SETTLE_TIMEOUT)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await stream.reset()  # released, not left half-open
                    raise
                await stream.close()
            except (StreamGone, wire.RemoteProtocolError) as exc:
                log.info("held result of job %s not delivered yet: %s", job_id, exc)
                return
            except (OSError, wire.WireError) as exc:
                log.error("held result of job %s is unreadable, dropped: %s", job_id, exc)
            else:
                log.info("held result of job %s delivered to %s", job_id, requester)
            await blocking.run(self.held.drop, job_id)
