"""Who is alive: one heartbeat stream per live peer (`/rain/heartbeat`), and expiry.

A watcher task per peer in the view pings it every heartbeat interval on one long-lived stream
and records each answer (with its round trip) in the membership view; a pong that names a newer
record of the peer than ours has us fetch it with a hello. A peer silent for the peer timeout
leaves the view (`expire_loop`) and its connection is closed; it comes back by itself when it
is heard of again. The handler side answers pings, and says hello to a peer that pings us while
we have lost it, unless we parted from it (trimmed it: rainnet.connections), which the pong
tells it: it parts from us too, and neither redials the other but when its neighbourhood needs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import trio
from libp2p.peer.id import ID

from rainnet import host as rhost
from rainnet import protocols, wire
from rainnet.membership import Membership, Source
from rainnet.streams import FramedStream, StreamGone

log = logging.getLogger("rainnet.node")

EXPIRY_TICK = 0.5


class Liveness:
    def __init__(
        self,
        host: Any,
        membership: Membership,
        heartbeat_interval: float,
        peer_timeout: float,
        own_seq: Callable[[], int],
        refresh: Callable[[str, int], None],
    ) -> None:
        self._host = host
        self.membership = membership
        self.interval = heartbeat_interval
        self.peer_timeout = peer_timeout
        self._own_seq = own_seq  # our record's sequence number, told in every ping and pong
        self._refresh = refresh  # a peer told of a newer record of its own: fetch it
        self._watched: set[str] = set()
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._expire_loop)

    def watch(self, peer_id: str) -> None:
        """Keep a heartbeat stream to `peer_id` while it is live (once per peer)."""
        if peer_id in self._watched or self._nursery is None:
            return
        self._watched.add(peer_id)
        self._nursery.start_soon(self._watcher, peer_id)

    async def _watcher(self, peer_id: str) -> None:
        """Ping `peer_id` every heartbeat interval on one long-lived stream while it is live."""
        timeout = max(1.0, min(3.0, self.peer_timeout / 3))
        fs: FramedStream | None = None
        nonce = 0
        try:
            while self.membership.is_live(peer_id):
                try:
                    if fs is None:
                        rhost.allow_redial(self._host, peer_id)
                        with trio.fail_after(timeout):
                            stream = await self._host.new_stream(
                                ID.from_base58(peer_id), [protocols.HEARTBEAT]
                            )
                        fs = FramedStream(stream, (protocols.Pong,), protocols.HEARTBEAT_MAX_FRAME)
                    nonce += 1
                    sent = trio.current_time()
                    await fs.send(protocols.Ping(nonce=nonce, record_seq=self._own_seq()), timeout)
                    pong = await fs.receive_a(protocols.Pong, timeout)
                    if pong.nonce != nonce:
                        raise wire.RemoteProtocolError(f"pong for {pong.nonce}, expected {nonce}")
                    if pong.parting:
                        log.debug("%s trimmed its connection to us", peer_id)
                        self.membership.part(peer_id, time.time())
                        break
                    self.membership.contacted(peer_id, time.time(), rtt=trio.current_time() - sent)
                    self._refresh(peer_id, pong.record_seq)
                except Exception as exc:  # (too slow, gone, broken: the next ping tries again)
                    log.debug("heartbeat to %s failed: %r", peer_id, exc)
                    if fs is not None:
                        await fs.reset()
                        fs = None
                await trio.sleep(self.interval)
        finally:
            self._watched.discard(peer_id)
            if fs is not None:
                await fs.close()

    async def handle(self, stream: Any) -> None:
        """The `/rain/heartbeat` handler: answer pings until the peer goes quiet."""
        fs = FramedStream(stream, (protocols.Ping,), protocols.HEARTBEAT_MAX_FRAME)
        remote = fs.remote_peer
        idle_limit = self.peer_timeout * 3
        while True:
            try:
                ping = await fs.receive_a(protocols.Ping, idle_limit)
            except StreamGone:
                return
            peer = self.membership.peers.get(remote)
            parting = peer is not None and peer.parted and not peer.live
            await fs.send(
                protocols.Pong(nonce=ping.nonce, record_seq=self._own_seq(), parting=parting)
            )
            if parting:
                return
            now = time.time()
            if self.membership.is_live(remote):
                self.membership.contacted(remote, now)
                self._refresh(remote, ping.record_seq)
            else:
                # It thinks we are alive but we lost it (or never met it): say hello again.
                self.membership.learn(remote, (), Source.INBOUND, now)

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRY_TICK)
            for peer_id in self.membership.expire(time.time()):
                log.info("peer left: %s (no answer for %.0f s)", peer_id, self.peer_timeout)
                with trio.move_on_after(2), contextlib.suppress(Exception):
                    await self._host.disconnect(ID.from_base58(peer_id))
