"""Peers in memory: streams between them, each end named by its peer id, and handlers per
protocol, as the libp2p host gives the node. For driving the job protocol's real trio code
(requester against worker) without sockets.

    net = MemoryNetwork(nursery)
    alice, bob = net.peer(alice_id), net.peer(bob_id)
    bob.handle(jobproto.JOB, worker.handle)
    raw = await alice.open_stream(bob_id, jobproto.JOB)   # what Requester's open_stream returns

A handler runs in the network's nursery, guarded like the host's (nothing it raises escapes),
and its stream is closed when it returns. `vanish(peer)` resets every stream of that peer and
refuses new ones, as a cable pulled would; `come_back(peer)` undoes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from rainnet.streams import ProtocolNotSupported, StreamGone, guarded_handler

PIPE_CHUNKS = 64  # writes buffered one way before a writer waits for its reader
Handler = Callable[[Any], Awaitable[None]]


class StreamReset(Exception):
    """The stream was reset (by either end, or its peer vanished)."""


@dataclass(frozen=True)
class _Conn:
    """What a stream's `muxed_conn` says: who is at the other end."""

    peer_id: str


class _Pipe:
    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](PIPE_CHUNKS)
        self.reset = False


class MemoryStream:
    """One end of an in-memory stream: the calls FramedStream makes of a libp2p stream."""

    def __init__(self, remote: str, inbound: _Pipe, outbound: _Pipe) -> None:
        self.muxed_conn = _Conn(remote)
        self._in, self._out = inbound, outbound
        self._left = b""

    async def write(self, data: bytes) -> None:
        if self._out.reset or self._in.reset:
            raise StreamReset("write on a reset stream")
        if data:
            try:
                await self._out.send.send(bytes(data))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise StreamReset("write after close") from None

    async def read(self, n: int | None = None) -> bytes:
        if not self._left:
            if self._in.reset:
                raise StreamReset("read on a reset stream")
            try:
                self._left = await self._in.receive.receive()
            except trio.EndOfChannel:
                return b""
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise StreamReset("read on a reset stream") from None
        size = len(self._left) if n is None else n
        data, self._left = self._left[:size], self._left[size:]
        return data

    async def close(self) -> None:
        await self._out.send.aclose()

    async def reset(self) -> None:
        for pipe in (self._in, self._out):
            pipe.reset = True
            await pipe.send.aclose()
            await pipe.receive.aclose()


class _Refused(MemoryStream):
    """A stream the remote answered with multistream's "na": it does not serve the protocol."""

    def __init__(self, remote: str, protocol: str) -> None:
        super().__init__(remote, _Pipe(), _Pipe())
        self._protocol = protocol

    async def write(self, data: bytes) -> None:
        return None

    async def read(self, n: int | None = None) -> bytes:
        raise ProtocolNotSupported(f"the peer refused {self._protocol}")


def stream_pair(a: str, b: str) -> tuple[MemoryStream, MemoryStream]:
    """Two connected ends: the first is `a`'s (its remote is `b`), the second `b`'s."""
    a_to_b, b_to_a = _Pipe(), _Pipe()
    return MemoryStream(b, b_to_a, a_to_b), MemoryStream(a, a_to_b, b_to_a)


class MemoryPeer:
    def __init__(self, net: MemoryNetwork, peer_id: str) -> None:
        self._net = net
        self.peer_id = peer_id
        self.handlers: dict[str, Handler] = {}

    def handle(self, protocol: str, handler: Handler) -> None:
        self.handlers[protocol] = guarded_handler(protocol, handler)

    async def open_stream(self, peer_id: str, protocol: str, timeout: float = 8.0) -> Any:
        return await self._net.open(self.peer_id, peer_id, protocol)


class MemoryNetwork:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.peers: dict[str, MemoryPeer] = {}
        self._gone: set[str] = set()
        self._streams: dict[str, list[MemoryStream]] = {}
        self.opened: list[tuple[str, str, str]] = []  # (from, to, protocol), in order

    def peer(self, peer_id: str) -> MemoryPeer:
        return self.peers.setdefault(peer_id, MemoryPeer(self, peer_id))

    async def open(self, source: str, target: str, protocol: str) -> MemoryStream:
        """A stream from `source` to `target` for `protocol` (StreamGone if unreachable)."""
        await trio.lowlevel.checkpoint()
        peer = self.peers.get(target)
        if peer is None or target in self._gone or source in self._gone:
            raise StreamGone(f"cannot open {protocol} to {target}: unreachable")
        handler = peer.handlers.get(protocol)
        if handler is None:
            return _Refused(target, protocol)  # (as the host's: its first read says so)
        mine, theirs = stream_pair(source, target)
        for who, end in ((source, mine), (target, theirs)):
            self._streams.setdefault(who, []).append(end)
        self.opened.append((source, target, protocol))
        self._nursery.start_soon(handler, theirs)
        return mine

    async def vanish(self, peer_id: str) -> None:
        """Every stream of `peer_id` is reset and no new one opens, until `come_back`."""
        self._gone.add(peer_id)
        for end in self._streams.pop(peer_id, []):
            with contextlib.suppress(Exception):
                await end.reset()

    def come_back(self, peer_id: str) -> None:
        self._gone.discard(peer_id)
