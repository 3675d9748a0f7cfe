"""A job's stdout and stderr: captured up to a cap, and streamable while the job runs.

The backends feed bytes in as they arrive; any number of readers can iterate the chunks from the
start and then follow new ones until the job's streams close. Past the cap, bytes are counted and
dropped (the sandbox keeps draining the pipes so a chatty job never blocks on a full pipe, and a
stranger can never make the worker hold more than the cap in memory).

The worker's memory for it is bounded and given back: each stream is kept in an anonymous mapping
of its cap, whose pages are committed only as output arrives and all returned to the system when
it is unmapped. (Kept as the 64 KiB pieces pipes deliver, output sat in the allocator's heap long
after its job: the worker's RSS rose from 0.1 to 1.3 GB and stayed there.) The order of the two
streams is kept as marks, 8 bytes each and at most `MAX_MARKS`, one where the job switched from one
stream to the other. When the job's streams close, each stream becomes one bytes object (the one
the result holds) and its mapping goes. The caps themselves count against the job's memory limit
(`Limits.output_memory`).
"""

from __future__ import annotations

import array
import enum
import mmap
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

# Marks past this many would cost more than they tell: from there on only the stream that wrote
# last keeps what comes, and the other's is dropped as if past its cap (it shows as truncated).
MAX_MARKS = 65536


class Stream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


_STREAMS = (Stream.STDOUT, Stream.STDERR)  # a mark's low bit is the index here


@dataclass(frozen=True)
class OutputChunk:
    stream: Stream
    data: bytes


class OutputBuffer:
    """Both output streams of one job, each kept up to `cap` bytes."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._maps: dict[Stream, mmap.mmap] = {}  # while open; made at a stream's first byte
        self._final: dict[Stream, bytes] = {}  # once closed
        self._kept = dict.fromkeys(_STREAMS, 0)
        self._seen = dict.fromkeys(_STREAMS, 0)
        # In arrival order: (end offset in its stream << 1) | the stream's index. Only the last
        # mark grows (its stream wrote again before the other did).
        self._marks = array.array("q")
        self._closed = False
        self._changed = trio.Event()

    def feed(self, stream: Stream, data: bytes) -> None:
        """Record bytes that arrived on `stream` (the part over the cap is only counted)."""
        if not data or self._closed:
            return
        dropping = self._seen[stream] > self._kept[stream]  # what is kept stays a prefix
        self._seen[stream] += len(data)
        bit = _STREAMS.index(stream)
        grows = bool(self._marks) and self._marks[-1] & 1 == bit
        room = self._cap - self._kept[stream]
        if dropping or room <= 0 or not (grows or len(self._marks) < MAX_MARKS):
            return
        kept = data[:room]
        start = self._kept[stream]
        self._map(stream)[start : start + len(kept)] = kept
        self._kept[stream] = end = start + len(kept)
        if grows:
            self._marks[-1] = end << 1 | bit
        else:
            self._marks.append(end << 1 | bit)
        self._wake()

    def close(self) -> None:
        """No more output will come (the job's streams are closed): give the mappings back."""
        if self._closed:
            return
        for stream, mapped in self._maps.items():
            self._final[stream] = mapped[: self._kept[stream]]
            mapped.close()
        self._maps.clear()
        self._closed = True
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    def value(self, stream: Stream) -> bytes:
        return self._slice(stream, 0, self._kept[stream])

    def truncated(self, stream: Stream) -> bool:
        return self._seen[stream] > self._kept[stream]

    async def chunks(self) -> AsyncIterator[OutputChunk]:
        """Every kept byte from the beginning, then new ones as they come, until closed; in the
        order the streams wrote them (a late reader may get them in fewer, larger chunks)."""
        index = 0
        done = dict.fromkeys(_STREAMS, 0)  # bytes of each stream yielded so far
        while True:
            if index < len(self._marks):
                mark = self._marks[index]
                stream, end = _STREAMS[mark & 1], mark >> 1
                if end > done[stream]:
                    start, done[stream] = done[stream], end
                    yield OutputChunk(stream, self._slice(stream, start, end))
                    continue  # (it may have grown meanwhile)
                if index + 1 < len(self._marks):
                    index += 1
                    continue
            if self._closed:
                return
            await self._changed.wait()

    def _map(self, stream: Stream) -> mmap.mmap:
        mapped = self._maps.get(stream)
        if mapped is None:
            mapped = self._maps[stream] = mmap.mmap(-1, self._cap, flags=mmap.MAP_PRIVATE)
        return mapped

    def _slice(self, stream: Stream, start: int, end: int) -> bytes:
        if self._closed:
            return self._final.get(stream, b"")[start:end]
        mapped = self._maps.get(stream)
        return mapped[start:end] if mapped is not None else b""

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
