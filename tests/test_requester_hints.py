"""The requester's per-worker hints stay bounded however many workers it meets."""

from __future__ import annotations

from node.jobs.requester import requester


def test_hints_forget_the_oldest_beyond_the_bound() -> None:
    table: dict[str, int] = {}
    cap = requester.MAX_WORKERS_REMEMBERED
    for i in range(cap + 10):
        requester._remember(table, f"w{i}", i)
    assert len(table) == cap
    assert "w9" not in table and "w10" in table  # the oldest went first
    requester._remember(table, "w10", -1)  # noted again: now the newest
    requester._remember(table, "new", 0)
    assert "w10" in table and "w11" not in table and table["w10"] == -1
