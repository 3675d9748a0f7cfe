"""The hardware front panel's driver against a fake I2C bus with a fake MCP23017 (no hardware
here): its setup, the lights on port A, the toggle on port B, blinking, a bus that fails."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from node.panel.front import FrontPanel, FrontPanelSpec, Row, leds
from node.panel.i2c import GPPUB, IODIRA, IODIRB, OLATA, FakeI2CBus, FakeMcp23017
from node.panel.lights import NetLight, PanelLights
from rainnet.records import Light

ADDR = 0x20
LIT = PanelLights(up=True, net=NetLight.DIRECT, hot=False, user1=Light.ON, user2=Light.OFF, load=3)


def _panel() -> tuple[FrontPanel, FakeMcp23017, FakeI2CBus]:
    chip = FakeMcp23017()
    bus = FakeI2CBus({ADDR: chip})
    return FrontPanel(bus, ADDR), chip, bus


def test_spec() -> None:
    assert FrontPanelSpec.parse("i2c:1:0x20") == FrontPanelSpec(1, 0x20)
    assert FrontPanelSpec.parse("i2c:0:39") == FrontPanelSpec(0, 39)
    for bad in ("i2c:1", "spi:1:0x20", "i2c:x:0x20", "i2c:1:0x00", "i2c:1:0x78", "i2c:1:0x200"):
        with pytest.raises(ValueError, match="i2c:BUS:ADDR"):
            FrontPanelSpec.parse(bad)


def test_setup_makes_port_a_lights_and_port_b_the_toggle() -> None:
    panel, chip, _ = _panel()
    panel.setup()
    regs = chip.registers
    assert (regs[IODIRA], regs[IODIRB], regs[GPPUB], regs[OLATA]) == (0x00, 0xFF, 0x01, 0x00)


def test_the_row_shows_the_lights_and_the_toggle_makes_it_a_load_bar() -> None:
    panel, chip, _ = _panel()
    panel.setup()
    panel.show(LIT, now=0.0)
    assert chip.leds == 0b01011  # up, network, user 1
    chip.pins_b = 0xFE  # the toggle closed to ground
    panel.show(LIT, now=0.0)
    assert panel.read_toggle() is Row.LOAD and chip.leds == 0b111  # 3 eighths
    chip.pins_b = 0xFF
    panel.show(PanelLights(True, NetLight.OFF, True, Light.OFF, Light.ON, 0), now=0.0)
    assert panel.read_toggle() is Row.LIGHTS and chip.leds == 0b10101  # up, temp, user 2


def test_writes_only_what_changed() -> None:
    panel, chip, _ = _panel()
    panel.setup()
    before = len(chip.writes)
    for _ in range(10):
        panel.show(LIT, now=0.0)
    assert len(chip.writes) == before + 1


def test_blinking_lights() -> None:
    relayed = PanelLights(True, NetLight.RELAY, False, Light.BLINK, Light.OFF, 8)
    on, off = leds(relayed, Row.LIGHTS, True), leds(relayed, Row.LIGHTS, False)
    assert (on, off) == (0b01011, 0b00001)
    assert leds(relayed, Row.LOAD, False) == 0xFF
    panel, chip, _ = _panel()
    panel.setup()
    seen = set()
    for tick in range(8):
        panel.show(relayed, now=tick * 0.25)  # 2 Hz: on and off within each half second
        seen.add(chip.leds)
    assert seen == {on, off}


def test_the_driver_mirrors_survives_a_bus_error_and_turns_off_at_the_end() -> None:
    async def main() -> None:
        panel, chip, bus = _panel()
        lights = [LIT]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(panel.run, lambda: lights[0])
            await trio.sleep(1)
            assert chip.leds == 0b01011
            del bus.devices[ADDR]  # the cable comes loose
            lights[0] = PanelLights(True, NetLight.DIRECT, True, Light.ON, Light.ON, 3)
            await trio.sleep(1)
            bus.devices[ADDR] = fresh = FakeMcp23017()  # back, reset to power-on state
            await trio.sleep(1)
            assert fresh.registers[IODIRA] == 0 and fresh.leds == 0b11111
            nursery.cancel_scope.cancel()
        assert fresh.leds == 0 and bus.closed

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_fake_bus_answers_like_a_bus() -> None:
    bus = FakeI2CBus({ADDR: FakeMcp23017()})
    with pytest.raises(OSError) as exc:
        bus.read_byte_data(0x21, 0)
    assert exc.value.errno == errno.ENXIO
    with pytest.raises(OSError):
        bus.write_byte_data(ADDR, 0x40, 1)
