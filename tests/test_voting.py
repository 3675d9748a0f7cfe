"""Replica voting, sans-io."""

from __future__ import annotations

from node.jobs.core.voting import tally

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def test_waits_for_all_replicas_then_unanimity_pays_all() -> None:
    assert tally({"w1": A}, 2, 4).more_runs == 1
    t = tally({"w1": A, "w2": A}, 2, 4)
    assert t.decided and t.winners == {"w1", "w2"} and not t.losers


def test_disagreement_asks_one_more_run_which_decides() -> None:
    t = tally({"w1": A, "w2": B}, 2, 4)
    assert not t.decided and t.more_runs == 1
    t = tally({"w1": A, "w2": B, "w3": A}, 2, 4)
    assert t.decided and t.winning_hash == A and t.losers == {"w2"}


def test_a_majority_of_three_replicas_decides_at_once() -> None:
    t = tally({"w1": A, "w2": C, "w3": A}, 3, 5)
    assert t.decided and t.winners == {"w1", "w3"} and t.losers == {"w2"}


def test_no_majority_within_the_bound_fails_and_pays_everyone() -> None:
    """Not deterministic looks just so: nobody is proven wrong, so nobody is marked or unpaid."""
    results = {"w1": A, "w2": B, "w3": C, "w4": A}
    t = tally(results, 2, 4)
    assert t.failed and not t.decided and not t.losers
    assert t.winners == {"w1", "w2", "w3", "w4"}
    assert "results differ (not deterministic?): 4 runs gave 3" in t.differ_message(results)
