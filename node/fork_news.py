"""Fork proofs, shared at once: the proof that a key signed two different blocks at one sequence
(a double spend) goes to live peers as soon as this node's ledger finds or is given it.

Before, proofs travelled only in the ledger gossip of two peers' first meeting: the same
identity paid two workers with two different blocks #1, and the workers, connected all along,
learnt of it only when they next met (after a restart or a loss of contact), taking its offers
meanwhile. Now every proof new to the ledger (LedgerLink.on_fork_proofs) is pushed on the ledger
protocol (`ForkProofs -> ForkProofs`) to up to FANOUT live peers chosen at random. A peer keeps
only proofs it checked itself (two validly signed, different blocks: ledger.fork), and those new
to it are new to its ledger, so it passes them on in turn: a proof floods the network in a few
hops, and each node sends it once.

Bounded: at most MAX_FORK_PROOFS proofs a message (ledger.messages; the frame is capped by
rainnet.ledgerproto), QUEUE batches waiting (a burst beyond that waits for the next meeting's
gossip, which carries every proof held), PUSH_TIMEOUT per peer, CONCURRENT pushes at a time.
The choice of peers and the batching are plain functions; `ForkNews` is the trio edge.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from ledger.fork import ForkProof
from ledger.messages import MAX_FORK_PROOFS, ForkProofs
from node.ledger_link import LedgerLink
from rainnet import wire
from rainnet.identity import peer_id_from_public_bytes
from rainnet.ledgerproto import LEDGER, LEDGER_MAX_FRAME, LedgerFrame
from rainnet.streams import FramedStream, StreamGone

log = logging.getLogger("rainnet.ledger")

FANOUT = 8
QUEUE = 16
CONCURRENT = 4
PUSH_TIMEOUT = 20.0

OpenStream = Callable[[str, str], Awaitable[Any]]


def batches(proofs: Sequence[ForkProof]) -> list[ForkProofs]:
    """`proofs` in messages of at most MAX_FORK_PROOFS each."""
    return [
        ForkProofs(tuple(proofs[i : i + MAX_FORK_PROOFS]))
        for i in range(0, len(proofs), MAX_FORK_PROOFS)
    ]


def recipients(live: Sequence[str], fanout: int, rng: random.Random) -> list[str]:
    """Up to `fanout` of the live peers, at random (each node's choice differs, so the flood
    reaches peers that some nodes do not hold)."""
    peers = sorted(set(live))
    return rng.sample(peers, min(fanout, len(peers)))


class ForkNews:
    def __init__(
        self,
        ledger: LedgerLink,
        open_stream: OpenStream,
        live_peers: Callable[[], list[str]],
        rng: random.Random | None = None,
    ) -> None:
        self._ledger = ledger
        self._open_stream = open_stream
        self._live_peers = live_peers
        self._rng = rng or random.Random()
        self._send, self._receive = trio.open_memory_channel[ForkProofs](QUEUE)
        self.pushed = 0  # pushes answered (for tests and logs)

    def found(self, proofs: tuple[ForkProof, ...]) -> None:
        """LedgerLink.on_fork_proofs: queue the proofs for pushing (never blocks)."""
        for proof in proofs:
            log.warning("%s: telling live peers now", proof.describe())
        for batch in batches(proofs):
            try:
                self._send.send_nowait(batch)
            except trio.WouldBlock:
                log.warning("fork proofs queue full: the rest go out at the next meetings")
                return

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        limiter = trio.CapacityLimiter(CONCURRENT)
        task_status.started()
        async with trio.open_nursery() as nursery:
            async for batch in self._receive:
                for peer in recipients(self._live_peers(), FANOUT, self._rng):
                    nursery.start_soon(self._push, peer, batch, limiter)

    async def _push(self, peer_id: str, batch: ForkProofs, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            with trio.move_on_after(PUSH_TIMEOUT):
                try:
                    raw = await self._open_stream(peer_id, LEDGER)
                    fs = FramedStream(raw, (LedgerFrame,), LEDGER_MAX_FRAME)
                    try:
                        await self._ledger.push_fork_proofs(fs, batch)
                    finally:
                        with contextlib.suppress(Exception):
                            await fs.close()
                    self.pushed += 1
                    offenders = {peer_id_from_public_bytes(p.offender) for p in batch.proofs}
                    log.info("fork proof(s) against %s given to %s", ", ".join(offenders), peer_id)
                except (StreamGone, wire.RemoteProtocolError) as exc:
                    log.debug("fork proofs to %s not delivered: %s", peer_id, exc)
