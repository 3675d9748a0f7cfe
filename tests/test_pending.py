"""Why a job waits and how it ended (node.jobs.core.pending), sans-io: the REASON column."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from node.jobs.core.pending import NO_WORKERS, Refusal, ending, explain
from node.jobs.core.scheduler import Needs
from node.testing import worker_record
from rainnet.identity import Identity
from rainnet.jobproto import DeclineKind
from rainnet.records import NodeRecord
from sandbox import Limits

GiB = 1 << 30
IDS = [Identity.generate().peer_id for _ in range(4)]
ONE = Needs(cpus=1, memory=512 << 20)


def _workers(n: int, state: str = "idle") -> list[NodeRecord]:
    return [dataclasses.replace(worker_record(IDS[i]), state=state) for i in range(n)]


def test_no_workers_known_is_not_hopeless() -> None:
    assert explain([], ONE, {}, ()).text == NO_WORKERS
    assert not explain([], ONE, {}, ()).hopeless


def test_what_no_worker_has_is_named_with_the_largest_there_is() -> None:
    two = _workers(2)
    big = explain(two, Needs(cpus=1000, memory=1 << 20), {}, ())
    assert big.hopeless and big.text == "no worker has 1000 CPUs (largest: 2)"
    mem = explain(two, Needs(cpus=1, memory=20 * GiB), {}, ())
    assert mem.text == "no worker has 20G of memory (largest: 4G)" and mem.hopeless
    image = explain(two, Needs(cpus=1, memory=1, image="python:3"), {}, ())
    assert image.text == "no worker has the docker sandbox (for --image)"
    gpus = explain(two, Needs(cpus=1, memory=1, gpus=1), {}, ())
    assert gpus.text == "no worker has 1 GPUs (most: 0)"
    # Each need met somewhere, never together: still hopeless, said so.
    mixed = [
        dataclasses.replace(worker_record(IDS[0]), cpus=8, memory=1 * GiB),
        dataclasses.replace(worker_record(IDS[1]), cpus=1, memory=16 * GiB),
    ]
    both = explain(mixed, Needs(cpus=8, memory=16 * GiB), {}, ())
    assert both.hopeless and "on one machine" in both.text


def test_owner_state_distrust_declines_and_busy_each_say_so() -> None:
    owner = _workers(1, state="owner")
    assert explain(owner, ONE, {}, ()).text == "1 worker is in owner state"
    assert not explain(owner, ONE, {}, ()).hopeless
    three = _workers(3)
    assert explain(three, ONE, {}, ()).text == "all 3 capable workers busy"
    mixed = [*_workers(2), dataclasses.replace(worker_record(IDS[3]), state="owner")]
    assert explain(mixed, ONE, {}, ()).text == "all 2 capable workers busy (1 more in owner state)"
    distrusted = explain(_workers(1), ONE, {}, {IDS[0]})
    assert distrusted.text == "the 1 capable worker is distrusted (see `rain workers`)"
    memory = Refusal(DeclineKind.CAPACITY, "not enough free memory for 20G (11.7G free)")
    declined = explain(three, ONE, {IDS[0]: memory, IDS[1]: memory}, ())
    assert declined.text == "2 workers declined: not enough free memory for 20G (11.7G free)"
    credit = Refusal(DeclineKind.CREDIT, "refused: your verified balance is 0 credits")
    assert explain(three, ONE, {IDS[2]: credit}, ()).text.startswith(
        "1 worker declined: credit: refused: your verified balance"
    )


def test_how_a_job_ended() -> None:
    lim = Limits(memory=100 << 20, wall_seconds=3)
    assert ending("done", 0, "ok", None, lim) == "done"
    assert ending("done", 3, "nonzero_exit", None, lim) == "failed (exit 3)"
    assert ending("done", 137, "out_of_memory", None, lim, 99 << 20) == (
        "out of memory (limit 100M, peak 99M)"
    )
    assert ending("done", None, "wall_time", None, lim) == "time limit (3s)"
    assert ending("cancelled", None, None, None, lim) == "cancelled"
    assert ending("failed", None, None, "no worker has 8 CPUs", lim) == (
        "failed: no worker has 8 CPUs"
    )


@given(
    st.lists(
        st.builds(
            lambda cpus, mem, state, docker: (cpus, mem, state, docker),
            st.integers(1, 64),
            st.integers(1, 64 * GiB),
            st.sampled_from(["idle", "busy", "owner", "suspended", "starting"]),
            st.booleans(),
        ),
        max_size=4,
    ),
    st.floats(0.01, 128),
    st.integers(1, 128 * GiB),
    st.sets(st.integers(0, 3)),
)
def test_every_situation_gets_one_line_and_hopeless_only_if_nobody_could(
    shapes: list[tuple[int, int, str, bool]], cpus: float, memory: int, distrusted: set[int]
) -> None:
    records = [
        dataclasses.replace(
            worker_record(IDS[i]),
            cpus=c,
            memory=m,
            state=s,
            backends=("native", "docker") if d else ("native",),
        )
        for i, (c, m, s, d) in enumerate(shapes)
    ]
    needs = Needs(cpus=cpus, memory=memory)
    out = explain(records, needs, {}, {IDS[i] for i in distrusted})
    assert out.text and "\n" not in out.text
    could = any(r.cpus >= cpus and r.memory >= memory for r in records)
    assert out.hopeless == (bool(records) and not could)
