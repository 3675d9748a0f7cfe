"""What the owner is doing to this machine, sampled cheaply: the I/O edge of the idle policy.

`Sampler.sample(now)` returns a `node.owner.policy.Signals`:
- owner CPU load: the machine's busy CPU time (`psutil.cpu_times()` deltas, i.e. /proc/stat)
  minus the guests' CPU time, supplied by a callable returning the guests' cumulative
  CPU-seconds (the node passes the sandbox's cgroup counter), over windows of `load_interval`
  (1 s). A load average is too slow (minutes) and counts the guests; `cpu_percent()` says 0.0
  on its first call. Steal time (other VMs on the host) is not owner load.
- owner input: seconds since the newest atime among the input files: every entry of
  `/dev/input` by default (on a desktop the X server or compositor reads the event devices,
  which updates their atimes), plus the ttys of logged-in users (utmp, via `psutil.users()`) if
  `watch_ttys`. No input file at all (a headless server) means no owner input (None).
  Tests point `input_paths` at a temporary directory: touching a file there is a keystroke.
  Why `watch_ttys` can be turned off: the kernel updates a tty's atime at most every 8 s (on
  purpose, so that the atime does not leak keystroke timing), so tty input is seen up to 8 s
  late; and on servers automated sessions (CI runners, orchestration over ssh, tmux) touch pty
  atimes all the time, which would keep the machine in `owner` forever: there, set
  `watch_ttys = false` and rely on load alone, or use `lend = always`.
- on battery (`psutil.sensors_battery`), hottest temperature sensor
  (`psutil.sensors_temperatures`; readings outside 1..150 °C are ignored as bogus), memory
  available (`psutil.virtual_memory().available`), and whether now is within the lending hours.

Cost: input atimes are read on every sample (4 Hz: one directory listing and a few `stat`s), CPU
times, the guest counter and memory once per `load_interval`, battery, temperatures and the
logged-in users every `SLOW_INTERVAL` (5 s). See bench/bench_idle.py (well below 0.5% of a core).

`PolicyWatch` is the trio edge the node runs: sample, step the policy, tell the node. This module
imports trio only inside `PolicyWatch.run`, so the CLI can use the sampler without it.
"""

from __future__ import annotations

import collections
import datetime as dt
import glob
import inspect
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psutil

from node.owner.config import PolicyConfig
from node.owner.policy import Decision, IdlePolicy, Signals, policy_report

log = logging.getLogger("rainnet.idle")

SLOW_INTERVAL = 5.0
_GLOB_CHARS = frozenset("*?[")

GuestCpu = Callable[[], float]  # cumulative CPU-seconds of all guests (a counter)
OnDecision = Callable[[Decision], Awaitable[None] | None]


# -- the individual signals ------------------------------------------------------------------------


def cpu_busy_total(t: Any) -> tuple[float, float]:
    """(busy, total) CPU-seconds of all CPUs since boot, from a `psutil.cpu_times()` tuple.

    Linux counts guest (VM) time inside user/nice, so it is not added twice; idle, iowait and
    steal are not busy.
    """
    fields = t._asdict()
    total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0) + fields.get("steal", 0.0)
    return total - idle, total


def input_files(paths: Iterable[str]) -> list[str]:
    """The files whose atimes mean owner input: each path is a glob pattern, a directory (its
    non-directory entries, e.g. /dev/input/event*, not the by-id/ subdirectories) or a file."""
    out: list[str] = []
    for p in paths:
        if _GLOB_CHARS & set(p):
            out.extend(f for f in glob.glob(p) if not os.path.isdir(f))
            continue
        try:
            with os.scandir(p) as entries:
                out.extend(e.path for e in entries if not e.is_dir())
        except NotADirectoryError:
            out.append(p)
        except OSError:
            pass
    return out


def user_ttys() -> list[str]:
    """The terminal devices of logged-in users (from utmp; none without utmp)."""
    out = []
    try:
        users = psutil.users()
    except Exception:  # no utmp, or an unreadable one: no ttys
        return []
    for u in users:
        term = u.terminal
        if not term or term.startswith(":"):  # ":0" is an X display, not a device
            continue
        path = term if term.startswith("/") else "/dev/" + term
        if os.path.exists(path):
            out.append(path)
    return sorted(set(out))


def newest_atime(files: Iterable[str]) -> float | None:
    """The newest atime (epoch seconds) among `files`; None if none could be read."""
    newest: int | None = None
    for f in files:
        try:
            ns = os.stat(f).st_atime_ns
        except OSError:
            continue
        newest = ns if newest is None or ns > newest else newest
    return None if newest is None else newest / 1e9


def read_battery() -> bool | None:
    """True on battery, False on mains, None without a battery (or unknown)."""
    try:
        batt = psutil.sensors_battery()
    except Exception:
        return None
    if batt is None or batt.power_plugged is None:
        return None
    return not batt.power_plugged


def read_temperature() -> float | None:
    """The hottest plausible sensor reading in °C; None without sensors."""
    try:
        sensors = psutil.sensors_temperatures()
    except Exception:
        return None
    readings = [
        t.current for entries in sensors.values() for t in entries if 1.0 <= t.current <= 150.0
    ]
    return max(readings) if readings else None


# -- the sampler ----------------------------------------------------------------------------------


class Sampler:
    """Holds the previous CPU times (for deltas) and the slow signals' cache.

    `guest_cpu` returns the guests' cumulative CPU-seconds; best a counter that never goes down
    (`sandbox.cgroups.total_cpu_ns(layout, base) / 1e9` counts every job under the sandbox's
    parent cgroup, finished ones included). If it goes down (a sum over the jobs open right now,
    when one ends), that window counts no guest time, which at worst makes one one-second
    sample look like owner load: the policy never suspends on a single sample.
    """

    def __init__(
        self,
        config: PolicyConfig,
        guest_cpu: GuestCpu | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        local_time: Callable[[], dt.datetime] = dt.datetime.now,
        now: float | None = None,
    ) -> None:
        self.config = config
        self._guest_cpu = guest_cpu
        self._wall_clock = wall_clock
        self._local_time = local_time
        self._guest_failed = False
        self._last_guest = 0.0
        now = time.monotonic() if now is None else now
        busy, total = cpu_busy_total(psutil.cpu_times())
        self._cpu = (busy, total, self._read_guest())
        self._cpu_at = now
        self._loads = (0.0, 0.0, 0.0, 0.0)  # owner, host, guest, window
        self._memory = self._read_memory()
        self._slow_at = -math.inf
        self._ttys: list[str] = []
        self._battery: bool | None = None
        self._temperature: float | None = None

    def sample(self, now: float | None = None) -> Signals:
        """One snapshot; `now` is monotonic seconds (default: the current time)."""
        now = time.monotonic() if now is None else now
        c = self.config
        elapsed = now - self._cpu_at
        # A little slack so that 4 Hz sampling refreshes the load every 4th sample, not 5th.
        if elapsed >= c.load_interval - c.input_interval / 2 or (
            self._loads[3] == 0.0 and elapsed >= 0.1
        ):
            self._update_load(now)
        if now - self._slow_at >= SLOW_INTERVAL:
            self._slow_at = now
            self._ttys = user_ttys() if c.watch_ttys else []
            self._battery = read_battery()
            self._temperature = read_temperature()
        files = input_files(c.input_paths) + self._ttys
        newest = newest_atime(files)
        input_idle = None if newest is None else max(0.0, self._wall_clock() - newest)
        owner, host, guest, window = self._loads
        return Signals(
            timestamp=now,
            owner_load=owner,
            input_idle=input_idle,
            on_battery=self._battery,
            memory_available=self._memory,
            temperature=self._temperature,
            in_schedule=c.in_schedule(self._local_time()) if c.schedule else True,
            host_load=host,
            guest_load=guest,
            load_window=window,
            input_sources=len(files),
        )

    def _update_load(self, now: float) -> None:
        busy, total = cpu_busy_total(psutil.cpu_times())
        guest = self._read_guest()
        prev_busy, prev_total, prev_guest = self._cpu
        d_total = total - prev_total
        if d_total <= 0:  # within one clock tick: keep the last reading
            return
        host = min(1.0, max(0.0, (busy - prev_busy) / d_total))
        guest_share = min(host, max(0.0, guest - prev_guest) / d_total)
        self._loads = (host - guest_share, host, guest_share, now - self._cpu_at)
        self._cpu = (busy, total, guest)
        self._cpu_at = now
        self._memory = self._read_memory()

    def _read_guest(self) -> float:
        if self._guest_cpu is None:
            return 0.0
        try:
            self._last_guest = float(self._guest_cpu())
        except Exception:
            if not self._guest_failed:
                log.exception("reading the guests' CPU time failed (counted as owner load)")
                self._guest_failed = True
        return self._last_guest

    @staticmethod
    def _read_memory() -> int:
        try:
            return int(psutil.virtual_memory().available)
        except Exception:
            return 1 << 62  # unknown: do not block lending on it


# -- the trio edge --------------------------------------------------------------------------------


class PolicyWatch:
    """Samples, steps the policy and tells the node: every `config.input_interval` (0.25 s) while
    guests run (state `busy`, where owner input must stop them within 1 s), else every
    `config.load_interval` (1 s), where minutes-long thresholds gain nothing from 4 Hz and each
    trio wake-up costs (~0.3 ms of CPU here). `interval` fixes the period instead.

    `guests_running()` says whether any guest job is open (running or suspended).
    `on_decision(decision)` (plain or async) is called on the first decision, whenever the
    state, the action or start_allowed changes, and on every `give_up` step while guests still
    run; the node sets its record's state, freezes or thaws its jobs, gives them up. An
    exception from it is logged and the watch goes on (the next change calls it again).
    `report()` answers the control request `policy`.
    """

    def __init__(
        self,
        sampler: Sampler,
        policy: IdlePolicy,
        *,
        guests_running: Callable[[], bool] = lambda: False,
        on_decision: OnDecision | None = None,
        interval: float | None = None,
        history: int = 20,
    ) -> None:
        self.sampler = sampler
        self.policy = policy
        self.guests_running = guests_running
        self.on_decision = on_decision
        self.interval = interval
        self.signals: Signals | None = None
        self.decision: Decision | None = None
        self.transitions: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self._failed_at = -math.inf

    def step(self, now: float | None = None) -> tuple[Decision, bool]:
        """Sample and decide once; returns the decision and whether to tell the node."""
        signals = self.sampler.sample(now)
        decision = self.policy.step(signals, self.guests_running())
        prev = self.decision
        changed = prev is None or (decision.state, decision.action, decision.start_allowed) != (
            prev.state,
            prev.action,
            prev.start_allowed,
        )
        if prev is None or decision.state != prev.state or (changed and decision.action != "none"):
            self.transitions.append(
                {
                    "at": time.time(),
                    "from": prev.state if prev else None,
                    "to": decision.state,
                    "action": decision.action,
                    "reason": decision.reason,
                }
            )
            log.info("policy: %s (%s): %s", decision.state, decision.action, decision.reason)
        self.signals, self.decision = signals, decision
        return decision, changed or decision.action == "give_up"

    def period(self) -> float:
        """Seconds until the next sample."""
        if self.interval is not None:
            return self.interval
        c = self.policy.config
        busy = self.decision is not None and self.decision.state == "busy"
        return c.input_interval if busy else max(c.input_interval, c.load_interval)

    def report(self) -> dict[str, Any]:
        return policy_report(
            self.policy.config,
            self.signals,
            self.decision,
            node_running=True,
            transitions=list(self.transitions),
        )

    async def run(self, task_status: Any = None) -> None:
        """Watch until cancelled. With `nursery.start`, returns once the first decision is made
        (so the node's record has its state)."""
        import trio

        next_at = trio.current_time()
        while True:
            try:
                decision, tell = self.step()
            except Exception:
                if trio.current_time() - self._failed_at > 60:
                    log.exception("sampling the idle signals failed")
                self._failed_at = trio.current_time()
            else:
                if tell and self.on_decision is not None:
                    await self._tell(decision)
            if task_status is not None:
                task_status.started()
                task_status = None
            next_at += self.period()
            now = trio.current_time()
            if next_at < now:  # fell behind (a slow callback): do not try to catch up
                next_at = now
            await trio.sleep_until(next_at)

    async def _tell(self, d: Decision) -> None:
        assert self.on_decision is not None
        try:
            result = self.on_decision(d)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("acting on the policy decision %s/%s failed", d.state, d.action)
