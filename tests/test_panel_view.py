"""The panel's view of a snapshot, what changed between two, and the credit plot: in memory."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from node.panel import plot
from node.panel import view as views
from node.panel.lights import NetLight
from node.panel.view import Section
from node.snapshot import (
    CreditView,
    DetailView,
    ExchangeRow,
    GuestRow,
    JobRow,
    JobsView,
    MpiGroupRow,
    NodeSnapshot,
    PeerView,
    PolicyView,
    SelfView,
)

ME = "12D3KooW" + "M" * 44


def peer_id(i: int) -> str:
    return f"12D3KooW{i:044d}".replace("0", "A")


def peer(i: int, **changes: Any) -> PeerView:
    fields: dict[str, Any] = dict(
        peer_id=peer_id(i),
        addrs=(f"/ip4/127.0.0.1/tcp/{4000 + i}/p2p/{peer_id(i)}",),
        state="idle",
        cpus=4,
        memory=8 << 30,
        gpus=0,
        backends=("native",),
        version="0.1.0",
        last_seen=1000.0 + i,
        rtt_ms=0.5,
        source="bootstrap",
    )
    fields.update(changes)
    return PeerView(**fields)


def job(job_id: str, state: str = "queued", **changes: Any) -> JobRow:
    fields: dict[str, Any] = dict(
        job_id=job_id,
        state=state,
        worker=None,
        submitted=100.0,
        started=None,
        ended=None,
        cpu_seconds=0.0,
        credit=0.0,
        command="sh -c work",
        array_task=None,
    )
    fields.update(changes)
    if fields["array_task"] is not None:  # a task of the array its id starts with ("t0": "t")
        fields.setdefault("array_id", job_id.rstrip("0123456789"))
    return JobRow(**fields)


def snapshot(
    peers: tuple[PeerView, ...] = (),
    left: tuple[PeerView, ...] = (),
    jobs: tuple[JobRow, ...] = (),
    exchanges: tuple[ExchangeRow, ...] = (),
    guests: tuple[GuestRow, ...] = (),
    groups: tuple[MpiGroupRow, ...] = (),
    **me: Any,
) -> NodeSnapshot:
    self_fields: dict[str, Any] = dict(
        peer_id=ME,
        addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{ME}",),
        state="idle",
        cpus=2,
        memory=4 << 30,
        gpus=0,
        backends=("native",),
        version="0.1.0",
        lend="idle",
        mdns=False,
        uptime=50.0,
        pid=1,
        streams=0,
    )
    self_fields.update(me)
    return NodeSnapshot(
        taken_at=1000.0,
        me=SelfView(**self_fields),
        peers=peers,
        jobs=JobsView((), 0),
        credit=CreditView(balance=3.0, earned=5.0, spent=2.0, floor=-3600.0),
        policy=PolicyView("idle", "idle", True, "no owner input for 10 min"),
        detail=DetailView(jobs, guests, exchanges, groups, left),
    )


def test_every_node_is_a_front_panel_this_one_first() -> None:
    relayed = peer(2, addrs=(f"/ip4/1.2.3.4/tcp/1/p2p/{peer_id(9)}/p2p-circuit/p2p/{peer_id(2)}",))
    snap = snapshot(
        peers=(peer(1, user1="on", load=5, hot=True), relayed),
        left=(peer(3, state="busy"),),
        user2="blink",
        load=3,
    )
    nodes = views.build(snap)[Section.NODES]
    assert list(nodes) == [ME, peer_id(1), peer_id(2), peer_id(3)]
    me = nodes[ME]
    assert (me.me, me.up, me.net, me.user2, me.load) == (True, True, NetLight.DIRECT, "blink", 3)
    assert (nodes[peer_id(1)].user1, nodes[peer_id(1)].hot, nodes[peer_id(1)].load) == (
        "on",
        True,
        5,
    )
    assert nodes[peer_id(2)].net is NetLight.RELAY
    gone = nodes[peer_id(3)]
    assert (gone.up, gone.net, gone.state) == (False, NetLight.OFF, "busy")


def test_alone_the_network_light_is_off() -> None:
    assert views.build(snapshot())[Section.NODES][ME].net is NetLight.OFF


def test_a_peer_back_in_the_view_is_not_also_listed_as_gone() -> None:
    nodes = views.build(snapshot(peers=(peer(1),), left=(peer(1),)))[Section.NODES]
    assert nodes[peer_id(1)].up


def test_the_tasks_of_an_array_fold_into_one_entry() -> None:
    tasks = tuple(
        job(
            f"t{i}",
            state,
            array_task=i,
            submitted=100.0 + i * 0.001,
            worker=f"w{i % 2}",
            cpu_seconds=1.0,
            ended=200.0 + i if state == "done" else None,
        )
        for i, state in enumerate(["done", "done", "failed", "running", "queued"])
    )
    single = job("solo", "running", submitted=300.0, started=301.0, worker="w9")
    other_array = tuple(
        job(f"u{i}", "done", array_task=i, submitted=500.0, command="other", ended=600.0)
        for i in range(3)
    )
    entries = views.job_entries((*tasks, single, *other_array))
    assert list(entries) == ["u", "solo", "t"]  # newest first
    array = entries["t"]
    assert (array.kind, array.tasks, array.done, array.failed, array.active) == (
        views.JobKind.ARRAY,
        5,
        2,
        1,
        1,
    )
    assert (array.state, array.workers, array.cpu, array.until) == ("running", 2, 5.0, None)
    assert entries["solo"].kind is views.JobKind.JOB and entries["solo"].since == 301.0
    done = entries["u"]
    assert (done.state, done.until, done.tasks) == ("done", 600.0, 3)


def test_two_arrays_stay_apart_and_the_list_is_bounded() -> None:
    a = tuple(job(f"a{i}", array_task=i, submitted=100.0) for i in range(2))
    b = tuple(job(f"b{i}", array_task=i, submitted=100.5) for i in range(2))  # (at once)
    assert list(views.job_entries((*a, *b))) == ["b", "a"]
    many = tuple(job(f"j{i}", submitted=float(i)) for i in range(3 * views.MAX_JOB_ENTRIES))
    kept = views.job_entries(many)
    assert len(kept) == views.MAX_JOB_ENTRIES and next(iter(kept)) == f"j{len(many) - 1}"


def test_an_array_that_ended_with_failures_says_failed() -> None:
    rows = tuple(
        job(f"t{i}", s, array_task=i, ended=5.0) for i, s in enumerate(["done", "cancelled"])
    )
    entry = views.job_entries(rows)["t"]
    assert (entry.state, entry.done, entry.failed) == ("failed", 1, 1)


def test_a_delta_names_only_what_changed() -> None:
    before = views.build(snapshot(peers=(peer(1), peer(2)), jobs=(job("j1"),)))
    after = views.build(
        snapshot(
            peers=(peer(1, user1="on"), peer(2, last_seen=2000.0, rtt_ms=9.0)),
            jobs=(job("j1", "running", started=110.0),),
        )
    )
    delta = views.diff(before, after)
    assert set(delta) == {Section.NODES, Section.JOBS}
    assert list(delta[Section.NODES]) == [peer_id(1)]  # a new round trip time is not news
    running = delta[Section.JOBS]["j1"]
    assert running is not None and running.state == "running"
    gone = views.diff(after, views.build(snapshot(peers=(peer(1, user1="on"),))))
    assert gone[Section.NODES] == {peer_id(2): None} and gone[Section.JOBS] == {"j1": None}
    assert views.diff(after, after) == {}


def test_the_view_is_json_with_its_sections() -> None:
    snap = snapshot(
        peers=(peer(1),),
        jobs=(job("j1"),),
        guests=(GuestRow("g1", peer_id(1), 1.0, 1 << 20, 5.0, True),),
        groups=(MpiGroupRow("m1", "running", (ME, peer_id(1))),),
        exchanges=(ExchangeRow(7, 900.0, peer_id(1), "j0", -2.0, "spent"),),
    )
    data = views.as_json(views.build(snap))
    assert set(data) == {s.value for s in Section}
    assert data["guests"]["g1"]["stage"] == "running"
    assert data["mpi"]["m1"]["members"] == [ME, peer_id(1)]
    assert data["exchanges"]["7"]["amount"] == -2.0
    assert data["info"]["policy"] == {
        "lend": "idle",
        "state": "idle",
        "accepts": True,
        "reason": "no owner input for 10 min",
    }
    assert data["info"]["self"]["started"] == 950.0
    assert data["info"]["plot"]["svg"].startswith("<svg")
    message = json.loads(
        views.encode({"type": "delta", "changes": views.diff({}, views.build(snap))})
    )
    assert message["changes"]["nodes"][ME]["me"] is True


def test_the_credit_series_walks_back_from_the_totals() -> None:
    rows = (
        ExchangeRow(4, 400.0, "p", "j4", 3.0, "pending"),  # not agreed yet: not counted
        ExchangeRow(3, 300.0, "p", "j3", -2.0, "spent"),
        ExchangeRow(2, 200.0, "p", "j2", 4.0, "earned"),
        ExchangeRow(1, 100.0, "p", "j1", 1.0, "earned"),
    )
    points = plot.credit_series(rows, earned=5.0, spent=2.0)
    assert [(p.time, p.given, p.used) for p in points] == [
        (100.0, 0.0, 0.0),
        (100.0, 1.0, 0.0),
        (200.0, 5.0, 0.0),
        (300.0, 5.0, 2.0),
    ]
    assert points[-1].balance == 3.0
    svg = plot.credit_svg(points)
    assert svg.count("<polyline") == 3 and 'data-series="balance"' in svg
    assert "no exchanges yet" in plot.credit_svg(plot.credit_series((), 0.0, 0.0))


def test_the_plot_does_not_change_without_an_exchange() -> None:
    rows = (ExchangeRow(1, 100.0, "p", "j1", 1.0, "earned"),)
    first = views.build(snapshot(exchanges=rows))
    later = views.build(dataclasses.replace(snapshot(exchanges=rows), taken_at=5000.0))
    assert first[Section.INFO]["plot"] == later[Section.INFO]["plot"]
