"""This node's own lights: the two user lights, too hot, and the load, as its record says them.

The front panels of the board clusters this grew from had a row of lights per node (boot,
network, temperature, two the programmer sets) and a toggle that turned the row into a load bar.
`NodeLights` keeps what this node shows of those in its signed record (rainnet.records), so every
peer's panel shows them too:
- user lights: set by the owner (`rain light user1 on`), or by a guest job while it runs: a job
  writes `user1=on user2=blink` (any of off, on, blink) to the file `.rain-lights` in its working
  directory (`/job`); the newest such file of the running guests wins, and the owner's setting
  is back once the job is gone;
- hot: the idle policy's hottest sensor at or above the owner's `max_temperature` (the limit that
  suspends guests), off without sensors;
- load: the machine's busy share, guests included, in eighths.

User lights and hot are news at once (the node re-signs its record, peers fetch it at their
next heartbeat). The load moves all the time, and each new record costs every peer a hello and
the DHT a put: a load change alone re-signs only once it moved by a quarter, and at most every
LOAD_RESIGN_INTERVAL. This node's own panel reads the live load (`load`), not the signed one.

No trio at import; `run` is the node's task (one wake-up a second, a stat per running guest).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rainnet.records import LOAD_STEPS, Light

log = logging.getLogger("rainnet.panel")

GUEST_LIGHT_FILE = ".rain-lights"
MAX_LIGHT_FILE = 256  # bytes read of a guest's light file (it is written by a stranger)
LOAD_RESIGN_INTERVAL = 20.0
LOAD_RESIGN_STEP = 2  # eighths
TICK = 1.0


class UserLight(enum.StrEnum):
    USER1 = "user1"
    USER2 = "user2"


class NetLight(enum.StrEnum):
    """The network light: reached directly, only through a relay, or no one reached yet."""

    OFF = "off"
    DIRECT = "direct"
    RELAY = "relay"


def net_light(addrs: tuple[str, ...] | list[str], reached: bool) -> NetLight:
    """A node whose record names a circuit address (`/p2p-circuit`) is reached through a relay."""
    if not reached:
        return NetLight.OFF
    relayed = any("/p2p-circuit" in a for a in addrs)
    return NetLight.RELAY if relayed else NetLight.DIRECT


@dataclass(frozen=True)
class PanelLights:
    """One node's row of lights, as a front panel shows it, and its load for the bar."""

    up: bool
    net: NetLight
    hot: bool
    user1: Light
    user2: Light
    load: int  # eighths


@dataclass(frozen=True)
class RecordLights:
    """What our record says of our lights (rainnet.network.Description's fields)."""

    user1: Light = Light.OFF
    user2: Light = Light.OFF
    hot: bool = False
    load: int = 0


def load_level(busy: float | None) -> int:
    """A busy share (0..1) in eighths; 0 when not measured yet."""
    if busy is None or math.isnan(busy):
        return 0
    return max(0, min(LOAD_STEPS, round(busy * LOAD_STEPS)))


def parse_lights(text: str) -> dict[UserLight, Light]:
    """`user1=on user2=blink` (whitespace or newlines between): the lights it names. Anything
    else in it is ignored: it comes from a guest job."""
    out: dict[UserLight, Light] = {}
    for token in text.split():
        name, _, value = token.partition("=")
        try:
            out[UserLight(name.strip().lower())] = Light(value.strip().lower())
        except ValueError:
            continue
    return out


def read_guest_lights(job_dir: Path) -> tuple[float, dict[UserLight, Light]] | None:
    """(mtime, lights) of the light file a guest job wrote in its directory; None without one.

    The job owns that directory, so the file may be anything: a symlink (refused by O_NOFOLLOW),
    a FIFO (opened without blocking, then refused as not regular), a huge file (read up to
    MAX_LIGHT_FILE bytes). Nothing of its content is shown but the lights it names."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(job_dir / GUEST_LIGHT_FILE, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        data = os.read(fd, MAX_LIGHT_FILE)
    except OSError:
        return None
    finally:
        os.close(fd)
    return st.st_mtime, parse_lights(data.decode("ascii", "replace"))


class NodeLights:
    """This node's lights; `on_change()` is told when the record should be signed anew."""

    def __init__(
        self,
        max_temperature: float | None,
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_temperature = max_temperature
        self._on_change = on_change
        self._clock = clock
        self._owner = {UserLight.USER1: Light.OFF, UserLight.USER2: Light.OFF}
        self._guest: dict[UserLight, Light] = {}
        self.hot = False
        self.load = 0  # live, in eighths: what our own panel shows
        self._told = RecordLights()  # what our record says (or will once signed)
        self._load_told_at = -math.inf

    def user(self, which: UserLight) -> Light:
        """What the light shows now: the running guest's choice, else the owner's."""
        return self._guest.get(which, self._owner[which])

    def set_user(self, which: UserLight, light: Light) -> None:
        """The owner's choice (`rain light`)."""
        self._owner[which] = light
        self._tell_if_changed()

    def observe(
        self, busy: float | None, temperature: float | None, guest_dirs: list[Path]
    ) -> None:
        """One look at the signals and the guests' light files."""
        self.load = load_level(busy)
        limit = self._max_temperature
        self.hot = limit is not None and temperature is not None and temperature >= limit
        newest: tuple[float, dict[UserLight, Light]] | None = None
        for job_dir in guest_dirs:
            found = read_guest_lights(job_dir)
            if found is not None and (newest is None or found[0] >= newest[0]):
                newest = found
        self._guest = newest[1] if newest is not None else {}
        self._tell_if_changed()

    def panel(self, addrs: list[str], reached: bool) -> PanelLights:
        """Our own row of lights now (the live load, not the signed one)."""
        return PanelLights(
            up=True,
            net=net_light(addrs, reached),
            hot=self.hot,
            user1=self.user(UserLight.USER1),
            user2=self.user(UserLight.USER2),
            load=self.load,
        )

    def for_record(self) -> RecordLights:
        """What our record says of our lights."""
        return self._told

    def _tell_if_changed(self) -> None:
        told = self._told
        now = self._clock()
        lights = RecordLights(
            self.user(UserLight.USER1), self.user(UserLight.USER2), self.hot, told.load
        )
        load_moved = abs(self.load - told.load) >= LOAD_RESIGN_STEP
        if load_moved and now - self._load_told_at >= LOAD_RESIGN_INTERVAL:
            lights = dataclasses.replace(lights, load=self.load)
            self._load_told_at = now
        if lights != told:
            self._told = lights
            self._on_change()

    async def run(
        self,
        signals: Callable[[], tuple[float | None, float | None]],
        guest_dirs: Callable[[], list[Path]],
    ) -> None:
        """Look once a second until cancelled: `signals()` gives (busy share, temperature)."""
        import trio

        while True:
            busy, temperature = signals()
            self.observe(busy, temperature, guest_dirs())
            await trio.sleep(TICK)
