"""The worker's admission queue: capacity goes to the waiting requester with the most credit."""

from __future__ import annotations

import trio

from node.jobs.core import scheduler
from node.jobs.core.pending import Refusal
from node.jobs.worker.admission import AdmissionQueue
from rainnet.jobproto import DeclineKind

ONE = scheduler.Needs(cpus=1, memory=1)


def test_freed_capacity_goes_to_the_highest_balance_first() -> None:
    running: list[str] = ["someone"]  # the one slot is taken

    def fits(needs: scheduler.Needs) -> str | None:
        return None if not running else "full"

    queue = AdmissionQueue(fits)
    order: list[str] = []

    async def offer(name: str, balance: int) -> None:
        why = await queue.wait_turn(name.encode(), balance, ONE, timeout=5)
        assert why is None
        order.append(name)
        running.append(name)
        await trio.sleep(0.01)
        running.remove(name)
        queue.released()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for name, balance in (("poor", -500), ("rich", 9000), ("middle", 10)):
                nursery.start_soon(offer, name, balance)
                await trio.sleep(0.01)  # arrival order: poor, rich, middle
            running.remove("someone")
            queue.released()

    trio.run(main)
    assert order == ["rich", "middle", "poor"]


def test_a_wait_is_bounded_and_says_why() -> None:
    queue = AdmissionQueue(lambda needs: "only 0 of 2 CPUs free")

    async def main() -> Refusal | None:
        return await queue.wait_turn(b"r", 0, ONE, timeout=0.1)

    assert trio.run(main) == Refusal(DeclineKind.CAPACITY, "only 0 of 2 CPUs free")
