"""The trio edge of the wire codec: framed messages over a libp2p stream, every wait bounded.

`FramedStream` reads in bounded chunks of its own (py-libp2p's read helpers give up on large
messages), feeds them to the sans-io `FrameDecoder`, and turns every failure into one of two
exceptions: `RemoteProtocolError` (the remote broke the protocol) or `StreamGone` (the stream or
connection ended). `guarded_handler` wraps a stream handler so that nothing it raises reaches
py-libp2p, which tears the whole host down when a handler raises.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

import trio

from rainnet import wire

log = logging.getLogger("rainnet.streams")

READ_CHUNK = 64 * 1024
DEFAULT_TIMEOUT = 10.0
M = TypeVar("M", bound=wire.Message)


class StreamGone(Exception):
    """The stream closed, was reset, or its connection died (nobody's fault in particular)."""


class ProtocolNotSupported(StreamGone):
    """The remote answered the protocol we proposed with something else (multistream "na"):
    it does not serve it (any more), e.g. a node that no longer lends."""


class MessageChannel(Protocol):
    """What sends and receives typed messages with bounded waits: a FramedStream, or a stream
    whose messages also pass through a conversation's rules (node.jobs.stream)."""

    async def send(self, msg: wire.Message, timeout: float = DEFAULT_TIMEOUT) -> None: ...

    async def receive_a(self, kind: type[M], timeout: float = DEFAULT_TIMEOUT) -> M: ...


class FramedStream:
    def __init__(
        self,
        stream: Any,
        expected: Iterable[type[wire.Message]],
        max_frame: int = wire.DEFAULT_MAX_FRAME,
    ) -> None:
        self.stream = stream
        self._max_frame = max_frame
        self._decoder = wire.FrameDecoder(expected, max_frame)
        self._pending: list[wire.Message] = []
        # One writer at a time: a message larger than the peer's yamux window goes out in
        # several writes, and a second task's message (a job's progress beside its output)
        # must not land between them. Seen: 7 of 8 busy job streams corrupted that way.
        self._writing = trio.StrictFIFOLock()
        self._torn: str | None = None  # a write cut off midway: the stream is unusable

    @property
    def remote_peer(self) -> str:
        return str(self.stream.muxed_conn.peer_id)

    async def send(self, msg: wire.Message, timeout: float = DEFAULT_TIMEOUT) -> None:
        frame = wire.encode(msg, self._max_frame)
        if self._torn is not None:
            raise StreamGone(self._torn)
        with trio.move_on_after(timeout) as scope:
            try:
                async with self._writing:
                    try:
                        await self.stream.write(frame)
                    except BaseException:
                        # Part of the message may be out: nothing written after it would parse.
                        self._torn = f"a write was cut off ({msg.TYPE})"
                        raise
            except trio.Cancelled:
                raise
            except Exception as exc:
                raise StreamGone(f"write failed: {exc!r}") from None
        if scope.cancelled_caught:
            raise StreamGone(f"write timed out after {timeout:.1f} s")

    async def receive(self, timeout: float = DEFAULT_TIMEOUT) -> wire.Message:
        """The next message; StreamGone at EOF/reset/timeout, RemoteProtocolError if malformed."""
        with trio.move_on_after(timeout) as scope:
            while not self._pending:
                try:
                    data = await self.stream.read(READ_CHUNK)
                except (trio.Cancelled, ProtocolNotSupported):
                    raise
                except Exception as exc:
                    raise StreamGone(f"read ended: {type(exc).__name__}") from None
                if not data:
                    raise StreamGone("read ended: EOF")
                self._pending.extend(self._decoder.feed(data))
        if scope.cancelled_caught:
            raise StreamGone(f"no message within {timeout:.1f} s")
        return self._pending.pop(0)

    async def receive_a(self, kind: type[M], timeout: float = DEFAULT_TIMEOUT) -> M:
        msg = await self.receive(timeout)
        if not isinstance(msg, kind):
            raise wire.RemoteProtocolError(f"expected {kind.TYPE}, got {msg.TYPE}")
        return msg

    async def close(self) -> None:
        with trio.move_on_after(2):
            with contextlib.suppress(Exception):
                await self.stream.close()

    async def reset(self) -> None:
        with trio.move_on_after(2):
            with contextlib.suppress(Exception):
                await self.stream.reset()


def guarded_handler(
    name: str, handler: Callable[[Any], Awaitable[None]], *, close_when_done: bool = True
) -> Callable[[Any], Awaitable[None]]:
    """A stream handler that logs and resets on any failure instead of raising into py-libp2p,
    and closes the stream when the handler returns (py-libp2p keeps a stream, and its slot in
    the resource manager, until both ends have closed it) unless `close_when_done` is False:
    for a handler that hands the stream on (a relayed connection runs over it)."""

    async def guarded(stream: Any) -> None:
        try:
            await handler(stream)
            if close_when_done:
                with trio.move_on_after(2), contextlib.suppress(Exception):
                    await stream.close()
        except wire.RemoteProtocolError as exc:
            log.warning("%s: closing stream from %s: %s", name, _peer_of(stream), exc)
            await _reset(stream)
        except StreamGone as exc:
            log.debug("%s: stream from %s gone: %s", name, _peer_of(stream), exc)
            await _reset(stream)
        except trio.Cancelled:
            raise
        except Exception:
            log.exception("%s: handler failed on a stream from %s", name, _peer_of(stream))
            await _reset(stream)

    return guarded


def _peer_of(stream: Any) -> str:
    try:
        return str(stream.muxed_conn.peer_id)
    except Exception:
        return "?"


async def _reset(stream: Any) -> None:
    with trio.move_on_after(2):
        with contextlib.suppress(Exception):
            await stream.reset()
