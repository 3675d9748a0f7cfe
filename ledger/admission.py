"""Who a worker serves: the credit floor, and requesters ordered by verified balance.

Mutual credit: a new identity starts at 0 and may go down to the floor (default -3600 credits, one
CPU-hour), so a network can start with nobody having earned anything. A worker refuses a job that
could take its requester below the floor, counting the job at the most its limits allow (cpus x
wall time, plus weighted GPUs), since the real cost is known only afterwards. Among requesters it
may serve, it serves the highest verified balance first: credit earned by serving others buys
priority, and no identity can take more than the floor's worth without giving back.

The balance here is always a *verified* one: computed by ledger.validate from the requester's own
chain, which the worker fetched and checked (ledger.service), never a number the requester states.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ledger.block import JobLimits
from ledger.errors import BelowFloor
from ledger.units import format_credits


def floor_problem(
    balance_milli: int, limits: JobLimits, floor_milli: int, owed_milli: int = 0
) -> str | None:
    """Why a requester with `balance_milli`, owing `owed_milli` here already (its jobs running
    at their limits, its claims unpaid), may not run a job with `limits` (None if it may)."""
    cost = limits.max_amount_milli
    if balance_milli - owed_milli - cost >= floor_milli:
        return None
    owed = (
        f", {format_credits(owed_milli)} are committed here to your jobs running or unpaid,"
        if owed_milli
        else ""
    )
    return (
        f"refused: your verified balance is {format_credits(balance_milli)} credits{owed} and "
        f"this job may cost up to {format_credits(cost)} ({limits}), which would take you below "
        f"the floor of {format_credits(floor_milli)}. Earn credit by keeping rain-node running "
        "so it runs others' jobs (1 credit per CPU-second), or ask for fewer CPUs or a shorter "
        "time limit."
    )


def check_floor(
    balance_milli: int, limits: JobLimits, floor_milli: int, owed_milli: int = 0
) -> None:
    """BelowFloor (the requester's fault, with a message for its user) unless the job may run."""
    why = floor_problem(balance_milli, limits, floor_milli, owed_milli)
    if why is not None:
        raise BelowFloor(why)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A requester waiting for this worker: its verified balance and when it asked."""

    requester: bytes
    balance_milli: int
    arrival: int  # a counter or timestamp; earlier first among equal balances


def by_priority(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates in the order to serve them: higher verified balance first, then first come;
    the key breaks the last ties so every worker orders the same queue the same way."""
    return sorted(candidates, key=lambda c: (-c.balance_milli, c.arrival, c.requester))
