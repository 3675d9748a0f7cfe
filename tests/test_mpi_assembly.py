"""node.mpi.assembly and node.mpi.reservations, sans-io: who forms an MPI group, whether its
reservation holds all or nothing, and what a member admits as a group's job."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.mpi import assembly
from node.mpi.assembly import Answer, Assembly, Failed, GroupPlan, GroupRequest, Ready
from node.mpi.reservations import (
    GROUP_ENV,
    SECRET_ENV,
    Admitted,
    Reservation,
    Reservations,
    Runtime,
    admit_group_job,
)
from node.mpi.wall import GroupPeers
from rainnet import mpiproto, records, wire
from rainnet.identity import Identity
from sandbox import JobSpec, Limits, Network

GiB = 1 << 30


def record(
    n: int,
    *,
    cpus: int = 2,
    memory: int = 4 * GiB,
    state: str = "idle",
    mpi: bool = True,
    nat: bool = False,
    ip: str = "127.0.0.1",
) -> records.NodeRecord:
    me = Identity.from_seed(bytes([n + 1]) * 32)
    direct = f"/ip4/{ip}/tcp/{4000 + n}"
    relayed = f"/ip4/192.0.2.1/tcp/4001/p2p/{me.peer_id}/p2p-circuit/p2p/{me.peer_id}"
    return records.NodeRecord(
        peer_id=me.peer_id,
        addrs=(relayed,) if nat else (direct,),
        cpus=cpus,
        memory=memory,
        gpus=0,
        backends=("native",),
        version="t",
        state=state,
        seq=1,
        issued_at=0.0,
        ttl=60.0,
        mpi=mpi,
    )


def test_a_group_fills_members_in_order_up_to_per_node() -> None:
    peers = [record(i) for i in range(3)]
    plan = assembly.plan_group(GroupRequest(ranks=3, per_node=1), peers)
    assert isinstance(plan, GroupPlan)
    assert [m.ranks for m in plan.members] == [1, 1, 1]
    assert [m.host for m in plan.members] == ["127.1.0.1", "127.1.0.2", "127.1.0.3"]
    # Without --per-node a member takes as many as its CPUs hold.
    plan = assembly.plan_group(GroupRequest(ranks=3), peers)
    assert isinstance(plan, GroupPlan)
    assert [m.ranks for m in plan.members] == [2, 1]


def test_the_shortfall_names_what_was_missing() -> None:
    peers = [record(0), record(1, nat=True), record(2, mpi=False), record(3, state="owner")]
    out = assembly.plan_group(GroupRequest(ranks=4, per_node=1), peers)
    assert isinstance(out, assembly.Unassembled)
    assert out.reason.startswith("need 4 ranks; 2 idle peers take MPI")
    assert "1 of them behind NAT" in out.reason
    assert "room for 1 rank at 1 per node" in out.reason
    none = assembly.plan_group(GroupRequest(ranks=2), [record(0, mpi=False)])
    assert isinstance(none, assembly.Unassembled)
    assert none.reason == "need 2 ranks; none of the 1 peers takes MPI ranks"


@given(
    ranks=st.integers(1, 40),
    per_node=st.none() | st.integers(1, 8),
    cpus_per_rank=st.sampled_from([0.25, 0.5, 1.0, 2.0]),
    shapes=st.lists(
        st.tuples(st.integers(0, 16), st.booleans(), st.booleans(), st.booleans()), max_size=12
    ),
)
def test_a_plan_is_exact_and_uses_only_fit_direct_members(
    ranks: int,
    per_node: int | None,
    cpus_per_rank: float,
    shapes: list[tuple[int, bool, bool, bool]],
) -> None:
    request = GroupRequest(ranks=ranks, per_node=per_node, cpus_per_rank=cpus_per_rank)
    peers = [
        record(i, cpus=cpus, mpi=mpi, nat=nat, state="idle" if idle else "owner")
        for i, (cpus, mpi, nat, idle) in enumerate(shapes)
    ]
    by_id = {p.peer_id: p for p in peers}
    out = assembly.plan_group(request, peers)
    capacity = sum(
        assembly.rank_slots(p, request)
        for p in peers
        if p.mpi and p.state == "idle" and not assembly.behind_nat(p)
    )
    if isinstance(out, assembly.Unassembled):
        assert capacity < ranks  # it fails only when the ranks really do not fit
        assert out.reason.startswith(f"need {ranks} rank")
        return
    assert out.ranks == ranks
    assert len({m.peer_id for m in out.members}) == len(out.members)
    assert len({m.host for m in out.members}) == len(out.members)
    for m in out.members:
        peer = by_id[m.peer_id]
        assert peer.mpi and peer.state == "idle" and not assembly.behind_nat(peer)
        assert 1 <= m.ranks <= assembly.rank_slots(peer, request)


@given(st.lists(st.sampled_from(["reserve", "refuse", "silent"]), min_size=1, max_size=8))
def test_a_reservation_holds_all_or_nothing(answers: list[str]) -> None:
    plan = assembly.plan_group(
        GroupRequest(ranks=len(answers), per_node=1), [record(i) for i in range(len(answers))]
    )
    assert isinstance(plan, GroupPlan)
    a = Assembly(plan)
    for member, answer in zip(plan.members, answers, strict=True):
        if answer == "reserve":
            a.reserved(member.peer_id)
        elif answer == "refuse":
            a.refused(member.peer_id, "busy")
    if "silent" in answers and a.outcome is None:
        a.timed_out()
    outcome = a.outcome
    if all(x == "reserve" for x in answers):
        assert isinstance(outcome, Ready)
        return
    assert isinstance(outcome, Failed)
    reserved = {m.peer_id for m, x in zip(plan.members, answers, strict=True) if x == "reserve"}
    assert reserved <= set(outcome.release)  # nothing stays reserved by a failed group
    assert set(outcome.refused).isdisjoint(reserved)
    assert all(a.answers[p] is not Answer.RESERVED for p in outcome.refused)


def test_the_launcher_address_is_the_one_members_reach() -> None:
    assert assembly.launcher_address(["127.0.0.1", "10.0.0.5"], ["127.0.0.1"]) == "127.0.0.1"
    assert assembly.launcher_address(["127.0.0.1", "10.9.0.1", "10.0.0.5"], ["10.0.0.7"]) == (
        "10.0.0.5"
    )


def test_hostfiles() -> None:
    plan = assembly.plan_group(GroupRequest(ranks=3), [record(0, ip="10.0.0.2"), record(1)])
    assert isinstance(plan, GroupPlan)
    lines = {f"{m.address}:{m.ranks}" for m in plan.members}
    assert set(assembly.hostfile(plan, assembly.HostFormat.MPICH).split()) == lines
    assert lines == {"10.0.0.2:2", "127.0.0.1:1"} or lines == {"127.0.0.1:2", "10.0.0.2:1"}
    first = plan.members[0]
    openmpi = assembly.hostfile(plan, assembly.HostFormat.OPENMPI)
    assert openmpi.startswith(f"{first.address} slots={first.ranks}\n")
    assert '"ranks": 3' in assembly.hostfile(plan, assembly.HostFormat.JSON)


# ----- the member's side ---------------------------------------------------------------------

RUNTIME = Runtime(proxy="/opt/node/bin/hydra_pmi_proxy", bin_dir="/opt/node/bin")
REQ = "requester-peer"
GROUP = "ab" * 16


def reservation(secret: str, expires: float = 100.0, cpus: float = 2.0) -> Reservation:
    digest = hashlib.sha256(secret.encode()).digest()
    peers = GroupPeers(frozenset({"127.0.0.1"}), frozenset(), "127.0.0.1")
    return Reservation(REQ, GROUP, 2, cpus, 1 * GiB, 60.0, digest, expires, peers)


def group_spec(secret: str, cpus: float = 2.0, argv0: str = "/else/bin/hydra_pmi_proxy") -> JobSpec:
    return JobSpec.create(
        [argv0, "--control-port", "127.0.0.1:5000"],
        env={GROUP_ENV: GROUP, SECRET_ENV: secret},
        limits=Limits(cpus=cpus, memory=1 * GiB, network=Network.GROUP),
    )


def test_a_group_job_is_admitted_once_with_the_secret_and_runs_our_proxy() -> None:
    held = Reservations()
    assert held.reserve(reservation("s3cret"), now=0.0, room=None) is None
    assert isinstance(admit_group_job(group_spec("wrong"), REQ, held, RUNTIME, 1.0), str)
    assert isinstance(
        admit_group_job(group_spec("s3cret"), "someone-else", held, RUNTIME, 1.0), str
    )
    admitted = admit_group_job(group_spec("s3cret"), REQ, held, RUNTIME, 1.0)
    assert isinstance(admitted, Admitted)
    spec = admitted.spec
    assert spec.argv[0] == RUNTIME.proxy
    assert admitted.wall.launcher is not None and admitted.wall.launcher.port == 5000
    env = spec.env_dict
    assert SECRET_ENV not in env and env["PATH"].startswith("/opt/node/bin:")
    # Taken: a second job for the same reservation (paid twice) is refused.
    again = admit_group_job(group_spec("s3cret"), REQ, held, RUNTIME, 1.0)
    assert isinstance(again, str) and "no reservation" in again


def test_a_group_job_stays_within_its_reservation_and_lease() -> None:
    held = Reservations()
    held.reserve(reservation("s"), now=0.0, room=None)
    too_big = admit_group_job(group_spec("s", cpus=3.0), REQ, held, RUNTIME, 1.0)
    assert isinstance(too_big, str) and "were reserved" in too_big
    held.reserve(reservation("s", expires=10.0), now=0.0, room=None)
    assert held.held(5.0)
    late = admit_group_job(group_spec("s"), REQ, held, RUNTIME, 10.0)
    assert isinstance(late, str) and "expired" in late
    assert held.held(10.0) == []
    held.reserve(reservation("s"), now=0.0, room=None)
    not_proxy = admit_group_job(group_spec("s", argv0="/bin/sh"), REQ, held, RUNTIME, 1.0)
    assert isinstance(not_proxy, str) and "hydra_pmi_proxy" in not_proxy


def test_reservations_are_bounded_and_refused_without_room() -> None:
    held = Reservations(limit=1)
    assert held.reserve(reservation("a"), 0.0, room="only 1 of 2 CPUs free") == (
        "only 1 of 2 CPUs free"
    )
    assert held.reserve(reservation("a"), 0.0, room=None) is None
    assert held.reserve(reservation("a"), 0.0, room=None) is not None  # (the same group)
    held.release(REQ, GROUP)
    assert held.held(0.0) == []


def test_reserve_messages_are_validated() -> None:
    good = mpiproto.Reserve(GROUP, 2, 2.0, GiB, 60.0, 30.0, bytes(32))
    frame = wire.encode(good, mpiproto.MPI_MAX_FRAME)
    decoded = wire.FrameDecoder(mpiproto.TO_MEMBER, mpiproto.MPI_MAX_FRAME).feed(frame)
    assert decoded == [good]
    fields = {**wire.to_fields(good), "t": "mpi-reserve", "v": wire.WIRE_VERSION}
    for key, value in (("ranks", 0), ("lease_seconds", 3600.0), ("secret_sha256", b"x")):
        payload = msgpack.packb({**fields, key: value}, use_bin_type=True)
        with pytest.raises(wire.RemoteProtocolError):
            wire.decode_payload(payload, mpiproto.TO_MEMBER)
