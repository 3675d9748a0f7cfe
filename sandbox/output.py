"""A job's stdout and stderr: captured up to a cap, and streamable while the job runs.

The backends feed bytes in as they arrive; any number of readers can iterate the chunks from the
start and then follow new ones until the job's streams close. Past the cap, bytes are counted and
dropped (the sandbox keeps draining the pipes so a chatty job never blocks on a full pipe, and a
stranger can never make the worker hold more than the cap in memory).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio


class Stream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True)
class OutputChunk:
    stream: Stream
    data: bytes


class OutputBuffer:
    """Both output streams of one job, each kept up to `cap` bytes."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._chunks: list[OutputChunk] = []
        self._kept = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._seen = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._closed = False
        self._changed = trio.Event()

    def feed(self, stream: Stream, data: bytes) -> None:
        """Record bytes that arrived on `stream` (the part over the cap is only counted)."""
        if not data:
            return
        self._seen[stream] += len(data)
        room = self._cap - self._kept[stream]
        if room <= 0:
            return
        kept = data[:room]
        self._kept[stream] += len(kept)
        self._chunks.append(OutputChunk(stream, kept))
        self._wake()

    def close(self) -> None:
        """No more output will come (the job's streams are closed)."""
        self._closed = True
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    def value(self, stream: Stream) -> bytes:
        return b"".join(c.data for c in self._chunks if c.stream is stream)

    def truncated(self, stream: Stream) -> bool:
        return self._seen[stream] > self._kept[stream]

    async def chunks(self) -> AsyncIterator[OutputChunk]:
        """Every kept chunk from the beginning, then new ones as they come, until closed."""
        index = 0
        while True:
            while index < len(self._chunks):
                yield self._chunks[index]
                index += 1
            if self._closed:
                return
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
