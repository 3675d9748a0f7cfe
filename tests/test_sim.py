"""The simulator (sim.world) at small sizes, its invariants checked: the node's own cores keep
a bounded view and bounded connections, place every job a live worker could run, and declare
no live, reachable peer gone, with churn and a partition."""

from __future__ import annotations

import pytest

from sim.world import Scenario, simulate


@pytest.mark.parametrize("nodes", [60, 200])
def test_bounded_placed_and_no_false_verdicts(nodes: int) -> None:
    scenario = Scenario(nodes=nodes, warmup=40, duration=60, lifetime=600, job_rate=0.01)
    report = simulate(scenario)
    row = report.row()
    print(row)
    high = 8  # Scenario's max_connections
    assert report.view_after_plan <= high  # (newcomers past it are trimmed at each tick)
    assert row["conns med"] <= high  # (past it only a lookup's transient burst, for 5 s)
    assert report.jobs > 0 and report.unplaced_placeable == 0
    assert report.false_gone == 0  # no live, reachable peer declared gone
    assert report.cut_gone > 0  # (the partition was felt: the cut-off side left the views)
    assert report.out_of_view and max(report.out_of_view) < 15  # timeout 10 s, ticks 0.5-2 s
    assert 0.5 < row["size est"] < 2


def test_the_same_scenario_runs_the_same() -> None:
    scenario = Scenario(nodes=40, warmup=30, duration=20, partition=0)
    first, second = simulate(scenario).row(), simulate(scenario).row()
    del first["core ms/s"], second["core ms/s"]  # (CPU time: the only measured figure)
    assert str(first) == str(second)  # (as text: a figure with no sample is nan, != itself)
