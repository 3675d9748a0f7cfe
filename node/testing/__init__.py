"""A kit for testing the node's trio code in memory, as trio ships `trio.testing`.

- `network`: streams between peers in memory, with fake peer ends and handlers per protocol;
- `backend`: a scripted sandbox backend (jobs that do what their argv says, with no process);
- `job_world`: a requester and workers wired together in memory, each with a temporary ledger
  (called inline, not in a thread) and job store, their real Requester and Worker code;
- a mock clock: `trio.testing.MockClock` (`trio.run(..., clock=MockClock(autojump_threshold=0))`)
  makes leases and timeouts pass at once; in a `job_world` the ledger, the job stores, held
  results and file transfers are called inline, so the clock never jumps past a thread's work.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ledger.service import Ledger
from node.jobs import blocking
from node.jobs.core import scheduler
from node.jobs.requester import Requester
from node.jobs.requester.store import JobStore
from node.jobs.worker import Worker
from node.jobs.worker import sessions as task_sessions
from node.ledger_link import LedgerLink
from node.testing.backend import ScriptedBackend
from node.testing.network import MemoryNetwork, MemoryPeer
from rainnet import jobproto, records
from rainnet.identity import Identity
from sandbox.config import SandboxConfig

GiB = 1 << 30


def temporary_ledger(home: Path, me: Identity) -> LedgerLink:
    """A ledger in `home` (made if need be), called inline, on trio's clock (see above): claims
    are stamped, and judged overdue, in the test's own time."""
    home.mkdir(parents=True, exist_ok=True)
    epoch = time.time() - trio.current_time()
    return LedgerLink(
        Ledger.open(home, me, synchronous="NORMAL"),
        in_thread=False,
        clock=lambda: epoch + trio.current_time(),
    )


def worker_record(peer_id: str, cpus: int = 2, memory: int = 4 * GiB) -> records.NodeRecord:
    """The record a worker would sign of itself: idle, with the native backend."""
    return records.NodeRecord(
        peer_id=peer_id,
        addrs=(),
        cpus=cpus,
        memory=memory,
        gpus=0,
        backends=("native",),
        version="test",
        state="idle",
        seq=1,
        issued_at=time.time(),
        ttl=300,
    )


@dataclass
class WorkerSide:
    me: Identity
    peer: MemoryPeer
    ledger: LedgerLink
    worker: Worker
    backend: ScriptedBackend
    # What the idle policy says: None lets guests in (set it to a reason: the owner is back).
    owner_back: str | None = None


@dataclass
class JobWorld:
    """A requester and its workers, in memory."""

    net: MemoryNetwork
    me: Identity
    peer: MemoryPeer
    ledger: LedgerLink
    requester: Requester
    workers: list[WorkerSide] = field(default_factory=list)
    records: dict[str, records.NodeRecord] = field(default_factory=dict)

    def candidates(self) -> list[scheduler.Candidate]:
        return [scheduler.Candidate(rec, 0.001) for rec in self.records.values()]

    def add_worker(self, home: Path, cpus: int = 2) -> WorkerSide:
        me = Identity.generate()
        peer = self.net.peer(me.peer_id)
        ledger = temporary_ledger(home / "ledger", me)
        backend = ScriptedBackend(SandboxConfig(workdir=home / "sandbox"))
        side: WorkerSide

        def may_start() -> str | None:
            return side.owner_back

        worker = Worker(
            {"native": backend},
            ledger,
            scheduler.Capacity(cpus=float(cpus), memory=4 * GiB),
            may_start,
            peer.open_stream,
            home / "work",
        )
        side = WorkerSide(me, peer, ledger, worker, backend)
        peer.handle(jobproto.JOB, worker.handle)
        peer.handle(jobproto.TASKS, lambda raw: task_sessions.serve(worker, raw))
        self.workers.append(side)
        self.records[me.peer_id] = worker_record(me.peer_id, cpus)
        return side


@contextlib.asynccontextmanager
async def job_world(home: Path, workers: int = 1, cpus: int = 2) -> AsyncIterator[JobWorld]:
    """A running requester and `workers` workers (of `cpus` CPUs each) in memory, under `home`;
    everything is cancelled when the block ends. Blocking calls run inline (node.jobs.blocking),
    so a mock clock with autojump_threshold=0 jumps only when every task truly waits."""
    with blocking.inline():
        async with _world(home, workers, cpus) as world:
            yield world


@contextlib.asynccontextmanager
async def _world(home: Path, workers: int, cpus: int) -> AsyncIterator[JobWorld]:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery)
        me = Identity.generate()
        peer = net.peer(me.peer_id)
        ledger = temporary_ledger(home / "requester" / "ledger", me)
        holder: list[JobWorld] = []

        def candidates() -> list[scheduler.Candidate]:
            return holder[0].candidates() if holder else []

        requester = Requester(
            ledger,
            candidates,
            peer.open_stream,
            home / "requester" / "jobs",
            JobStore(_made(home / "requester") / "jobs.sqlite3"),
        )
        peer.handle(jobproto.RESULT, requester.handle_result)
        world = JobWorld(net, me, peer, ledger, requester)
        holder.append(world)
        for i in range(workers):
            world.add_worker(home / f"worker{i}", cpus)
        await nursery.start(requester.run)
        try:
            yield world
        finally:
            nursery.cancel_scope.cancel()
            requester.store.close()


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


async def until(ready: Callable[[], bool], within: float = 60) -> None:
    """Poll (trio time) until `ready()`, at most `within` seconds: for states that have no
    event of their own (who is untrusted, what a worker holds)."""
    with trio.fail_after(within):
        while not ready():  # noqa: ASYNC110
            await trio.sleep(0.1)


__all__ = [
    "JobWorld",
    "MemoryNetwork",
    "ScriptedBackend",
    "WorkerSide",
    "job_world",
    "temporary_ledger",
    "until",
    "worker_record",
]
