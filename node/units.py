"""Human sizes and durations, read the same way everywhere in the CLI: `64M`, `2G`, `30s`, `10m`."""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|)\s*$")


def parse_size(text: str) -> int:
    """Bytes in `text` such as `512`, `64M`, `2G`, `1.5GiB` (binary units)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use a number with K, M, G or T, like 512M)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])


def parse_duration(text: str) -> float:
    """Seconds in `text` such as `30s`, `10m`, `1h`, `250ms` (a bare number is seconds)."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use a number with ms, s, m, h or d, like 10m)")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit]


def format_size(n: int) -> str:
    """`n` bytes the way parse_size reads them back (rounded to one decimal): 1536 -> `1.5K`."""
    for unit in ("T", "G", "M", "K"):
        if n >= _SIZE_UNITS[unit]:
            return f"{n / _SIZE_UNITS[unit]:.1f}".removesuffix(".0") + unit
    return str(n)


def format_duration(seconds: float) -> str:
    """`seconds` the way parse_duration reads them back, in the largest unit that keeps it
    short: 3 -> `3s`, 600 -> `10m`, 5400 -> `1.5h`."""
    for unit in ("d", "h", "m"):
        if seconds >= 2 * _DURATION_UNITS[unit] or seconds == _DURATION_UNITS[unit]:
            return f"{seconds / _DURATION_UNITS[unit]:.1f}".removesuffix(".0") + unit
    return f"{seconds:.1f}".removesuffix(".0") + "s"
