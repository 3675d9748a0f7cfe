"""A requester's standing at a worker, sans-io: what it owes here, and whether it is served.

The rule (README, "Credit"): a worker is owed, for every job it ran for a requester (to its end,
its time limit, or until the requester cancelled it), the CPU-seconds it measured, within the
job's limits; it releases a result only once paid. Until a claim is paid it counts against its
requester here:
- at admission, the requester's verified balance less what it owes here (its jobs running here
  at their limits, its unpaid claims) must stay above the credit floor with the new job counted
  at its limits: concurrent offers cannot each spend the whole floor;
- a requester that left a claim unanswered past UNPAID_GRACE (the worker holds its result for
  its return) is served no more here until it settles it; a claim it refused keeps counting as
  owed (above) for UNPAID_MEMORY, so refusing every claim buys no more than the floor allows;
- requesters that never earned credit (newcomers, whose identities cost nothing to make) share a
  budget of unpaid work per worker, NEWCOMER_BUDGET: beyond it, newcomers wait for it to free.
Claims being settled on their stream right now are owed, but not held against anyone.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ledger.service import UnpaidClaim
from ledger.units import format_credits

UNPAID_GRACE_MS = 60_000  # a claim answered within this is a settlement, not a debt
UNPAID_MEMORY_MS = 24 * 3600 * 1000  # unpaid claims older than this are forgotten
NEWCOMER_BUDGET_MILLI = 2 * 3600 * 1000  # unpaid work for all newcomers together, per worker


@dataclass(frozen=True)
class Standing:
    owed_milli: int  # counted against the requester's balance at admission
    refusal: str | None  # why it is not served here now, or None


def standing(
    unpaid: Sequence[UnpaidClaim],
    held: Collection[str],
    running_milli: int,
    now_ms: int,
    *,
    newcomer: bool,
    newcomers_owe_milli: int,
    newcomers_running_milli: int,
    cost_milli: int,
) -> Standing:
    """The standing of a requester owing us `unpaid` claims (since UNPAID_MEMORY), with jobs
    running here that may cost up to `running_milli`, offering a job that may cost up to
    `cost_milli`. `held`: its claims whose results we hold unanswered (not on offer now).
    `newcomers_owe_milli`, `newcomers_running_milli`: what all newcomers owe us, and their jobs
    running here at their limits (this requester's included)."""
    owed = running_milli + sum(c.amount_milli for c in unpaid)
    overdue = [c for c in unpaid if c.job_id in held and now_ms - c.time_ms > UNPAID_GRACE_MS]
    if overdue:
        amount = sum(c.amount_milli for c in overdue)
        return Standing(
            owed,
            f"refused: {len(overdue)} result(s) of yours here wait to be paid for "
            f"({format_credits(amount)} credits); they are offered again while you are "
            "reachable: settle them first",
        )
    exposure = newcomers_owe_milli + newcomers_running_milli + cost_milli
    if newcomer and exposure > NEWCOMER_BUDGET_MILLI:
        return Standing(
            owed,
            "busy: this worker's budget for requesters that have not earned credit yet is in "
            "use; earn credit by lending (keep rain-node running), or try again later",
        )
    return Standing(owed, None)
