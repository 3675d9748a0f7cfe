"""The hardware front panel (optional): a row of LEDs and a toggle on an I2C GPIO expander.

`rain-node --front-panel i2c:BUS:ADDR` mirrors this node's lights (node.panel.lights) on an
MCP23017 at ADDR on /dev/i2c-BUS, as on the board clusters' front panels:

    port A, pins 0-4: up, network, temperature, user 1, user 2 (outputs, LED to ground)
    port A, pins 0-7: the load bar in eighths, when the toggle says so
    port B, pin 0:    the toggle (input, pulled up): closed to ground = load bar

A blinking light (a user light set to blink, the network light while reached only through a
relay) blinks at 2 Hz. The driver writes the latch only when the LEDs change, reads the toggle
4 times a second, and turns the LEDs off when the node stops. A bus error is logged (once a
minute at most) and tried again at the next tick: a loose cable must not stop the node.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from node.panel.i2c import GPIOB, GPPUB, IODIRA, IODIRB, OLATA, I2CBus, LinuxI2CBus
from node.panel.lights import NetLight, PanelLights
from rainnet.records import LOAD_STEPS, Light

log = logging.getLogger("rainnet.panel")

TICK = 0.25
BLINK_HZ = 2.0
ERROR_LOG_INTERVAL = 60.0
TOGGLE_PIN = 0x01  # port B, pin 0
_SPEC = re.compile(r"^i2c:(\d{1,3}):(0x[0-9a-fA-F]{1,2}|\d{1,3})$")


class Row(enum.StrEnum):
    LIGHTS = "lights"
    LOAD = "load"


@dataclass(frozen=True)
class FrontPanelSpec:
    bus: int
    address: int

    @classmethod
    def parse(cls, text: str) -> FrontPanelSpec:
        """`i2c:1:0x20` (bus 1, address 0x20); ValueError naming the expected form."""
        m = _SPEC.match(text.strip())
        address = int(m.group(2), 0) if m else -1
        if m is None or not 0x03 <= address <= 0x77:
            raise ValueError(f"--front-panel {text!r}: expected i2c:BUS:ADDR, like i2c:1:0x20")
        return cls(int(m.group(1)), address)

    def open_bus(self) -> I2CBus:
        return LinuxI2CBus(self.bus)


def leds(lights: PanelLights, row: Row, blink_on: bool) -> int:
    """Port A's pins for `lights` (bit 0 = pin 0)."""
    if row is Row.LOAD:
        lit = max(0, min(LOAD_STEPS, lights.load))
        return (1 << lit) - 1
    net = {NetLight.OFF: Light.OFF, NetLight.DIRECT: Light.ON, NetLight.RELAY: Light.BLINK}
    row_lights = (
        Light.ON if lights.up else Light.OFF,
        net[lights.net],
        Light.ON if lights.hot else Light.OFF,
        lights.user1,
        lights.user2,
    )
    out = 0
    for pin, light in enumerate(row_lights):
        if light is Light.ON or (light is Light.BLINK and blink_on):
            out |= 1 << pin
    return out


class FrontPanel:
    def __init__(self, bus: I2CBus, address: int) -> None:
        self._bus = bus
        self._address = address
        self._shown: int | None = None  # what the latch holds, None: unknown (set it)
        self.row = Row.LIGHTS

    def setup(self) -> None:
        """Port A all outputs (off), port B inputs with the toggle's pull-up."""
        bus, a = self._bus, self._address
        bus.write_byte_data(a, OLATA, 0)
        bus.write_byte_data(a, IODIRA, 0x00)
        bus.write_byte_data(a, IODIRB, 0xFF)
        bus.write_byte_data(a, GPPUB, TOGGLE_PIN)
        self._shown = 0

    def read_toggle(self) -> Row:
        closed = not self._bus.read_byte_data(self._address, GPIOB) & TOGGLE_PIN
        self.row = Row.LOAD if closed else Row.LIGHTS
        return self.row

    def show(self, lights: PanelLights, now: float) -> None:
        """Read the toggle, and write the LEDs if they changed."""
        row = self.read_toggle()
        value = leds(lights, row, blink_on=math.floor(now * BLINK_HZ * 2) % 2 == 0)
        if value != self._shown:
            self._bus.write_byte_data(self._address, OLATA, value)
            self._shown = value

    def off(self) -> None:
        self._bus.write_byte_data(self._address, OLATA, 0)
        self._shown = 0

    async def run(self, lights: Callable[[], PanelLights]) -> None:
        """Mirror `lights()` until cancelled; the LEDs go off at the end."""
        import trio

        failed_at = -math.inf
        ready = False
        try:
            while True:
                try:
                    if not ready:
                        self.setup()
                        ready = True
                    self.show(lights(), trio.current_time())
                except OSError as exc:
                    ready = False  # (the expander may have been reset: set it up again)
                    if trio.current_time() - failed_at >= ERROR_LOG_INTERVAL:
                        log.warning("front panel at %#04x: %s", self._address, exc)
                        failed_at = trio.current_time()
                await trio.sleep(TICK)
        finally:
            with contextlib.suppress(OSError):
                self.off()
            self._bus.close()
