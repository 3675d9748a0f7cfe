"""Workers get paid no more than they are owed, in memory (node.testing): hostile workers
against a real requester's code. Each test attacks the way it was seen to work before its fix."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from node.jobs import transfer
from node.jobs.requester.record import JobState
from node.jobs.requester.requester import RESULT_WAIT
from node.testing import job_world, until
from rainnet.streams import StreamGone
from sandbox import JobSpec, Limits

# A newcomer's credit floor buys one job at these limits, not two (the overcharge is the point).
DEAR = Limits(cpus=1, wall_seconds=3000)


def _run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_worker_billing_a_short_job_its_whole_limit_is_refused(tmp_path: Path) -> None:
    """A worker claimed a 0.1 s job's whole CPU limit (50 minutes) and was paid it: the ledger
    bounds a claim by the job's limits only. The requester now checks a claim against the time
    it saw the job run, refuses the overcharge and offers that worker nothing more."""

    async def main() -> None:
        async with job_world(tmp_path, workers=1) as world:
            liar = world.workers[0]
            liar.backend.overbill_seconds = 2999.0
            spec = JobSpec.create(["out:hi", "cpu:0.1"], limits=DEAR)
            [job] = await world.requester.submit([spec])
            await until(lambda: liar.me.peer_id in world.requester.untrusted, 600)
            [why] = world.requester.store.untrusted_list(time.time())
            assert why.peer_id == liar.me.peer_id and "more than it could have used" in why.reason
            assert (await liar.ledger.balance()).earned_milli == 0  # no credit for it at all
            # The job runs again elsewhere, and an honest claim of it is paid.
            honest = world.add_worker(tmp_path / "honest")
            with trio.fail_after(600):
                await job.finished.wait()
            assert job.state is JobState.DONE and job.worker == honest.me.peer_id
            assert (await liar.ledger.balance()).earned_milli == 0
            assert 0 < (await honest.ledger.balance()).earned_milli <= 200

    _run(main)


def test_a_worker_paid_that_withholds_the_result_is_distrusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker was paid and then never sent the result's files: the job waited an hour for
    them and the worker was offered the next jobs meanwhile. Now the job fails after
    RESULT_WAIT naming the worker, which is untrusted until it delivers; when it does at last,
    the job is done and the worker trusted again."""
    sending = transfer.send

    async def withhold(send_chunk: object, sources: Sequence[object]) -> None:
        raise StreamGone("the worker keeps the files it was paid for")

    async def main() -> None:
        async with job_world(tmp_path, workers=1) as world:
            thief = world.workers[0]
            monkeypatch.setattr(transfer, "send", withhold)
            began = trio.current_time()
            [job] = await world.requester.submit([JobSpec.create(["out:paid for", "cpu:1"])])
            with trio.fail_after(RESULT_WAIT * 2):
                await job.finished.wait()
            assert job.state is JobState.FAILED and job.error is not None
            assert "has not delivered the result" in job.error, job.error
            assert trio.current_time() - began <= RESULT_WAIT + 10
            assert (await thief.ledger.balance()).earned_milli > 0  # it was paid
            assert thief.me.peer_id in world.requester.untrusted
            [why] = world.requester.store.untrusted_list(time.time())
            assert "withheld the result" in why.reason
            # It delivers at last (it held them): the job is done, the worker trusted again.
            monkeypatch.setattr(transfer, "send", sending)
            await thief.worker.deliver_held(world.me.peer_id)
            # (The requester stores them after the worker sent them.)
            await until(lambda: job.state is JobState.DONE)
            assert job.error is None
            assert thief.me.peer_id not in world.requester.untrusted
            assert world.requester.store.untrusted_list(time.time()) == []
            assert bytes(job.stdout) == b"paid for"

    _run(main)
