"""The requester's jobs on disk (`HOME/jobs.sqlite3`), so submissions survive a restart; and the
workers it no longer trusts (outvoted by the replicas of a job), so that survives too.

A job is written when the user's submission is accepted and when it ends, each one short write
transaction (SQLite WAL): after the node's process dies at any instant, it finds every job it
accepted and drives the unfinished ones again (states in between are not worth an fsync: a
restarted job is offered afresh anyway). Payment needs no record here: the ledger keeps it,
with synchronous=FULL, and refuses to pay a job twice. synchronous=NORMAL here: in WAL mode a
commit survives the process's death; only a power cut may lose the last few, which the user
then submits again.
`JobStore`'s calls block: the node makes them through `GroupCommit` or in a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import trio

from node.jobs import blocking
from node.jobs.requester.record import QUEUE_LIMIT, JobRecord, JobState
from rainnet.jobproto import FileEntry
from sandbox import JobSpec

JOBS_FILE = "jobs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT PRIMARY KEY,
    spec        BLOB NOT NULL,   -- msgpack of JobSpec.to_wire()
    inputs      BLOB NOT NULL,   -- msgpack of [[path, size, sha256, local source], ...]
    state       TEXT NOT NULL,
    worker      TEXT,
    attempts    INTEGER NOT NULL,
    replicas    INTEGER NOT NULL,
    submitted   REAL NOT NULL,
    started     REAL,
    ended       REAL,
    cpu_seconds REAL NOT NULL,
    credit      REAL NOT NULL,
    exit_code   INTEGER,
    reason      TEXT,
    error       TEXT,
    outputs     TEXT NOT NULL,   -- JSON list of output paths
    claim       TEXT,            -- the ledger exchange that paid it (a task session's group)
    meta        TEXT NOT NULL DEFAULT '{}'  -- JSON: name, queue_limit, peak_memory
) STRICT;
CREATE TABLE IF NOT EXISTS untrusted (  -- workers caught out: offered nothing again, a while
    peer_id     TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL,   -- the job it was caught out on
    since       REAL NOT NULL,
    reason      TEXT NOT NULL DEFAULT ''  -- what it did (outvoted, overcharged, withheld...)
) STRICT;
"""
MAX_UNTRUSTED = 10_000  # the oldest are forgotten beyond this
UNTRUSTED_FOR = 3 * 86400.0  # seconds a worker caught out stays untrusted (unless forgiven)


@dataclass(frozen=True)
class Untrusted:
    """A worker this requester offers nothing for now, and why."""

    peer_id: str
    job_id: str
    since: float
    reason: str


class JobStore:
    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(jobs)")}
            if "claim" not in columns:  # a store from before task sessions
                self._conn.execute("ALTER TABLE jobs ADD COLUMN claim TEXT")
            if "meta" not in columns:  # a store from before names and queue limits
                self._conn.execute("ALTER TABLE jobs ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'")
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(untrusted)")}
            if "reason" not in columns:  # a store from before reasons were kept
                self._conn.execute(
                    "ALTER TABLE untrusted ADD COLUMN reason TEXT NOT NULL DEFAULT ''"
                )

    def save_all(self, jobs: Sequence[JobRecord]) -> None:
        """Store these jobs' states in one transaction (from the thread that owns them)."""
        self.write(rows(jobs))

    def write(self, rows: Sequence[Row]) -> None:
        """Store rows made by `rows` in one transaction (a settled group ends together)."""
        if not rows:
            return
        sql = f"INSERT OR REPLACE INTO jobs VALUES ({', '.join('?' * len(rows[0]))})"
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(sql, rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def load(self) -> list[JobRecord]:
        """Every job stored, oldest first, as records to drive (or show) again."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM jobs ORDER BY submitted").fetchall()
        return [_record(r) for r in rows]

    def distrust(self, peer_id: str, job_id: str, now: float, reason: str = "") -> None:
        """Remember that `peer_id` was caught out on `job_id` (outvoted by the job's replicas,
        overcharging, withholding a result it was paid for)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO untrusted VALUES (?, ?, ?, ?)",
                (peer_id, job_id, now, reason),
            )
            self._conn.execute(
                "DELETE FROM untrusted WHERE peer_id NOT IN "
                "(SELECT peer_id FROM untrusted ORDER BY since DESC LIMIT ?)",
                (MAX_UNTRUSTED,),
            )

    def untrusted(self, now: float) -> set[str]:
        """The workers caught out within UNTRUSTED_FOR of `now` (the mark does not last for
        ever: an honest worker may be outvoted by a job that is not deterministic)."""
        return {u.peer_id for u in self.untrusted_list(now)}

    def untrusted_list(self, now: float) -> list[Untrusted]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT peer_id, job_id, since, reason FROM untrusted WHERE since > ? "
                "ORDER BY since DESC",
                (now - UNTRUSTED_FOR,),
            ).fetchall()
        return [Untrusted(*row) for row in rows]

    def forgive(self, peer_id: str) -> bool:
        """Trust `peer_id` again; whether it was untrusted."""
        with self._lock:
            cur = self._conn.execute("DELETE FROM untrusted WHERE peer_id = ?", (peer_id,))
            return cur.rowcount > 0

    def forget_all(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            self._conn.executemany("DELETE FROM jobs WHERE job_id = ?", [(j,) for j in job_ids])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# A job record is mapped to a row here and back, nowhere else.

Row = tuple[Any, ...]


def rows(jobs: Sequence[JobRecord]) -> list[Row]:
    """The rows of these jobs as they stand now (made where the records live, written in a
    thread: the records keep changing meanwhile)."""
    return [_row(job) for job in jobs]


def _row(job: JobRecord) -> Row:
    inputs = [
        [e.path, e.size, e.sha256, str(src)]
        for e, src in zip(job.inputs, job.input_sources, strict=True)
    ]
    return (
        job.job_id,
        msgpack.packb(job.spec.to_wire(), use_bin_type=True),
        msgpack.packb(inputs, use_bin_type=True),
        job.state.value,
        job.worker,
        job.attempts,
        job.replicas,
        job.submitted,
        job.started,
        job.ended,
        job.cpu_seconds,
        job.credit,
        job.exit_code,
        job.reason,
        job.error,
        json.dumps(job.outputs),
        job.claim,
        json.dumps(
            {"name": job.name, "queue_limit": job.queue_limit, "peak_memory": job.peak_memory}
        ),
    )


def _record(r: Row) -> JobRecord:
    inputs = msgpack.unpackb(r[2], raw=False)
    state = JobState(r[3])
    meta = json.loads(r[17])
    job = JobRecord(
        job_id=r[0],
        spec=JobSpec.from_wire(msgpack.unpackb(r[1], raw=False)),
        inputs=tuple(FileEntry(path, size, sha) for path, size, sha, _ in inputs),
        input_sources=tuple(Path(src) for *_, src in inputs),
        replicas=r[6],
        submitted=r[7],
        state=state,
        worker=r[4],
        attempts=r[5],
        started=r[8],
        ended=r[9],
        cpu_seconds=r[10],
        credit=r[11],
        exit_code=r[12],
        reason=r[13],
        error=r[14],
        outputs=json.loads(r[15]),
        claim=r[16],
        name=meta.get("name"),
        queue_limit=meta.get("queue_limit", QUEUE_LIMIT),
        peak_memory=meta.get("peak_memory"),
    )
    job.output_loaded = state is not JobState.DONE
    if job.worker:
        job.accepted_by.add(job.worker)
    if state.finished:
        job.finished.set()
        job.cancel.set()
    return job


@dataclass
class _Batch:
    written: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None


class GroupCommit:
    """Job states saved from trio: saves asked for while one is being written go together in
    the next transaction, so under load one thread hop stores many."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._unsaved: dict[str, JobRecord] = {}
        self._next = _Batch()
        self._saving = False

    async def save(self, job: JobRecord) -> None:
        """Store the job's state; returns once it is on disk (or raises the store's error)."""
        self._unsaved[job.job_id] = job
        batch = self._next
        if self._saving:
            await batch.written.wait()
        else:
            self._saving = True
            try:
                with trio.CancelScope(shield=True):  # others wait on this writer
                    while self._unsaved:
                        jobs, self._unsaved = list(self._unsaved.values()), {}
                        writing, self._next = self._next, _Batch()
                        try:
                            await blocking.run(self._store.write, rows(jobs))
                        except Exception as exc:
                            writing.error = exc
                        writing.written.set()
            finally:
                self._saving = False
        if batch.error is not None:
            raise batch.error

    async def save_now(self, jobs: Sequence[JobRecord]) -> None:
        """Store these jobs together in one transaction of their own (a submission, a group)."""
        await blocking.run(self._store.write, rows(jobs))
