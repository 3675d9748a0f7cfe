"""Owner first: the sans-io state machine deciding whether this machine may run guests right now.

Pure and synchronous: `IdlePolicy.step(signals, guests_running)` takes one `Signals` snapshot (see
`node.owner.signals.Sampler`) and returns a `Decision`. No clock, no files, no trio: time is the
snapshot's `timestamp` (monotonic seconds), so tests drive it with hand-made timelines.

States (they go into the node record, so requesters skip nodes that cannot take work):
- `owner`: not lending (the owner is using the machine, or a hard limit holds, or lend=never);
- `idle`: lending, no guest running: the node may accept offers;
- `busy`: lending and running guests;
- `suspended`: guests are frozen because the owner came back; resumed after `continue_idle` of
  idleness, given up after `max_suspend`.

In mode `idle` (the default):
- owner -> idle: no owner input for `start_idle` (no input devices at all counts as no input),
  owner load at most `background_load` for `low_load_for`, and no hard limit;
- idle -> owner, busy -> suspended: at once on any owner input newer than the moment lending
  began (seen at the next 0.25 s sample, and never missed if a sample is late: it compares
  times, not "input in the last second"); or when owner load stays at or above `high_load` for
  `high_load_for` (counted from the start of the first high load window; a shorter burst does
  not count: the run restarts whenever a window is lower); or a hard limit;
- suspended -> busy: no input for `continue_idle`, owner load at most `background_load` for
  `continue_idle`, and any hard limit cleared for `continue_idle`. Between `background_load` and
  `high_load` nothing changes: that band is the hysteresis against flapping;
- suspended for `max_suspend`: action `give_up` (repeated while guests still run); once no
  guest is left, `owner` (and lending starts again by the owner -> idle rule);
- a guest that appears while in `owner` state (a start raced the owner's return) is suspended.

Mode `always` (a dedicated server) ignores owner input and owner load but keeps the hard limits:
battery (`pause_on_battery`), temperature, lending hours and free memory; they protect the machine
and were set by its owner on purpose. Mode `never` is always `owner` (and gives up any guest).

Hard limits: on battery, hotter than `max_temperature`, outside the `schedule` suspend running
guests (and stop lending); memory available below `min_free_memory` gives running guests up at
once, since a frozen guest keeps its memory.

`Decision.action` is the edge to act on: `suspend` / `resume` once per transition, `give_up` on
every step while it holds and guests still run. `Decision.state` is the level: in `suspended`
every guest must be frozen, in `busy` every guest may run, so a node can also reconcile by state.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from node.owner.config import PolicyConfig, human_duration, pct
from node.units import format_size

State = Literal["owner", "idle", "busy", "suspended"]
Action = Literal["none", "suspend", "resume", "give_up"]
LENDING_STATES: tuple[State, ...] = ("idle", "busy")
# Input this close before lending began still counts as after it: atimes come from the kernel's
# coarse clock (up to a tick, 4-10 ms, behind), and the two clocks are read microseconds apart.
INPUT_CLOCK_SLACK = 0.1


@dataclass(frozen=True)
class Signals:
    """One snapshot of what the owner is doing to this machine."""

    timestamp: float  # monotonic seconds
    owner_load: float  # fraction of the machine's CPU time (0..1) not used by guests
    input_idle: float | None  # seconds since the last owner input; None: no input devices
    on_battery: bool | None  # None: no battery (or unknown)
    memory_available: int  # bytes
    temperature: float | None  # °C of the hottest sensor; None: no sensors
    in_schedule: bool  # within the lending hours
    host_load: float = 0.0  # fraction of the machine busy, guests included
    guest_load: float = 0.0  # fraction of the machine used by guests
    load_window: float = 1.0  # seconds the loads cover; 0: not measured yet
    input_sources: int = 0  # how many input files were watched

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    timestamp: float
    state: State
    action: Action
    start_allowed: bool  # may the node accept an offer / start a guest now
    reason: str  # for people: "owner input 12 s ago: suspended; resumes after 5 min idle"
    state_for: float = 0.0  # seconds in this state

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class IdlePolicy:
    """The state machine; one per node. `step()` once per sample."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.state: State = "owner"
        self._since: float | None = None  # when the current state began
        self._lending_since = -math.inf  # when the current lending period began
        self._suspended_since = -math.inf
        self._high_since: float | None = None  # owner load >= high_load since
        self._low_since: float | None = None  # owner load <= background_load since
        self._blocked = False  # a hard limit held at the last step
        self._clear_since: float | None = None  # the last hard limit ended then (None: none)
        self._cause = ""  # why we last stopped lending

    @property
    def mode(self) -> str:
        return self.config.lend

    def assume_steady(self, s: Signals) -> None:
        """Pretend the load in `s` has held for a long time (for a one-off reading with no
        history, as in `rain policy` without a running node)."""
        c = self.config
        self._high_since = -math.inf if s.owner_load >= c.high_load else None
        self._low_since = -math.inf if s.owner_load <= c.background_load else None

    # -- the step -------------------------------------------------------------------------------

    def step(self, s: Signals, guests_running: bool) -> Decision:
        t = s.timestamp
        if self._since is None:
            self._since = t
        self._track_load(s)
        limits, memory_short = self._hard_limits(s)
        if limits:
            self._blocked, self._clear_since = True, None
        elif self._blocked:
            self._blocked, self._clear_since = False, t

        if self.mode == "never":
            reason = "lend = never: this machine is not lent"
            if guests_running:
                return self._to(s, "owner", "give_up", reason + "; giving the running job up")
            return self._to(s, "owner", "none", reason)

        if self.state == "owner":
            if guests_running:
                cause = ", ".join(limits) or "a guest started while not lending"
                return self._suspend(s, cause)
            blocker = self._blocker(s, limits, starting=True)
            if blocker is None:
                self._lending_since = t
                return self._to(s, "idle", "none", self._lending_reason(s, "lending"))
            return self._to(s, "owner", "none", blocker)

        owner = self._owner_back(s) if self.mode == "idle" else None
        back = ", ".join(limits) if limits else owner
        if self.state in LENDING_STATES:
            if memory_short and guests_running:
                return self._give_up(s, f"{back}: giving the job up (frozen jobs keep memory)")
            if back is not None:
                self._cause = back
                if guests_running:
                    return self._suspend(s, back)
                return self._to(s, "owner", "none", f"{back}: not lending")
            if guests_running:
                return self._to(s, "busy", "none", self._lending_reason(s, "running guests"))
            return self._to(s, "idle", "none", self._lending_reason(s, "lending"))

        # suspended
        if not guests_running:
            return self._to(s, "owner", "none", f"{self._cause}: not lending (no guest left)")
        if memory_short:
            return self._give_up(s, f"{back}: giving the job up (frozen jobs keep memory)")
        suspended_for = t - self._suspended_since
        if suspended_for >= self.config.max_suspend:
            return self._give_up(
                s,
                f"suspended {human_duration(suspended_for)} (limit "
                f"{human_duration(self.config.max_suspend)}): giving the job up",
            )
        blocker = self._blocker(s, limits, starting=False)
        if blocker is None:
            self._lending_since = t
            return self._to(s, "busy", "resume", self._lending_reason(s, "resumed"))
        return self._to(s, "suspended", "none", blocker)

    # -- conditions -------------------------------------------------------------------------------

    def _track_load(self, s: Signals) -> None:
        if s.load_window <= 0:  # no measurement yet: no evidence either way
            return
        c = self.config
        # A run starts when the first window showing it began, not when it was reported.
        start = s.timestamp - s.load_window
        if s.owner_load >= c.high_load:
            self._high_since = start if self._high_since is None else self._high_since
        else:
            self._high_since = None
        if s.owner_load <= c.background_load:
            self._low_since = start if self._low_since is None else self._low_since
        else:
            self._low_since = None

    def _hard_limits(self, s: Signals) -> tuple[list[str], bool]:
        """Reasons the machine may not be lent whatever the owner does; and whether memory is
        short (which gives running guests up rather than freezing them)."""
        c = self.config
        out = []
        if c.pause_on_battery and s.on_battery:
            out.append("on battery")
        limit = c.max_temperature
        if limit is not None and s.temperature is not None and s.temperature >= limit:
            out.append(f"temperature {s.temperature:.0f} °C (limit {limit:g} °C)")
        if not s.in_schedule:
            out.append(f"outside the lending hours ({', '.join(w.text for w in c.schedule)})")
        memory_short = s.memory_available < c.min_free_memory
        if memory_short:
            out.append(
                f"memory available {format_size(s.memory_available)} "
                f"(limit {format_size(c.min_free_memory)})"
            )
        return out, memory_short

    def _owner_back(self, s: Signals) -> str | None:
        """While lending in mode idle: has the owner come back (input since lending began, or
        owner load high for long enough)?"""
        idle = s.input_idle
        if idle is not None and s.timestamp - idle > self._lending_since - INPUT_CLOCK_SLACK:
            return f"owner input {human_duration(idle)} ago"
        if self._high_since is not None:
            high_for = s.timestamp - self._high_since
            if high_for >= self.config.high_load_for:
                return f"owner load {pct(s.owner_load)} for {human_duration(high_for)}"
        return None

    def _blocker(self, s: Signals, limits: list[str], *, starting: bool) -> str | None:
        """Why lending may not start (`starting`) or a suspended guest may not resume; None if
        it may."""
        c = self.config
        verb = "not lending; lends" if starting else "suspended; resumes"
        if limits:
            return f"{', '.join(limits)}: {verb} {human_duration(c.continue_idle)} after that ends"
        if self._clear_since is not None and s.timestamp - self._clear_since < c.continue_idle:
            clear_for = s.timestamp - self._clear_since
            return (
                f"{self._cause} until {human_duration(clear_for)} ago: {verb} "
                f"{human_duration(c.continue_idle)} after that ended"
            )
        if self.mode != "idle":
            return None
        input_needed = c.start_idle if starting else c.continue_idle
        load_needed = c.low_load_for if starting else c.continue_idle
        if s.input_idle is not None and s.input_idle < input_needed:
            return (
                f"owner input {human_duration(s.input_idle)} ago: {verb} after "
                f"{human_duration(input_needed)} {'without input' if starting else 'idle'}"
            )
        if self._low_since is None:
            return (
                f"owner load {pct(s.owner_load)}: {verb} after {human_duration(load_needed)} "
                f"at or below {pct(c.background_load)}"
            )
        low_for = s.timestamp - self._low_since
        if low_for < load_needed:
            return (
                f"owner load at or below {pct(c.background_load)} for {human_duration(low_for)}: "
                f"{verb} after {human_duration(load_needed)}"
            )
        return None

    # -- transitions ------------------------------------------------------------------------------

    def _lending_reason(self, s: Signals, what: str) -> str:
        if self.mode == "always":
            return f"lend = always: {what} whatever the owner does (hard limits still apply)"
        quiet = (
            "no input devices (headless)"
            if s.input_idle is None
            else f"no owner input for {human_duration(s.input_idle)}"
        )
        return f"{quiet}, owner load {pct(s.owner_load)}: {what}"

    def _suspend(self, s: Signals, cause: str) -> Decision:
        self._cause = cause
        self._suspended_since = s.timestamp
        return self._to(
            s,
            "suspended",
            "suspend",
            f"{cause}: suspended; resumes after {human_duration(self.config.continue_idle)} idle",
        )

    def _give_up(self, s: Signals, reason: str) -> Decision:
        if self.state != "suspended":
            self._suspended_since = s.timestamp
        return self._to(s, "suspended", "give_up", reason)

    def _to(self, s: Signals, state: State, action: Action, reason: str) -> Decision:
        if state != self.state:
            self.state = state
            self._since = s.timestamp
        assert self._since is not None
        return Decision(
            timestamp=s.timestamp,
            state=state,
            action=action,
            start_allowed=state in LENDING_STATES,
            reason=reason,
            state_for=s.timestamp - self._since,
        )


def policy_report(
    config: PolicyConfig,
    signals: Signals | None,
    decision: Decision | None,
    *,
    node_running: bool,
    transitions: list[dict[str, Any]] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """The answer to the control request `{"op": "policy"}` and the body of `rain policy --json`.

    Keys: node_running, note, lend, state, action, start_allowed, reason, state_for, signals
    (Signals.as_dict), thresholds (PolicyConfig.as_dict), describe (rows for people),
    transitions (recent state changes: at (epoch seconds), from, to, action, reason).
    """
    return {
        "node_running": node_running,
        "note": note,
        "lend": config.lend,
        "state": decision.state if decision else None,
        "action": decision.action if decision else None,
        "start_allowed": decision.start_allowed if decision else False,
        "reason": decision.reason if decision else "no sample yet",
        "state_for": decision.state_for if decision else 0.0,
        "signals": signals.as_dict() if signals else None,
        "thresholds": config.as_dict(),
        "describe": [list(row) for row in config.describe()],
        "transitions": transitions or [],
    }
