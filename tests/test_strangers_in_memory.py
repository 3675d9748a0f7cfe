"""Strangers get nothing they are not owed, in memory (node.testing): hostile requesters against
a real worker's code. Each test attacks the way it was seen to work before its fix."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from ledger.messages import Refuse
from node.jobs import transfer
from node.jobs.core import terms
from node.jobs.core.conversation import ChainAsked, Kind, ResultOffered
from node.jobs.core.standing import NEWCOMER_BUDGET_MILLI, UNPAID_GRACE_MS
from node.jobs.requester.offers import Declined, Offers
from node.jobs.requester.record import JobRecord, JobState
from node.jobs.stream import JobStream
from node.jobs.worker.admission import CHAIN_SYNC_TIMEOUT
from node.testing import JobWorld, job_world, temporary_ledger
from rainnet import jobproto
from rainnet.identity import Identity
from sandbox import JobSpec, Limits

SHORT = Limits(wall_seconds=30)


def _run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


async def _ended(*jobs: JobRecord, within: float = 600) -> None:
    with trio.fail_after(within):
        for job in jobs:
            await job.finished.wait()


def _hostile_offers(world: JobWorld, home: Path) -> Offers:
    """A requester of its own identity on the same network, whose offers we script."""
    me = Identity.generate()
    peer = world.net.peer(me.peer_id)
    return Offers(temporary_ledger(home, me), peer.open_stream)


def test_offers_never_followed_up_do_not_starve_honest_jobs(tmp_path: Path) -> None:
    """One identity sent offers and never answered the worker's chain request: they held the
    worker's few offer-checking slots, and every honest job took 28-30 s instead of 0.1 s."""

    async def main() -> None:
        async with job_world(tmp_path) as world:
            worker_id = world.workers[0].me.peer_id
            hostile = _hostile_offers(world, tmp_path / "hostile")
            stalled = 0

            async def offer_and_stall(i: int) -> None:
                nonlocal stalled
                stream = await hostile.open(worker_id, Kind.JOB)
                spec = terms.pack_spec(JobSpec.create(["out:x"], limits=SHORT))
                await stream.send(jobproto.Offer(f"bait{i}", 1, spec, (), 15.0, b""))
                event = await stream.receive(60)
                if isinstance(event, ChainAsked):
                    stalled += 1
                    await trio.sleep_forever()  # asked for our chain: never answer

            async with trio.open_nursery() as attack:
                for i in range(20):
                    attack.start_soon(offer_and_stall, i)
                await trio.sleep(1)
                began = trio.current_time()
                [job] = await world.requester.submit([JobSpec.create(["out:ok"], limits=SHORT)])
                await _ended(job)
                took = trio.current_time() - began
                attack.cancel_scope.cancel()
            assert job.state is JobState.DONE
            # In memory an honest job takes no (virtual) time; before the fix it waited ~29 s,
            # until the stalled offers gave up their checking slots (CHAIN_SYNC_TIMEOUT).
            assert took < CHAIN_SYNC_TIMEOUT / 30, took
            assert stalled <= 2  # the rest were declined at once: two at a time per requester

    _run(main)


def test_concurrent_offers_cannot_each_spend_the_whole_floor(tmp_path: Path) -> None:
    """Four concurrent offers, each costing the whole credit floor, were all accepted: what a
    requester owes a worker (its jobs there, at their limits) counts against its floor."""

    async def main() -> None:
        async with job_world(tmp_path, workers=1, cpus=8) as world:
            side = world.workers[0]
            most = 0

            async def watch() -> None:
                nonlocal most
                while True:
                    most = max(most, len(side.worker.running))
                    await trio.sleep(0.05)

            async with trio.open_nursery() as watching:
                watching.start_soon(watch)
                # 1000 credits each at their limits: a newcomer (balance 0, floor -3600) may
                # have three at once, not four. (An input file each: offered one by one, all at
                # once, not through a task session.)
                dear = Limits(cpus=1, wall_seconds=1000)
                data = tmp_path / "in.txt"
                data.write_bytes(b"x")
                entry = await trio.to_thread.run_sync(transfer.file_entry, "in.txt", data)
                jobs = []
                for _ in range(4):
                    spec = JobSpec.create(["cpu:5"], limits=dear)
                    jobs += await world.requester.submit([spec], ((entry, data),))
                await _ended(*jobs)
                watching.cancel_scope.cancel()
            assert [j.state for j in jobs] == [JobState.DONE] * 4
            assert most == 3

    _run(main)


async def _hostile_job(
    world: JobWorld, hostile: Offers, job_id: str, steps: list[str], limits: Limits
) -> tuple[JobStream, Any]:
    """Offer one job from `hostile` to the first worker; its stream and the first event after
    the Accept (a Decline: the stream, and the Decline)."""
    worker_id = world.workers[0].me.peer_id
    stream = await hostile.open(worker_id, Kind.JOB)
    spec = terms.pack_spec(JobSpec.create(steps, limits=limits))
    try:
        await hostile.offer(stream, worker_id, job_id, 1, spec, ())
    except Declined as exc:
        return stream, exc
    return stream, await stream.receive(60)


def test_a_requester_that_never_pays_is_served_no_more(tmp_path: Path) -> None:
    """A requester that read the live output and then cancelled, or never answered the claim,
    got its work for nothing and was admitted again at once. What it used is claimed (a
    cancelled job's too), and a claim left unanswered stops it being served."""

    async def main() -> None:
        async with job_world(tmp_path) as world:
            side = world.workers[0]
            hostile = _hostile_offers(world, tmp_path / "hostile")
            steps = ["cpu:1", "out:x", "cpu:5"]
            stream, first = await _hostile_job(world, hostile, "free1", steps, SHORT)
            assert isinstance(first, jobproto.Output)  # it sees the live output...
            await stream.send(jobproto.Cancel("seen enough"))  # ...and cancels
            claim = await stream.receive(60)
            assert isinstance(claim, ResultOffered)  # what the job used is claimed anyway
            assert claim.finished.reason == "cancelled" and claim.finished.cpu_seconds > 0
            await stream.reset()  # and the requester walks away without paying
            await trio.sleep(UNPAID_GRACE_MS / 1000 + 1)
            assert side.worker.held.held_for(hostile.ledger.peer_id)  # held for its return
            _, second = await _hostile_job(world, hostile, "free2", ["out:x"], SHORT)
            assert isinstance(second, Declined) and "wait to be paid" in str(second)
            # An honest requester is served meanwhile.
            [job] = await world.requester.submit([JobSpec.create(["out:ok"], limits=SHORT)])
            await _ended(job)
            assert job.state is JobState.DONE

    _run(main)


def test_fresh_identities_share_a_bounded_budget(tmp_path: Path) -> None:
    """100 fresh identities each got work for free (40 here). Requesters that never earned
    credit share a budget of unpaid work per worker: beyond it they are declined, whoever they
    are."""

    async def main() -> None:
        async with job_world(tmp_path, workers=1, cpus=64) as world:
            limits = Limits(cpus=1, memory=16 << 20, wall_seconds=600)  # 600 credits each
            served = declined = 0
            for i in range(40):
                hostile = _hostile_offers(world, tmp_path / f"hostile{i}")
                stream, first = await _hostile_job(world, hostile, f"free{i}", ["cpu:300"], limits)
                if isinstance(first, Declined):
                    declined += 1
                    continue
                served += 1
                await stream.reset()  # gone before its result: nobody pays
            assert declined > 0
            # Unpaid work at the worker (each ran 300 s, or was still running at its limits),
            # within the newcomers' budget (and one more job's worth: the last admitted).
            assert served * 300_000 <= NEWCOMER_BUDGET_MILLI + 600_000

    _run(main)


def test_a_requester_refusing_every_claim_gets_no_more_than_its_floor(tmp_path: Path) -> None:
    async def main() -> None:
        async with job_world(tmp_path) as world:
            hostile = _hostile_offers(world, tmp_path / "hostile")
            refused = 0.0
            for i in range(40):
                limits = Limits(wall_seconds=300)
                stream, event = await _hostile_job(world, hostile, f"r{i}", ["cpu:200"], limits)
                if isinstance(event, Declined):
                    break
                while not isinstance(event, ResultOffered):
                    event = await stream.receive(60)
                await stream.settle(Refuse(f"r{i}", "I would rather not"))
                await stream.close()
                refused += event.finished.cpu_seconds
            else:
                raise AssertionError("served for ever")
            # A newcomer may owe at most its floor (3600 credits): refusals count as owed.
            assert refused <= 3600

    _run(main)
