"""The requester's and the worker's real trio code against each other in memory (node.testing):
streams in memory, a scripted sandbox, temporary ledgers, a mock clock. The happy path, the
declines, cancel, a lease lapse, a vanished worker and a vanished requester, task sessions and
their groups, and a worker that takes no sessions. Process tests of the same live in e2e."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from node.jobs.core.conversation import Kind, OfferReceived
from node.jobs.requester.record import JobRecord, JobState
from node.jobs.stream import JobStream
from node.testing import JobWorld, job_world, until
from rainnet import jobproto
from rainnet.identity import Identity
from sandbox import JobSpec, Limits

LIMITS = Limits(wall_seconds=30)


def _run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def _spec(*steps: str, limits: Limits = LIMITS) -> JobSpec:
    return JobSpec.create(list(steps), limits=limits)


async def _ended(*jobs: JobRecord, within: float = 600) -> None:
    with trio.fail_after(within):
        for job in jobs:
            await job.finished.wait()


async def _balance(ledger: Any) -> float:
    return float((await ledger.balance()).balance_milli) / 1000


def test_a_job_runs_is_paid_and_its_output_comes_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path) as world:
            [job] = await world.requester.submit([_spec("out:hello", "cpu:1.5", "exit:3")])
            await _ended(job)
            assert (job.state, job.exit_code, job.reason) == (JobState.DONE, 3, "nonzero_exit")
            assert bytes(job.stdout) == b"hello" and job.credit == 1.5 == job.cpu_seconds
            assert job.claim == job.job_id and job.worker == world.workers[0].me.peer_id
            # Both halves of the exchange are in both ledgers: one pays what the other earns.
            assert await _balance(world.ledger) == -1.5
            assert await _balance(world.workers[0].ledger) == 1.5

    _run(main)


def test_inputs_travel_before_the_job_starts(tmp_path: Path) -> None:
    async def main() -> None:
        data = tmp_path / "data.csv"
        data.write_bytes(b"a,b\n" * 1000)
        from node.jobs import transfer

        entry = await trio.to_thread.run_sync(transfer.file_entry, "data.csv", data)
        async with job_world(tmp_path) as world:
            [job] = await world.requester.submit([_spec("out:read")], ((entry, data),))
            await _ended(job)
            assert job.state is JobState.DONE and bytes(job.stdout) == b"read"

    _run(main)


def test_an_array_rides_task_sessions_and_is_paid_in_groups(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path, workers=2) as world:
            jobs = await world.requester.submit([_spec(f"out:{i}") for i in range(40)])
            await _ended(*jobs)
            assert all(j.state is JobState.DONE for j in jobs)
            assert [bytes(j.stdout) for j in jobs] == [str(i).encode() for i in range(40)]
            claims = {j.claim for j in jobs}
            assert len(claims) < len(jobs) / 2  # several jobs to a claim
            assert any(proto == jobproto.TASKS for _, _, proto in world.net.opened)

    _run(main)


def test_a_worker_whose_owner_is_back_declines_and_the_job_waits(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path) as world:
            side = world.workers[0]
            side.owner_back = "the owner is using this machine"
            [job] = await world.requester.submit([_spec("out:later")])
            await trio.sleep(20)
            assert not job.state.finished and not side.backend.started  # declined: it waits
            side.owner_back = None
            await _ended(job)
            assert job.state is JobState.DONE

    _run(main)


def test_a_job_no_worker_can_run_fails_saying_why(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path) as world:
            [job] = await world.requester.submit([_spec("out:x", limits=Limits(cpus=64))])
            await _ended(job)
            assert job.state is JobState.FAILED and "CPUs" in (job.error or "")

    _run(main)


def test_a_job_beyond_the_credit_floor_is_declined_with_the_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path) as world:
            dear = Limits(cpus=2, wall_seconds=3600)  # may cost 7200 > the 3600 a newcomer has
            [job] = await world.requester.submit([_spec("out:x", limits=dear)])
            await trio.sleep(120)
            assert job.state is JobState.QUEUED
            job.cancel.set()
            await _ended(job)
            log = world.workers[0].worker  # (declines are logged; the job is only delayed)
            assert not log.running

    _run(main)


def test_cancel_while_queued_running_and_riding(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path, workers=1, cpus=2) as world:
            side = world.workers[0]
            side.owner_back = "away"
            [queued] = await world.requester.submit([_spec("out:x")])
            await trio.sleep(1)
            queued.cancel.set()
            await _ended(queued)
            assert queued.state is JobState.CANCELLED
            side.owner_back = None
            [running] = await world.requester.submit([_spec("cpu:25")])
            await until(lambda: running.state is JobState.RUNNING and bool(side.worker.running))
            running.cancel.set()
            await _ended(running)
            assert running.state is JobState.CANCELLED
            await until(lambda: not side.worker.running)  # the worker stopped it, let it go
            # Tasks of an array in a session: cancel them mid-way, the rest complete.
            jobs = await world.requester.submit([_spec("cpu:2") for _ in range(6)])
            await trio.sleep(3)
            for job in jobs[3:]:
                job.cancel.set()
            await _ended(*jobs)
            states = [j.state for j in jobs]
            assert JobState.CANCELLED in states and JobState.DONE in states

    _run(main)


def test_a_worker_silent_past_the_lease_loses_the_job_to_another(tmp_path: Path) -> None:
    async def silent(raw: Any) -> None:
        stream = JobStream_for_worker(raw)
        received = await stream.receive_a(OfferReceived, 30)
        await stream.send(jobproto.Accept(received.offer.lease_seconds, "native", 0))
        await trio.sleep_forever()  # accepted, then nothing: no progress, no result

    async def main() -> None:
        async with job_world(tmp_path, workers=1) as world:
            honest = world.workers[0]
            known = world.records.pop(honest.me.peer_id)  # at first, only the mute one is known
            mute = world.net.peer(Identity.generate().peer_id)
            mute.handle(jobproto.JOB, silent)
            _enroll(world, mute.peer_id, cpus=2)
            [job] = await world.requester.submit([_spec("out:x")])
            await until(lambda: job.state is JobState.RUNNING)
            assert job.worker == mute.peer_id
            world.records[honest.me.peer_id] = known
            await _ended(job)
            assert job.state is JobState.DONE and job.worker == honest.me.peer_id
            assert job.attempts == 2

    _run(main)


def test_a_vanished_worker_loses_the_job_to_another(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path, workers=2) as world:
            [job] = await world.requester.submit([_spec("cpu:20")])
            await until(lambda: job.state is JobState.RUNNING)
            first = job.worker
            assert first is not None
            await world.net.vanish(first)
            world.records.pop(first)  # its heartbeats would say so
            await _ended(job)
            assert job.state is JobState.DONE and job.worker != first and job.attempts == 2
            assert job.credit == 20  # only the run that finished is paid

    _run(main)


def test_a_vanished_requester_is_paid_for_later_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path) as world:
            side = world.workers[0]
            [job] = await world.requester.submit([_spec("out:held", "cpu:5")])
            await until(lambda: job.state is JobState.RUNNING)
            await world.net.vanish(world.me.peer_id)
            await until(lambda: bool(side.worker.held.job_ids()))  # ran on; result held
            world.net.come_back(world.me.peer_id)
            await side.worker.deliver_held(world.me.peer_id)  # (a hello would do this)
            await _ended(job)
            assert job.state is JobState.DONE and bytes(job.stdout) == b"held"
            assert await _balance(side.ledger) == 5.0 == -await _balance(world.ledger)
            assert not await trio.to_thread.run_sync(side.worker.held.job_ids)
            await side.worker.deliver_held(world.me.peer_id)  # nothing is paid twice
            assert await _balance(side.ledger) == 5.0

    _run(main)


def test_a_worker_without_task_sessions_gets_the_array_one_by_one(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path) as world:
            world.workers[0].peer.handlers.pop(jobproto.TASKS)
            jobs = await world.requester.submit([_spec(f"out:{i}") for i in range(6)])
            await _ended(*jobs)
            assert all(j.state is JobState.DONE for j in jobs)
            assert {j.claim for j in jobs} == {j.job_id for j in jobs}  # one exchange each
            assert world.requester.offers.no_sessions

    _run(main)


def test_replicas_agree_and_both_are_paid(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path, workers=2) as world:
            [job] = await world.requester.submit([_spec("out:same", "cpu:1")], replicas=2)
            await _ended(job)
            assert job.state is JobState.DONE and bytes(job.stdout) == b"same"
            assert job.credit == 2.0  # both replicas paid
            for side in world.workers:
                assert await _balance(side.ledger) == 1.0

    _run(main)


def test_replicas_of_a_job_that_is_not_deterministic_all_paid_none_distrusted(
    tmp_path: Path,
) -> None:
    """`--replicas 2` of a job whose output differs every run marked every worker untrusted for
    30 days, silently, and the requester's next jobs waited for ever."""

    async def main() -> None:
        async with job_world(tmp_path, workers=4) as world:
            [job] = await world.requester.submit([_spec("random:16", "cpu:1")], replicas=2)
            await _ended(job)
            assert job.error is not None and "4 runs" in job.error, job.error
            assert job.credit == 4.0  # every run paid
        # With no worker left to break the tie (as many workers as replicas), it ends at once.
        async with job_world(tmp_path / "two", workers=2) as world:
            [job] = await world.requester.submit([_spec("random:16", "cpu:1")], replicas=2)
            await _ended(job)
            assert job.state is JobState.FAILED and job.error is not None
            assert job.error.startswith("results differ (not deterministic?): 2 runs"), job.error
            assert not world.requester.untrusted
            assert world.requester.store.untrusted_list(time.time()) == []
            assert job.credit == 2.0  # every run paid
            for side in world.workers:
                assert await _balance(side.ledger) == 1.0
            [after] = await world.requester.submit([_spec("out:next")])
            await _ended(after)
            assert after.state is JobState.DONE

    _run(main)


# ----- helpers ------------------------------------------------------------------------------


def JobStream_for_worker(raw: Any) -> JobStream:
    """A worker's end of a job stream, for a scripted (misbehaving) worker."""
    from node.jobs.worker import Worker

    return Worker.stream(raw, Kind.JOB)


def _enroll(world: JobWorld, peer_id: str, cpus: int) -> None:
    from node.testing import worker_record

    world.records[peer_id] = worker_record(peer_id, cpus)
