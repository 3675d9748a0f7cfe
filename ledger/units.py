"""The unit of credit and how amounts are counted, stored and shown.

1 credit = 1 CPU-second of guest work as measured by the worker's sandbox. Amounts are integers
in milli-credits everywhere below the display (blocks, SQLite, sums), so sums over a long chain
never drift the way floats do; only `format_credits` and `credits` turn them into credits.
"""

from __future__ import annotations

MILLI_PER_CREDIT = 1000

# A GPU-second is worth this many CPU-seconds. A whole GPU is scarcer and draws more power than
# one core, and a GPU job usually holds a core too (counted separately as CPU-seconds), so 10 is a
# round, conservative figure. It is part of the block format (v1): every node must compute the same
# amount from the same signed block, so changing it needs a new block version.
GPU_SECOND_WEIGHT = 10

# A new identity starts at 0 and may go down to this (one CPU-hour), so that a network of nodes
# that have never worked can still run each other's first jobs.
DEFAULT_FLOOR_MILLI = -3600 * MILLI_PER_CREDIT


def amount_milli(cpu_ms: int, gpu_ms: int) -> int:
    """Milli-credits for `cpu_ms` milli-CPU-seconds and `gpu_ms` milli-GPU-seconds of work."""
    return cpu_ms + GPU_SECOND_WEIGHT * gpu_ms


def credits(milli: int) -> float:
    """`milli` as a float number of credits (for JSON; exact to the milli-credit)."""
    return milli / MILLI_PER_CREDIT


def format_credits(milli: int) -> str:
    """`milli` as credits with up to three decimals: 1500 -> `1.5`, -3600000 -> `-3600`."""
    sign = "-" if milli < 0 else ""
    whole, frac = divmod(abs(milli), MILLI_PER_CREDIT)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:03d}".rstrip("0")


def parse_credits(text: str) -> int:
    """Milli-credits in `text` such as `-3600` or `12.5` (at most three decimals)."""
    raw = text.strip()
    sign = -1 if raw.startswith("-") else 1
    digits = raw.lstrip("+-")
    whole, _, frac = digits.partition(".")
    if not whole.isdigit() or (frac and (not frac.isdigit() or len(frac) > 3)):
        raise ValueError(f"not an amount of credits: {text!r} (like -3600 or 12.5)")
    return sign * (int(whole) * MILLI_PER_CREDIT + int(frac.ljust(3, "0") or "0"))
