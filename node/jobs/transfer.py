"""Files in and out of jobs, over the job stream, in bounded chunks with their hashes checked.

A job's inputs go requester -> worker before it runs, its results worker -> requester after the
exchange is countersigned. Both directions announce the files first (path, size, sha256, in the
offer or in the signed result manifest) and then send `CHUNK`-sized pieces in order. `Incoming`
is the receiving side's bookkeeping: it writes each piece to disk as it arrives (memory stays
bounded whatever the size), refuses anything out of order or past the announced size, and on
`finish()` checks every file's size and sha256. Disk I/O runs in worker threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import trio

from node.jobs import blocking
from rainnet import jobproto, wire

MIN_RATE = 256 * 1024  # bytes/s: the slowest transfer a job or a result is allowed


class TransferError(wire.RemoteProtocolError):
    """The sender broke the announced manifest (order, size or hash): the sender's fault."""


class Incoming:
    """Receive the files of `entries` into `directory` (named by index), checking as it goes."""

    def __init__(self, entries: Sequence[jobproto.FileEntry], directory: Path) -> None:
        self.entries = list(entries)
        self.directory = directory
        self._sizes = [0] * len(self.entries)
        self._hashes = [hashlib.sha256() for _ in self.entries]
        self._files: dict[int, BinaryIO] = {}

    def path(self, index: int) -> Path:
        return self.directory / str(index)

    def add(self, index: int, offset: int, data: bytes) -> None:
        """Blocking (a file write): call through trio.to_thread."""
        if not 0 <= index < len(self.entries):
            raise TransferError(f"chunk for file {index} of {len(self.entries)}")
        if offset != self._sizes[index]:
            raise TransferError(f"chunk of file {index} at {offset}, expected {self._sizes[index]}")
        if offset + len(data) > self.entries[index].size:
            raise TransferError(f"file {index} grows past its announced size")
        f = self._files.get(index)
        if f is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            f = self._files[index] = open(self.path(index), "wb")  # noqa: SIM115 - kept open
        f.write(data)
        self._sizes[index] += len(data)
        self._hashes[index].update(data)

    def finish(self) -> list[Path]:
        """Blocking: close the files and check each against its entry; their paths."""
        self.close()
        for i, entry in enumerate(self.entries):
            if self._sizes[i] != entry.size:
                raise TransferError(f"{entry.path}: {self._sizes[i]} of {entry.size} bytes came")
            if self._hashes[i].digest() != entry.sha256:
                raise TransferError(f"{entry.path}: the bytes do not match the announced sha256")
            if entry.size == 0:
                self.path(i).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.path(i).touch()
        return [self.path(i) for i in range(len(self.entries))]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class MessageSource(Protocol):
    """What file chunks are read from: a FramedStream, or a job's stream (node.jobs.stream)."""

    async def receive(self, timeout: float = ...) -> Any: ...


async def receive(
    fs: MessageSource,
    incoming: Incoming,
    chunk_type: type[jobproto.InputChunk] | type[jobproto.OutputChunk],
    done_type: type[jobproto.InputDone] | type[jobproto.OutputDone],
    timeout: float,
) -> list[Path]:
    """Receive chunks until the done message; the checked files' paths.

    `timeout` bounds the wait for each message; the whole transfer is bounded too, by the
    announced size at MIN_RATE, so a sender trickling a chunk just inside `timeout` cannot hold
    a job's slot (or a result) for ever.
    """
    total = sum(e.size for e in incoming.entries)
    with trio.move_on_after(timeout + total / MIN_RATE) as scope:
        try:
            while True:
                msg = await fs.receive(timeout)
                if isinstance(msg, done_type):
                    return await blocking.run(incoming.finish)
                if not isinstance(msg, chunk_type):
                    raise TransferError(f"{msg.TYPE} in the middle of a file transfer")
                await blocking.run(incoming.add, msg.index, msg.offset, msg.data)
        finally:
            incoming.close()
    assert scope.cancelled_caught
    raise TransferError(f"{total} bytes announced, not sent at {MIN_RATE >> 10} KiB/s or more")


def file_entry(path: str, source: Path) -> jobproto.FileEntry:
    """The entry of a file on disk (blocking: reads it through once)."""
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return jobproto.FileEntry(path=path, size=size, sha256=digest.digest())


async def send(
    send_chunk: Callable[[int, int, bytes], Awaitable[None]],
    sources: Sequence[Path | bytes],
) -> None:
    """Send each source (a file on disk, or bytes in memory) in CHUNK pieces, in order."""
    for index, source in enumerate(sources):
        if isinstance(source, bytes):
            for offset in range(0, len(source), jobproto.CHUNK):
                await send_chunk(index, offset, source[offset : offset + jobproto.CHUNK])
            continue
        # (Most results are small: the first read takes the whole file, in one thread hop.)
        data, f = await blocking.run(_first_chunk, source)
        try:
            offset = 0
            while data:
                await send_chunk(index, offset, data)
                offset += len(data)
                data = await blocking.run(f.read, jobproto.CHUNK) if f else b""
        finally:
            if f is not None:
                f.close()


def _first_chunk(path: Path) -> tuple[bytes, BinaryIO | None]:
    """The first chunk of a file, and the file still open if there is more (else None)."""
    f = open(path, "rb")  # noqa: SIM115 - returned open, closed by the caller
    try:
        data = f.read(jobproto.CHUNK)
    except BaseException:
        f.close()
        raise
    if len(data) < jobproto.CHUNK:
        f.close()
        return data, None
    return data, f
