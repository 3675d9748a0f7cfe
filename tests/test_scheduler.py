"""node.jobs.core.scheduler, sans-io: which workers a requester offers a job to."""

from __future__ import annotations

from node.jobs.core import scheduler
from rainnet import records
from rainnet.identity import Identity

ONE_CPU = scheduler.Needs(cpus=1, memory=1 << 20)


def candidate(n: int, rtt: float, cpus: int = 2, state: str = "idle") -> scheduler.Candidate:
    me = Identity.from_seed(bytes([n + 1]) * 32)
    record = records.NodeRecord(
        peer_id=me.peer_id,
        addrs=(f"/ip4/127.0.0.1/tcp/{4000 + n}",),
        cpus=cpus,
        memory=1 << 30,
        gpus=0,
        backends=("native",),
        version="t",
        state=state,
        seq=1,
        issued_at=0.0,
        ttl=60.0,
    )
    return scheduler.Candidate(record, rtt)


def test_a_burst_of_jobs_spreads_over_the_workers_by_what_we_gave_them() -> None:
    """Records are refreshed only every few seconds: ranking by them alone sent a burst of jobs
    all to the nearest worker. Our own commitments spread them."""
    near, mid, far = candidate(0, 0.001), candidate(1, 0.002), candidate(2, 0.003)
    workers = [far, near, mid]
    committed: dict[str, float] = {}
    chosen = []
    for _ in range(6):
        best = scheduler.rank_workers(workers, ONE_CPU, committed=committed)[0].peer_id
        committed[best] = committed.get(best, 0.0) + 1
        chosen.append(best)
    ids = [c.record.peer_id for c in (near, mid, far)]
    assert chosen == [*ids, *ids]  # least loaded by us first, then the nearest
    # Every worker full (2 CPUs each): the job still goes somewhere (it queues there).
    assert scheduler.rank_workers(workers, ONE_CPU, committed=committed)[0].peer_id == ids[0]


def test_room_comes_before_idleness_and_distance() -> None:
    near_full, far_busy = candidate(0, 0.001), candidate(1, 0.5, state="busy")
    committed = {near_full.record.peer_id: 2.0}
    ranked = scheduler.rank_workers([near_full, far_busy], ONE_CPU, committed=committed)
    assert [r.peer_id for r in ranked] == [far_busy.record.peer_id, near_full.record.peer_id]
    # Without commitments: idle before busy, whatever the distance.
    ranked = scheduler.rank_workers([far_busy, near_full], ONE_CPU)
    assert ranked[0].peer_id == near_full.record.peer_id


def test_workers_that_cannot_run_the_job_are_left_out() -> None:
    small, owner = candidate(0, 0.001, cpus=1), candidate(1, 0.001, state="owner")
    ok = candidate(2, 0.1)
    two = scheduler.Needs(cpus=2, memory=1 << 20)
    ranked = scheduler.rank_workers([small, owner, ok], two)
    assert [r.peer_id for r in ranked] == [ok.record.peer_id]
    assert scheduler.rank_workers([small, owner, ok], two, exclude=[ok.record.peer_id]) == []
