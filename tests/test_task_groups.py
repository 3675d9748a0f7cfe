"""A task session's group result, sans-io: what the requester checks before it pays for a group
(node.jobs.core.results.group_problem), the limits a group's claim is bounded by, and the wire
shape."""

from __future__ import annotations

import dataclasses

import pytest

from ledger.block import MAX_WALL_MS, JobLimits
from node.jobs.core import results
from node.jobs.core.terms import group_limits
from rainnet import jobproto, wire

Task = tuple[jobproto.TaskResult, list[jobproto.FileEntry]]


def _task(job_id: str, out: bytes, cpu_ms: int = 10) -> Task:
    files = [results.entry(results.STDOUT, out), results.entry(results.STDERR, b"")]
    verdict = results.Verdict(0, "exited")
    t = jobproto.TaskResult(
        job_id=job_id,
        exit_code=0,
        reason="exited",
        cpu_ms=cpu_ms,
        wall_seconds=0.01,
        peak_memory=1,
        result_hash=results.result_hash(verdict, files),
        files=len(files),
    )
    return t, files


def _group(*tasks: Task) -> jobproto.Finished:
    results_ = tuple(t for t, _ in tasks)
    return jobproto.Finished(
        exit_code=None,
        reason="group",
        cpu_seconds=sum(t.cpu_ms for t in results_) / 1000,
        wall_seconds=0.02,
        peak_memory=1,
        result_hash=results.group_hash(results_),
        outputs=tuple(f for _, files in tasks for f in files),
        proposal=b"",
        tasks=results_,
    )


ALLOWED = {"a": 1000, "b": 1000}


def test_an_honest_group_passes() -> None:
    g = _group(_task("a", b"1\n"), _task("b", b"2\n"))
    assert results.group_problem(g, g.result_hash, 20, ALLOWED) is None


def test_a_group_round_trips_on_the_wire() -> None:
    g = _group(_task("a", b"1\n"), _task("b", b"2\n"))
    assert wire.decode_payload(wire.encode_payload(g), (jobproto.Finished,)) == g


@pytest.mark.parametrize(
    ("change", "why"),
    [
        # Another task than the ones run, or one left out (paid for nothing / twice).
        (lambda g: dataclasses.replace(g, tasks=g.tasks[:1]), "not the ones run"),
        # A task's files swapped for other bytes than its own result hash covers.
        (lambda g: dataclasses.replace(g, outputs=g.outputs[2:] + g.outputs[:2]), "do not hash"),
        # The files of the group do not add up to its tasks'.
        (lambda g: dataclasses.replace(g, outputs=g.outputs[:3]), "files are not"),
    ],
)
def test_a_group_that_is_not_what_it_claims_is_refused(change: object, why: str) -> None:
    g = _group(_task("a", b"1\n"), _task("b", b"2\n"))
    forged = change(g)  # type: ignore[operator]
    problem = results.group_problem(forged, forged.result_hash, 20, ALLOWED)
    assert problem is not None and why in problem


def test_the_claim_must_be_the_sum_within_each_tasks_limits() -> None:
    g = _group(_task("a", b"1\n"), _task("b", b"2\n"))
    assert "sum" in (results.group_problem(g, g.result_hash, 21, ALLOWED) or "")
    signed_other = bytes(32)
    assert "signs another" in (results.group_problem(g, signed_other, 20, ALLOWED) or "")
    # All of a group's CPU time put on one task: within the sum, beyond that task's limits.
    greedy = _group(_task("a", b"1\n", cpu_ms=1500), _task("b", b"2\n", cpu_ms=0))
    problem = results.group_problem(greedy, greedy.result_hash, 1500, ALLOWED)
    assert problem is not None and "limits" in problem


def test_a_groups_limits_add_the_tasks_wall_time() -> None:
    one = JobLimits(cpus_milli=1000, gpus=0, wall_ms=60_000)
    assert group_limits([one, one, one]) == JobLimits(cpus_milli=1000, gpus=0, wall_ms=180_000)
    with pytest.raises(ValueError):
        group_limits([dataclasses.replace(one, wall_ms=MAX_WALL_MS)] * 2)
