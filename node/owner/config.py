"""The owner's lending policy: the `[policy]` table of the node's `HOME/config.toml`.

Pure data and parsing (no I/O but reading the one file). Every key is optional; the defaults are
close to HTCondor's desktop policy (its manual's "Default Policy" macros):

    HTCondor                 rainnet key        default  meaning
    StartIdleTime = 15 min   start_idle         15m      no owner input this long before lending
    ContinueIdleTime = 5 min continue_idle      5m       ... and this long before resuming a guest
    MaxSuspendTime = 10 min  max_suspend        10m      a guest suspended this long is given up
    BackgroundLoad = 0.3     background_load    0.3      owner load at most this to start/resume
    HighLoad = 0.5           high_load          0.5      owner load at least this suspends guests
    (CpuBusyTime > 2 min)    high_load_for      3s       ... once it has lasted this long

Where we differ, on purpose:
- "Owner load" is the fraction of the whole machine's CPU time (0..1) used by everything but the
  guests, measured over one-second windows (host busy time minus the guests' cgroup CPU time),
  not a one-minute load average: the issue asks for suspension within 5 s of sustained load.
  HTCondor waits 2 min of busy CPU; we wait `high_load_for` (3 s: three one-second windows in a
  row), so a burst shorter than that never suspends, and a sustained owner workload suspends the
  guests within about 4 s of starting (a partial first window, three full ones, one 0.25 s tick).
- Starting needs the owner load at most `background_load` for `low_load_for` (1 min, about what
  HTCondor's one-minute load average implies); resuming needs it for `continue_idle`.
- HTCondor suspends when the keyboard was used in the last minute; we suspend on any owner input
  newer than the moment lending began, which the sampler sees within 0.25 s.

Hard limits, in every mode that lends (`idle` and `always`): `pause_on_battery`, `max_temperature`,
`schedule` (lending hours) and `min_free_memory` (below it a running guest is given up at once,
since a frozen guest still holds its memory). Guests' share of the machine, read by the scheduler:
`cpu_share` (1.0: all CPUs, since guests only run while the owner is away and freeze at once)
and `memory_share` (0.5: frozen guests keep their memory, so half stays the owner's).

Example:

    [policy]
    lend = "idle"                 # idle | always | never; `rain-node --lend` overrides it
    start_idle = "15m"
    schedule = ["Mon-Fri 18:00-08:00", "Sat-Sun"]
    input_paths = ["/dev/input"]  # directories (their files) or glob patterns
    watch_ttys = true
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.units import format_size, parse_duration, parse_size

CONFIG_FILE = "config.toml"
LEND_MODES = ("idle", "always", "never")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MiB = 1 << 20


class ConfigError(ValueError):
    """A bad config file or value; the message names the key (`policy.start_idle: ...`)."""


# -- lending hours --------------------------------------------------------------------------------

_WINDOW_RE = re.compile(
    r"^\s*(?P<days>[A-Za-z]{3}(?:\s*[-,]\s*[A-Za-z]{3})*)?\s*"
    r"(?:(?P<h1>\d{1,2}):(?P<m1>\d{2})\s*-\s*(?P<h2>\d{1,2}):(?P<m2>\d{2}))?\s*$"
)


@dataclass(frozen=True)
class ScheduleWindow:
    """Hours when lending is allowed, e.g. `Mon-Fri 18:00-08:00` (an end at or before the start
    crosses midnight, into the next day), `22:00-06:00` (every day) or `Sat,Sun` (whole days)."""

    text: str
    days: frozenset[int]  # 0 = Monday ... 6 = Sunday: the days on which the window *starts*
    start: int  # minutes since midnight
    end: int  # minutes since midnight, 1..1440

    def contains(self, when: dt.datetime) -> bool:
        minute = when.hour * 60 + when.minute
        day = when.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Crosses midnight: the evening of a listed day, or the morning after one.
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )


def parse_window(text: str) -> ScheduleWindow:
    match = _WINDOW_RE.match(text)
    if not match or not (match["days"] or match["h1"]):
        raise ValueError("expected hours like 'Mon-Fri 18:00-08:00', '22:00-06:00' or 'Sat,Sun'")
    days = _parse_days(match["days"]) if match["days"] else frozenset(range(7))
    if match["h1"] is None:
        return ScheduleWindow(text.strip(), days, 0, 1440)
    start = _minutes(int(match["h1"]), int(match["m1"]))
    end = _minutes(int(match["h2"]), int(match["m2"]))
    if start == 1440:
        raise ValueError(f"{text.strip()!r}: a window cannot start at 24:00")
    if end == 0:
        end = 1440
    if start == end:
        raise ValueError(f"{text.strip()!r}: empty window (use 00:00-24:00 for a whole day)")
    return ScheduleWindow(text.strip(), days, start, end)


def _minutes(hour: int, minute: int) -> int:
    if minute > 59 or hour > 24 or (hour == 24 and minute):
        raise ValueError(f"{hour:02d}:{minute:02d} is not a time of day")
    return hour * 60 + minute


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        ends = [p.strip().lower() for p in part.split("-")]
        if any(e not in DAYS for e in ends) or len(ends) > 2:
            raise ValueError(f"{part.strip()!r}: days are Mon, Tue, Wed, Thu, Fri, Sat, Sun")
        first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(days)


# -- the policy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyConfig:
    """The thresholds of `node.owner.policy.IdlePolicy` and the sampler's settings (seconds, bytes,
    fractions of the machine). Construct directly in tests; `load_policy_config` reads the file."""

    lend: str = "idle"
    start_idle: float = 15 * 60.0
    continue_idle: float = 5 * 60.0
    max_suspend: float = 10 * 60.0
    background_load: float = 0.3
    high_load: float = 0.5
    high_load_for: float = 3.0
    low_load_for: float = 60.0
    pause_on_battery: bool = True
    max_temperature: float | None = 90.0  # °C, hottest sensor; None: ignore temperature
    min_free_memory: int = 256 * MiB
    schedule: tuple[ScheduleWindow, ...] = ()  # empty: lending allowed at any hour
    # Owner input: the atimes of these files (directories: their entries; or glob patterns).
    input_paths: tuple[str, ...] = ("/dev/input",)
    # Also the ttys of logged-in users (utmp). See node.owner.signals for when to turn this off.
    watch_ttys: bool = True
    input_interval: float = 0.25  # seconds between samples (input is cheap: 4 Hz)
    load_interval: float = 1.0  # CPU load windows (shorter ones are noise)
    cpu_share: float = 1.0  # of this machine's CPUs, guests together may take
    memory_share: float = 0.5  # of this machine's memory, guests together may take

    def __post_init__(self) -> None:
        if self.lend not in LEND_MODES:
            raise ConfigError(f"policy.lend: expected one of {', '.join(LEND_MODES)}")
        for key in (
            "start_idle",
            "continue_idle",
            "max_suspend",
            "high_load_for",
            "low_load_for",
        ):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"policy.{key}: expected a duration like 15m, got {value!r}")
        for key in ("input_interval", "load_interval"):
            value = getattr(self, key)
            if not (math.isfinite(value) and 0.01 <= value <= 60):
                raise ConfigError(f"policy.{key}: expected a duration between 10ms and 60s")
        for key in ("background_load", "high_load"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"policy.{key}: expected a fraction of the machine, 0 to 1")
        if self.background_load > self.high_load:
            raise ConfigError(
                "policy.background_load: must not exceed policy.high_load "
                f"({self.background_load:g} > {self.high_load:g})"
            )
        for key in ("cpu_share", "memory_share"):
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"policy.{key}: expected a fraction above 0 and at most 1")
        if self.max_temperature is not None and not 0 < self.max_temperature < 200:
            raise ConfigError("policy.max_temperature: expected °C between 0 and 200, or false")
        if self.min_free_memory < 0:
            raise ConfigError("policy.min_free_memory: expected a size like 256M")

    def in_schedule(self, when: dt.datetime) -> bool:
        return not self.schedule or any(w.contains(when) for w in self.schedule)

    def with_lend(self, lend: str | None) -> PolicyConfig:
        """This config with the mode given on the command line (None: keep the file's)."""
        return self if lend is None else dataclasses.replace(self, lend=lend)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, with durations in seconds and sizes in bytes."""
        out = dataclasses.asdict(self)
        out["schedule"] = [w.text for w in self.schedule]
        out["input_paths"] = list(self.input_paths)
        return out

    def describe(self) -> list[tuple[str, str]]:
        """The thresholds as (label, sentence) rows for `rain policy`."""
        rows = [
            ("lend", self.lend),
            (
                "start",
                f"after {human_duration(self.start_idle)} without owner input and owner load "
                f"at most {pct(self.background_load)} for {human_duration(self.low_load_for)}",
            ),
            (
                "suspend",
                f"at once on owner input; when owner load stays at or above "
                f"{pct(self.high_load)} for {human_duration(self.high_load_for)}",
            ),
            (
                "resume",
                f"after {human_duration(self.continue_idle)} idle (no input, owner load at most "
                f"{pct(self.background_load)})",
            ),
            ("give up", f"after {human_duration(self.max_suspend)} suspended"),
            (
                "limits",
                ", ".join(
                    [
                        "pause on battery" if self.pause_on_battery else "battery ignored",
                        f"max {self.max_temperature:g} °C"
                        if self.max_temperature is not None
                        else "temperature ignored",
                        f"give up below {format_size(self.min_free_memory)} free memory",
                    ]
                ),
            ),
            (
                "hours",
                ", ".join(w.text for w in self.schedule) if self.schedule else "any time",
            ),
            ("guests get", f"{pct(self.cpu_share)} of CPUs, {pct(self.memory_share)} of memory"),
            (
                "input",
                ", ".join(self.input_paths) + (" + ttys of logged-in users" * self.watch_ttys),
            ),
        ]
        return rows


# -- reading the file -----------------------------------------------------------------------------

_DURATION_KEYS = (
    "start_idle",
    "continue_idle",
    "max_suspend",
    "high_load_for",
    "low_load_for",
    "input_interval",
    "load_interval",
)
_FRACTION_KEYS = ("background_load", "high_load", "cpu_share", "memory_share")
_BOOL_KEYS = ("pause_on_battery", "watch_ttys")
KNOWN_KEYS = frozenset(f.name for f in dataclasses.fields(PolicyConfig))


def load_policy_config(home: Path, *, lend: str | None = None) -> PolicyConfig:
    """The `[policy]` table of `home/config.toml` (defaults if the file or table is missing), with
    `lend` from the command line overriding the file's. Raises ConfigError naming the bad key."""
    path = home / CONFIG_FILE
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        doc = {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    table = doc.get("policy", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: policy: expected a table ([policy])")
    try:
        config = parse_policy_table(table)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config.with_lend(lend)


def parse_policy_table(table: Mapping[str, Any]) -> PolicyConfig:
    """A PolicyConfig from the `[policy]` table's values (TOML types: strings, numbers, lists)."""
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in KNOWN_KEYS:
            raise ConfigError(f"policy.{key}: unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")
        kwargs[key] = _convert(key, value)
    return PolicyConfig(**kwargs)


def _convert(key: str, value: Any) -> Any:
    name = f"policy.{key}"
    if key in _DURATION_KEYS:
        return _duration(name, value)
    if key in _FRACTION_KEYS:
        return _fraction(name, value)
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if key == "lend":
        if value not in LEND_MODES:
            raise ConfigError(f"{name}: expected one of {', '.join(LEND_MODES)}, got {value!r}")
        return value
    if key == "min_free_memory":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str):
            try:
                return parse_size(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a size like 256M, got {value!r}")
    if key == "max_temperature":
        if value is False:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}: expected °C like 90, or false to ignore, got {value!r}")
    if key == "schedule":
        items = _string_list(name, value)
        windows = []
        for i, item in enumerate(items):
            try:
                windows.append(parse_window(item))
            except ValueError as exc:
                raise ConfigError(f"{name}[{i}]: {exc}") from None
        return tuple(windows)
    if key == "input_paths":
        return tuple(_string_list(name, value))
    raise AssertionError(key)  # pragma: no cover - every field is handled above


def _duration(name: str, value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a duration like 15m, got {value!r}") from None
    else:
        raise ConfigError(f"{name}: expected a duration like 15m, got {value!r}")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"{name}: expected a duration like 15m, got {value!r}")
    return seconds


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{name}: expected a fraction like 0.3 or '30%', got {value!r}")


def _string_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
    return list(value)


# -- wording shared by the policy and the CLI -----------------------------------------------------


def human_duration(seconds: float) -> str:
    """`0.5 s`, `12 s`, `5 min`, `4 min 30 s`, `1 h 5 min`, `3 d 2 h`."""
    if not math.isfinite(seconds):
        return "ever"
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        m, s = divmod(total, 60)
        return f"{m} min" + (f" {s} s" if s else "")
    if total < 86400:
        h, rest = divmod(total, 3600)
        m = rest // 60
        return f"{h} h" + (f" {m} min" if m else "")
    d, rest = divmod(total, 86400)
    h = rest // 3600
    return f"{d} d" + (f" {h} h" if h else "")


def pct(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"
