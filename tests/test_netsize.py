"""rainnet.netsize in memory: from routing tables of random networks, its estimate is near the
network's size, and it never says fewer nodes than it holds."""

from __future__ import annotations

import random
import statistics

import pytest

from rainnet.netsize import estimate


def ids(rng: random.Random, n: int) -> list[bytes]:
    return [rng.randbytes(34) for _ in range(n)]


@pytest.mark.parametrize("size", [30, 300, 3000, 30000])
def test_the_median_estimate_is_near_the_size(size: int) -> None:
    rng = random.Random(size)
    guesses = []
    for _ in range(40):
        me, *others = ids(rng, size)
        guesses.append(estimate(me, others))
    median = statistics.median(g for g in guesses if g is not None)
    assert size / 1.5 < median < size * 1.5


def test_small_tables() -> None:
    rng = random.Random(1)
    me = rng.randbytes(34)
    assert estimate(me, []) is None
    assert estimate(me, [me]) is None
    few = ids(rng, 3)
    got = estimate(me, few)
    assert got is not None and got >= 4  # (never fewer than it holds, itself counted)
