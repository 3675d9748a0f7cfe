"""The I2C bus a hardware front panel hangs on: the interface, Linux's bus, and a fake one.

`I2CBus` is the two byte-register operations a GPIO expander needs (smbus's "read/write byte
data"). `LinuxI2CBus` does them on `/dev/i2c-N` (the kernel's i2c-dev: `ioctl(I2C_SLAVE)` picks
the device, then a write of [register, value], or a write of [register] and a read of one byte),
with no library. `FakeI2CBus` holds fake devices by address, answering as a bus does (ENXIO where
nothing answers); `FakeMcp23017` is the expander the board clusters used (16 GPIO pins in two
ports, registers in IOCON.BANK=0 order), with a switch a test can flip.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Protocol

I2C_SLAVE = 0x0703  # linux/i2c-dev.h: the address the next reads and writes go to

# MCP23017 registers (IOCON.BANK = 0, its power-on layout).
IODIRA, IODIRB = 0x00, 0x01  # 1: input, 0: output (all inputs at power-on)
GPPUA, GPPUB = 0x0C, 0x0D  # pull-ups on inputs
GPIOA, GPIOB = 0x12, 0x13  # pin levels (read)
OLATA, OLATB = 0x14, 0x15  # output latches (write)
MCP23017_REGISTERS = 0x16


class I2CBus(Protocol):
    def read_byte_data(self, address: int, register: int) -> int: ...

    def write_byte_data(self, address: int, register: int, value: int) -> None: ...

    def close(self) -> None: ...


class LinuxI2CBus:
    """`/dev/i2c-<bus>` (needs the i2c-dev module and read-write access to the device)."""

    def __init__(self, bus: int) -> None:
        self.path = f"/dev/i2c-{bus}"
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(
                exc.errno, f"front panel: cannot open {self.path}: {exc.strerror}"
            ) from None
        self._address: int | None = None

    def _select(self, address: int) -> None:
        if address != self._address:
            fcntl.ioctl(self._fd, I2C_SLAVE, address)
            self._address = address

    def read_byte_data(self, address: int, register: int) -> int:
        self._select(address)
        os.write(self._fd, bytes([register]))
        data = os.read(self._fd, 1)
        if len(data) != 1:
            raise OSError(errno.EIO, f"short read from {self.path} at {address:#04x}")
        return data[0]

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        self._select(address)
        os.write(self._fd, bytes([register, value & 0xFF]))

    def close(self) -> None:
        os.close(self._fd)


class FakeMcp23017:
    """An MCP23017's registers; `pins_b` are what the port B pins are driven to from outside
    (a switch to ground reads 0 on its pin; an open one reads 1 with the pull-up on)."""

    def __init__(self) -> None:
        self.registers = bytearray(MCP23017_REGISTERS)
        self.registers[IODIRA] = self.registers[IODIRB] = 0xFF
        self.pins_b = 0xFF
        self.writes: list[tuple[int, int]] = []

    def read(self, register: int) -> int:
        if register == GPIOB:
            inputs = self.registers[IODIRB]
            return (self.pins_b & inputs) | (self.registers[OLATB] & ~inputs & 0xFF)
        if register == GPIOA:
            return self.registers[OLATA] & ~self.registers[IODIRA] & 0xFF
        return self.registers[register]

    def write(self, register: int, value: int) -> None:
        if register in (GPIOA, GPIOB):  # writing a port writes its latch
            register += OLATA - GPIOA
        self.registers[register] = value
        self.writes.append((register, value))

    @property
    def leds(self) -> int:
        """Port A's output pins that are high."""
        return self.registers[OLATA] & ~self.registers[IODIRA] & 0xFF


class FakeI2CBus:
    def __init__(self, devices: dict[int, FakeMcp23017]) -> None:
        self.devices = devices
        self.closed = False

    def _device(self, address: int, register: int) -> FakeMcp23017:
        device = self.devices.get(address)
        if device is None or self.closed:
            raise OSError(errno.ENXIO, f"no device answers at {address:#04x}")
        if not 0 <= register < MCP23017_REGISTERS:
            raise OSError(errno.EIO, f"no register {register:#04x}")
        return device

    def read_byte_data(self, address: int, register: int) -> int:
        return self._device(address, register).read(register)

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        self._device(address, register).write(register, value & 0xFF)

    def close(self) -> None:
        self.closed = True
