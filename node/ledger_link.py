"""The ledger over the network: `/rain/ledger/1.0.0`, and the node's calls into its own ledger.

Each frame carries one ledger message as the ledger's own msgpack bytes (`ledger.messages`), which
the ledger validates; this module only moves them, on trio, with every wait bounded. A stream
holds a run of request/response pairs:

    ChainRequest -> ChainPage      (a peer's chain, or the part since what we verified; paged)
    Heads        -> Heads          (both sides compare heads, so forks surface)
    ForkProofs   -> ForkProofs     (double-spending proofs are shared with those we deal with)

Ledger calls are short synchronous SQLite transactions; they run in a worker thread so the node's
trio loop never blocks on the disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from ledger.errors import RemoteFault
from ledger.messages import (
    MAX_PAGE_BLOCKS,
    ChainPage,
    ChainRequest,
    ForkProofs,
    Heads,
    LedgerMessage,
    decode_message,
    encode_message,
)
from ledger.service import Ledger
from rainnet import wire
from rainnet.ledgerproto import LEDGER_MAX_FRAME, LedgerFrame
from rainnet.streams import FramedStream

__all__ = ["LedgerLink", "frame", "unframe"]

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
    try:
        return decode_message(f.body, expected)
    except RemoteFault as exc:
        raise wire.RemoteProtocolError(f"ledger: {exc}") from None


class LedgerLink:
    """This node's ledger, reached from trio, and the ledger protocol's two ends."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        # One writer at a time keeps SQLite's own lock uncontended; reads are short anyway.
        self._limiter = trio.CapacityLimiter(1)
        # Per peer chain: a sync (request, pages, ingest) and the agreements we store for that
        # peer's jobs never interleave, or a page built before a new block lands looks short.
        self._chain_locks: dict[bytes, trio.Lock] = {}

    def chain_lock(self, public_key: bytes) -> trio.Lock:
        lock = self._chain_locks.get(public_key)
        if lock is None:
            if len(self._chain_locks) > MAX_CHAIN_LOCKS:
                self._chain_locks = {k: v for k, v in self._chain_locks.items() if v.locked()}
            lock = self._chain_locks[public_key] = trio.Lock()
        return lock

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

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
        try:
            if isinstance(request, ChainRequest):
                return await self.call(self.ledger.serve_chain, request)
            if isinstance(request, Heads):
                proofs = await self.call(self.ledger.observe_heads, request)
                if proofs:
                    log.warning("fork proof against %d chain(s) from heads", len(proofs))
                return await self.call(self.ledger.heads)
            assert isinstance(request, ForkProofs)
            await self.call(self.ledger.receive_fork_proofs, request)
            return await self.call(self.ledger.fork_proofs)
        except RemoteFault as exc:
            raise wire.RemoteProtocolError(f"ledger: {exc}") from None

    # ----- asking -----------------------------------------------------------------------------

    async def sync_chain(
        self,
        fs: FramedStream,
        public_key: bytes,
        offered: ChainPage | None = None,
        page_blocks: int = MAX_PAGE_BLOCKS,
    ) -> None:
        """Fetch and verify the part of `public_key`'s chain we do not hold yet, page by page,
        over `fs`, after using the page the peer `offered` unasked if it fits (see
        Ledger.catch_up).

        Raises RemoteFault (bad block, fork) through RemoteProtocolError: the peer is at fault.
        """
        try:
            request = await self.call(self.ledger.catch_up, public_key, offered, page_blocks)
        except RemoteFault as exc:
            raise wire.RemoteProtocolError(f"ledger: {exc}") from None
        if request is not None:
            await self.fetch_pages(fs, request, page_blocks)

    async def fetch_pages(self, fs: FramedStream, request: ChainRequest, page_blocks: int) -> None:
        """Ask the peer on `fs` (a ledger stream, or the job stream of an offer) for its chain
        from `request` on, page by page, verifying each, until we hold all of it."""
        public_key = request.public_key
        try:
            for _ in range(MAX_PAGES):
                await fs.send(frame(request), REQUEST_TIMEOUT)
                page = unframe(await fs.receive_a(LedgerFrame, REQUEST_TIMEOUT), (ChainPage,))
                assert isinstance(page, ChainPage)
                if page.public_key != public_key:
                    raise wire.RemoteProtocolError("ledger: a page of another chain than asked")
                if not (await self.call(self.ledger.ingest_page, page)).more:
                    return
                request = await self.call(self.ledger.chain_request, public_key, page_blocks)
        except RemoteFault as exc:
            raise wire.RemoteProtocolError(f"ledger: {exc}") from None
        raise wire.RemoteProtocolError(f"ledger: chain longer than {MAX_PAGES} pages")

    async def gossip(self, fs: FramedStream) -> int:
        """Exchange heads and fork proofs with the peer on `fs`; the number of new fork proofs."""
        await fs.send(frame(await self.call(self.ledger.heads)), REQUEST_TIMEOUT)
        heads = unframe(await fs.receive_a(LedgerFrame, REQUEST_TIMEOUT), (Heads,))
        assert isinstance(heads, Heads)
        try:
            new = len(await self.call(self.ledger.observe_heads, heads))
            await fs.send(frame(await self.call(self.ledger.fork_proofs)), REQUEST_TIMEOUT)
            proofs = unframe(await fs.receive_a(LedgerFrame, REQUEST_TIMEOUT), (ForkProofs,))
            assert isinstance(proofs, ForkProofs)
            new += len(await self.call(self.ledger.receive_fork_proofs, proofs))
        except RemoteFault as exc:
            raise wire.RemoteProtocolError(f"ledger: {exc}") from None
        return new
