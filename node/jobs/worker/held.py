"""Results a worker holds for a requester that went away: `HOME/held/<job id>/`.

A worker keeps every result it offers, with its signed Finished message (the ledger proposal
inside), until the files are released or refused: if the requester vanishes after its job ran, or
the worker dies after being paid, the worker offers the same Finished again when the requester is
back (for up to `HOLD_SECONDS`), and the exchange goes on as if nothing had happened. Each held job
is a directory written whole before it is renamed into place, so a crash while keeping leaves
nothing half-kept. Blocking file I/O: call it from a thread.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rainnet import jobproto, wire
from sandbox.job import check_job_id

HOLD_SECONDS = 24 * 3600.0
MAX_HELD = 1000
MAX_HELD_BYTES = 8 << 30  # the held results' files together, at most (the oldest make room)
FINISHED = "finished.bin"
META = "meta.json"


class HeldResults:
    def __init__(
        self,
        directory: Path,
        hold_seconds: float = HOLD_SECONDS,
        max_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self.directory = directory
        self.hold_seconds = hold_seconds
        self.max_bytes = max_bytes
        # job id -> (requester, bytes held): what admission asks without reading the disk.
        # Filled by `index()`; kept by keep/drop/expire (called from worker threads: locked).
        self._index: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def index(self) -> None:
        """Read what is held (at start: results kept before a restart)."""
        found: dict[str, tuple[str, int]] = {}
        for job_id in self.job_ids():
            try:
                meta = json.loads((self.directory / job_id / META).read_text())
                size = sum(p.stat().st_size for p in (self.directory / job_id).iterdir())
            except (OSError, ValueError):
                continue
            found[job_id] = (str(meta.get("requester")), size)
        with self._lock:
            self._index = found

    def held_for(self, requester: str) -> set[str]:
        with self._lock:
            return {j for j, (r, _) in self._index.items() if r == requester}

    def held_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._index.values())

    def keep(
        self,
        job_id: str,
        requester: str,
        finished: jobproto.Finished,
        sources: Sequence[Path | bytes],
    ) -> list[Path]:
        """Hold the result of `job_id` (its files move here); the paths of the held files."""
        check_job_id(job_id)  # it names a directory here
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.drop(job_id)  # held twice (a retry): the newer copy replaces the older
        size = sum(len(s) if isinstance(s, bytes) else s.stat().st_size for s in sources)
        held = self.job_ids()
        # Full: the results held longest make room (their requesters have been gone longest).
        while held and (len(held) >= MAX_HELD or self.held_bytes() + size > self.max_bytes):
            oldest = min(held, key=lambda j: (self.directory / j).stat().st_mtime)
            self.drop(oldest)
            held.remove(oldest)
        staging = self.directory / f".{job_id}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        for index, source in enumerate(sources):
            target = staging / str(index)
            if isinstance(source, bytes):
                target.write_bytes(source)
                continue
            try:
                os.replace(source, target)  # the job's result directory goes away anyway
            except OSError:
                shutil.copyfile(source, target)  # another file system
        (staging / FINISHED).write_bytes(wire.encode_payload(finished))
        expires = time.time() + self.hold_seconds
        (staging / META).write_text(json.dumps({"requester": requester, "expires": expires}))
        staging.replace(self.directory / job_id)
        with self._lock:
            self._index[job_id] = (requester, size)
        return [self.directory / job_id / str(i) for i in range(len(sources))]

    def job_ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if not p.name.startswith("."))

    def for_requester(self, requester: str) -> list[str]:
        out = []
        for job_id in self.job_ids():
            try:
                meta = json.loads((self.directory / job_id / META).read_text())
            except (OSError, ValueError):
                continue
            if meta.get("requester") == requester:
                out.append(job_id)
        return out

    def load(self, job_id: str) -> tuple[jobproto.Finished, list[Path]]:
        d = self.directory / job_id
        msg = wire.decode_payload((d / FINISHED).read_bytes(), expected=(jobproto.Finished,))
        assert isinstance(msg, jobproto.Finished)
        return msg, [d / str(i) for i in range(len(msg.outputs))]

    def drop(self, job_id: str) -> None:
        shutil.rmtree(self.directory / job_id, ignore_errors=True)
        with self._lock:
            self._index.pop(job_id, None)

    def expire(self, now: float) -> list[str]:
        """Drop what was kept too long (and leftovers of an interrupted keep); their ids."""
        gone: list[str] = []
        if not self.directory.is_dir():
            return gone
        for path in self.directory.iterdir():
            if path.name.startswith("."):
                shutil.rmtree(path, ignore_errors=True)
                continue
            try:
                expires = float(json.loads((path / META).read_text())["expires"])
            except (OSError, ValueError, KeyError, TypeError):
                expires = 0.0
            if expires <= now:
                self.drop(path.name)
                gone.append(path.name)
        return gone
