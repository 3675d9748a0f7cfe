"""An MPI group suspended together, sans-io: which members' jobs to hold, and a worker's holds.

The ranks of a group (node.mpi) wait on each other in every collective. When one member's owner
comes back, that member freezes its guests (node.owner); the others' ranks would spin in their
next collective, burning CPU the requester pays for and the other owners lend for nothing. So
the requester holds (rainnet.jobproto.Hold) every other member's job while any member reports
itself suspended by its owner, and lets them go when none does. If the suspended member gives
its part up (its owner stayed past the policy's limit), its ranks die and hydra ends the group.

Rules:
- the requester: member X's job is held while some member other than X reports `suspended`
  (frozen by its owner); a member held by us reports `held`, which holds nobody; once any
  member's part has ended, none is held: the group is over, and a frozen proxy could not hear
  mpiexec end its ranks;
- a worker: a held job is frozen; it is thawed when the hold is lifted, unless its own owner
  has frozen it meanwhile (then the owner's resume thaws it, unless it is held still); a hold
  lasts at most HOLD_LIMIT, after which the worker ends the job: a requester cannot keep a
  worker's slots frozen for ever at no cost (a held job uses no CPU, so it earns nothing).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

HOLD_LIMIT = 10 * 60.0  # as the idle policy's default max_suspend


class MemberState(enum.StrEnum):
    """What a member's job reports of itself (jobproto.Progress.state), as groups read it."""

    RUNNING = "running"
    SUSPENDED = "suspended"  # frozen by its own owner
    HELD = "held"  # frozen because another member of its group is suspended
    EXITED = "exited"  # its processes ended with exit code 0 (its claim and result follow)
    GIVEN_UP = "given-up"  # its owner stayed past the policy's max_suspend: ended, unclaimed
    ENDED = "ended"  # (the requester's word, not a worker's: its part is over)


# What a follower of the job (`rain submit --wait`, the MPI agent) says when its worker's
# report changes.
NEWS = {
    MemberState.SUSPENDED.value: "suspended: its worker's owner is back (it resumes when the "
    "owner is away)",
    MemberState.HELD.value: "held: another member of its MPI group is suspended",
    MemberState.RUNNING.value: "resumed",
}


def news(state: str | None, said: str) -> tuple[str | None, str]:
    """(what to say, or None; what has been said) when a job's worker state is `state` and
    `said` was the last one told (at first, running). Other states (exiting...) say nothing."""
    state = state or MemberState.RUNNING.value
    if state not in NEWS or state == said:
        return None, said
    return NEWS[state], state


def reported_state(frozen: bool, held: bool, owner_suspends: bool, state: str) -> str:
    """What a worker reports of a job: `held` when only its group's hold freezes it."""
    if frozen and held and not owner_suspends:
        return MemberState.HELD.value
    return state


def wanted_holds(states: Mapping[str, str]) -> dict[str, bool]:
    """For each member job (id -> its last reported state): whether it should be held."""
    if MemberState.ENDED.value in states.values():
        return dict.fromkeys(states, False)
    suspended = [j for j, s in states.items() if s == MemberState.SUSPENDED.value]
    return {j: any(other != j for other in suspended) for j in states}


class Holds:
    """A worker's held group jobs (by sandbox job id) and since when (monotonic seconds)."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def hold(self, job: str, now: float) -> None:
        self._since.setdefault(job, now)

    def release(self, job: str) -> bool:
        """Lift the hold; whether there was one."""
        return self._since.pop(job, None) is not None

    def held(self, job: str) -> bool:
        return job in self._since

    def overdue(self, job: str, now: float) -> bool:
        since = self._since.get(job)
        return since is not None and now - since >= HOLD_LIMIT
