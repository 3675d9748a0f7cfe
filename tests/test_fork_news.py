"""Hole 6b of issue 14: fork evidence is shared at once. An identity paid two workers with two
different blocks #1; the workers, connected all along, learnt of it only when they next met.
Now the node that finds the fork pushes the proof to its live peers, which check it, keep it,
refuse the offender, and pass it on; a forged proof goes nowhere. Real ledgers, the real ledger
protocol handlers, peers in memory (node.testing)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from ledger.fork import ForkProof
from ledger.messages import ForkProofs, Heads
from ledger.service import Ledger
from node.fork_news import FANOUT, ForkNews, batches, recipients
from node.ledger_link import LedgerLink, frame, unframe
from node.testing import MemoryNetwork, temporary_ledger, until
from rainnet.identity import Identity
from rainnet.ledgerproto import LEDGER, LEDGER_MAX_FRAME, LedgerFrame
from rainnet.streams import FramedStream, StreamGone
from tests.ledger_helpers import forge, resign
from tests.test_ledger_service import settle, sync


def _run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


class Node:
    """A peer with its ledger, serving the ledger protocol, and its fork news wired as the
    daemon wires it."""

    def __init__(self, net: MemoryNetwork, home: Path, live: list[str]) -> None:
        self.me = Identity.generate()
        self.link: LedgerLink = temporary_ledger(home, self.me)
        self.peer = net.peer(self.me.peer_id)
        self.peer.handle(LEDGER, self.link.handle)
        self.live = live
        self.news = ForkNews(
            self.link, self.peer.open_stream, lambda: [p for p in live if p != self.me.peer_id]
        )
        self.link.on_fork_proofs = self.news.found

    @property
    def ledger(self) -> Ledger:
        return self.link.ledger


async def _ask(net: MemoryNetwork, source: str, target: str, msg: object) -> object:
    raw = await net.open(source, target, LEDGER)
    fs = FramedStream(raw, (LedgerFrame,), LEDGER_MAX_FRAME)
    await fs.send(frame(msg))  # type: ignore[arg-type]
    reply = unframe(await fs.receive_a(LedgerFrame, 10), (Heads, ForkProofs))
    await fs.close()
    return reply


def test_a_double_spend_found_by_one_worker_reaches_the_others_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = MemoryNetwork(nursery)
            live: list[str] = []
            w1, w2, bystander = (Node(net, tmp_path / n, live) for n in ("w1", "w2", "c"))
            live += [w1.me.peer_id, w2.me.peer_id, bystander.me.peer_id]
            for node in (w1, w2, bystander):
                nursery.start_soon(node.news.run)
            cheat_me = Identity.generate()
            cheat = Ledger.open(tmp_path / "cheat", cheat_me)
            # The cheat pays w1 with its block #1, and w1 holds the cheat's chain.
            settle(w1.ledger, cheat, "paid-w1")
            sync(w1.ledger, cheat, cheat.public_key)
            sync(w2.ledger, cheat, cheat.public_key)
            # Its ledger "lost" that block: it signs another #1, paying w2 with it.
            head = cheat.head()
            assert head is not None and head.sequence == 1
            twin = resign(head, cheat_me, link_public_key=w2.me.public_raw)
            # Someone w1 meets shows it that head: w1 finds the fork.
            await _ask(net, "newcomer", w1.me.peer_id, Heads((twin,)))
            assert w1.ledger.is_offender(cheat.public_key)
            # w2 and the bystander hear of it without meeting anyone anew, and check it.
            await until(
                lambda: (
                    w2.ledger.is_offender(cheat.public_key)
                    and bystander.ledger.is_offender(cheat.public_key)
                ),
                within=30,
            )
            # Each passed it on once at most: nobody floods a proof it already held.
            await trio.sleep(5)
            assert w1.news.pushed == 2 and w2.news.pushed + bystander.news.pushed <= 4
            cheat.close()
            nursery.cancel_scope.cancel()

    _run(main)


def test_a_forged_proof_is_refused_and_goes_no_further(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = MemoryNetwork(nursery)
            live: list[str] = []
            w1, w2 = (Node(net, tmp_path / n, live) for n in ("w1", "w2"))
            live += [w1.me.peer_id, w2.me.peer_id]
            for node in (w1, w2):
                nursery.start_soon(node.news.run)
            honest_me = Identity.generate()
            honest = Ledger.open(tmp_path / "honest", honest_me)
            settle(w1.ledger, honest, "paid")
            sync(w1.ledger, honest, honest.public_key)
            head = honest.head()
            assert head is not None
            # A "proof" against an honest key: its block beside a forgery it never signed.
            forged = forge(head, link_public_key=w2.me.public_raw)
            first, second = sorted((head, forged), key=lambda b: b.hash)
            bogus = ForkProofs((ForkProof(first, second),))
            assert bogus.proofs[0].problem() == "a block's signature does not verify"
            with pytest.raises(StreamGone):  # w1 closed the stream on the liar
                await _ask(net, "liar", w1.me.peer_id, bogus)
            await trio.sleep(5)
            assert not w1.ledger.is_offender(honest.public_key)
            assert not w2.ledger.is_offender(honest.public_key)
            assert w1.news.pushed == 0
            honest.close()
            nursery.cancel_scope.cancel()

    _run(main)


def test_proofs_go_in_capped_messages_to_a_bounded_random_few() -> None:
    live = [f"p{i}" for i in range(50)]
    chosen = recipients(live, FANOUT, random.Random(1))
    assert len(chosen) == FANOUT == len(set(chosen)) and set(chosen) <= set(live)
    assert recipients(["a", "a", "b"], FANOUT, random.Random(1)) in (["a", "b"], ["b", "a"])
    assert batches([]) == []
