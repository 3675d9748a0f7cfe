"""Meeting peers: the hello (`/rain/hello`), both ways, and whom to say it to when.

A hello carries each side's signed record and a few live-peer hints. We say it to candidates
the membership view holds due for contact (found by mDNS, bootstrap, the DHT, hints, or a ping
from a peer we had lost), to a random live peer now and then (its hints reach us, and ours it,
so peers that joined through someone else are found without any broadcast), and to a peer whose
pong names a newer record than the one we hold. A peer seen for the first time joins the view
(`on_contact(peer, joined=True)`); every hello, first or not, is reported too.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.peer.id import ID

from rainnet import protocols, records, wire
from rainnet import relay as rrelay
from rainnet.hints import Hint
from rainnet.membership import Membership, Peer
from rainnet.streams import FramedStream

log = logging.getLogger("rainnet.node")

HELLO_TIMEOUT = 8.0
DIAL_CONCURRENCY = 16
DIAL_TICK = 0.2
HINT_INTERVAL = 10.0

OnContact = Callable[[str, bool], Awaitable[None]]


class Contact:
    def __init__(
        self,
        host: Any,
        membership: Membership,
        signed_record: Callable[[], records.SignedRecord],
        on_contact: OnContact,
        due: Callable[[float], list[Peer]] | None = None,
    ) -> None:
        self._host = host
        self.membership = membership
        self._signed_record = signed_record
        self._on_contact = on_contact
        # Which candidates to dial now (rainnet.connections: those the neighbourhood needs).
        self._due = due or membership.due_for_dial
        self.dialing: dict[str, trio.Event] = {}  # hellos under way, set when each ends
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._dial_loop)
        nursery.start_soon(self._exchange_hints_loop)

    def _hints(self, exclude: str | None) -> tuple[protocols.PeerHint, ...]:
        return tuple(
            protocols.PeerHint(peer_id=p.peer_id, addrs=p.addrs[:16])
            for p in self.membership.sample(protocols.MAX_HINTS, exclude=exclude)
        )

    def say_hello(self, peer_id: str, addrs: tuple[str, ...]) -> None:
        """Hello `peer_id` soon (unless a hello to it is under way)."""
        if peer_id in self.dialing or self._nursery is None:
            return
        self.dialing[peer_id] = trio.Event()
        self._nursery.start_soon(self._contact, peer_id, addrs, trio.CapacityLimiter(1))

    def refresh_if_newer(self, peer_id: str, record_seq: int) -> None:
        """A peer announced a newer record than the one we hold: fetch it with a hello."""
        peer = self.membership.peers.get(peer_id)
        if peer is None or (peer.record is not None and peer.record.seq >= record_seq):
            return
        self.say_hello(peer_id, peer.addrs)

    async def _dial_loop(self) -> None:
        limiter = trio.CapacityLimiter(DIAL_CONCURRENCY)
        assert self._nursery is not None
        while True:
            now = time.time()
            for peer in self._due(now):
                if peer.peer_id in self.dialing:
                    continue
                addrs = self.membership.dial_addrs(peer, now)
                if not addrs:  # its addresses' dial budgets are spent: later, if ever
                    self.membership.failed(peer.peer_id, now)
                    continue
                self.dialing[peer.peer_id] = trio.Event()
                self._nursery.start_soon(self._contact, peer.peer_id, addrs, limiter)
            await trio.sleep(DIAL_TICK)

    async def _exchange_hints_loop(self) -> None:
        while True:
            await trio.sleep(HINT_INTERVAL * (0.5 + random.random()))
            peers = self.membership.sample(1)
            if peers:
                self.say_hello(peers[0].peer_id, peers[0].addrs)

    async def greet(self, peer_id: str, addrs: tuple[str, ...]) -> bool:
        """Say hello to `peer_id` now, and wait for its answer: whether it is live. (A requester
        checks a worker found in the DHT directly, with a fresh record, before it sends work.)"""
        if self.membership.is_live(peer_id):
            return True
        under_way = self.dialing.get(peer_id)
        if under_way is None:
            self.dialing[peer_id] = trio.Event()
            await self._contact(peer_id, addrs, trio.CapacityLimiter(1))
        else:  # (its outcome)
            with trio.move_on_after(HELLO_TIMEOUT):
                await under_way.wait()
        return self.membership.is_live(peer_id)

    async def _contact(
        self, peer_id: str, addrs: tuple[str, ...], limiter: trio.CapacityLimiter
    ) -> None:
        try:
            async with limiter:
                ok = False
                with trio.move_on_after(HELLO_TIMEOUT):
                    try:
                        await rrelay.connect(self._host, peer_id, addrs, HELLO_TIMEOUT - 1)
                        stream = await self._host.new_stream(
                            ID.from_base58(peer_id), [protocols.HELLO]
                        )
                        fs = FramedStream(
                            stream, (protocols.HelloReply,), protocols.HELLO_MAX_FRAME
                        )
                        hello = protocols.Hello(self._signed_record(), self._hints(peer_id))
                        try:
                            await fs.send(hello)
                            reply = await fs.receive_a(protocols.HelloReply)
                        except BaseException:
                            with trio.CancelScope(shield=True):
                                await fs.reset()  # released, not left half-open
                            raise
                        await fs.close()
                        rec = records.open_record(reply.record, time.time(), expect_peer=peer_id)
                        self._accept(peer_id, rec, reply.hints)
                        ok = True
                    except (wire.RemoteProtocolError, records.RecordError) as exc:
                        log.warning("hello to %s refused: %s", peer_id, exc)
                    except Exception as exc:  # (unreachable, gone, timed out)
                        log.debug("hello to %s failed: %r", peer_id, exc)
                if not ok:
                    self.membership.failed(peer_id, time.time())
        finally:
            ended = self.dialing.pop(peer_id, None)
            if ended is not None:
                ended.set()

    async def handle(self, stream: Any) -> None:
        """The `/rain/hello` handler."""
        fs = FramedStream(stream, (protocols.Hello,), protocols.HELLO_MAX_FRAME)
        remote = fs.remote_peer
        hello = await fs.receive_a(protocols.Hello, HELLO_TIMEOUT)
        try:
            rec = records.open_record(hello.record, time.time(), expect_peer=remote)
        except records.RecordError as exc:
            raise wire.RemoteProtocolError(str(exc)) from None
        await fs.send(protocols.HelloReply(self._signed_record(), self._hints(remote)))
        await fs.close()
        self._accept(remote, rec, hello.hints)

    def _accept(
        self, peer_id: str, rec: records.NodeRecord, hints: tuple[protocols.PeerHint, ...]
    ) -> None:
        now = time.time()
        joined = self.membership.contacted(peer_id, now, rec)
        self.membership.learn_hints(peer_id, [Hint(h.peer_id, tuple(h.addrs)) for h in hints], now)
        if joined:
            log.info("peer joined: %s (%s, %d CPUs)", peer_id, rec.state, rec.cpus)
        if self._nursery is not None:
            self._nursery.start_soon(self._on_contact, peer_id, joined)
