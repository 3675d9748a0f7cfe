"""The requester's per-worker hints stay bounded however many workers it meets."""

from __future__ import annotations

from node.jobs.requester import offers


def test_hints_forget_the_oldest_beyond_the_bound() -> None:
    table: dict[str, int] = {}
    cap = offers.MAX_WORKERS_REMEMBERED
    for i in range(cap + 10):
        offers.remember(table, f"w{i}", i)
    assert len(table) == cap
    assert "w9" not in table and "w10" in table  # the oldest went first
    offers.remember(table, "w10", -1)  # noted again: now the newest
    offers.remember(table, "new", 0)
    assert "w10" in table and "w11" not in table and table["w10"] == -1
