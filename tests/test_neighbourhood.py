"""rainnet.neighbourhood in memory: its limits, its invariants over any set of peers
(hypothesis), and which connections it prefers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rainnet.membership import Source
from rainnet.neighbourhood import GRACE, Limits, PeerInfo, plan

NOW = 1000.0
OLD = NOW - 10 * GRACE  # a connection past its grace


def peer(name: str, source: Source = Source.DHT, **kw: object) -> PeerInfo:
    defaults: dict[str, object] = {"connected": True, "connected_since": OLD}
    defaults["neighbour"] = kw.get("connected", True)  # (an unconnected peer is a candidate)
    return PeerInfo(peer_id=name, source=source, **{**defaults, **kw})  # type: ignore[arg-type]


def test_limits_follow_the_maximum() -> None:
    assert Limits.of(4) == Limits(high=4, target=3, floor=2, wide=2)
    assert Limits.of(8) == Limits(high=8, target=6, floor=3, wide=3)
    assert Limits.of(64) == Limits(high=64, target=48, floor=24, wide=4)
    with pytest.raises(ValueError, match="at least 4"):
        Limits.of(3)


peers_strategy = st.lists(
    st.builds(
        PeerInfo,
        peer_id=st.text("abcdefgh", min_size=1, max_size=3),
        connected=st.booleans(),
        source=st.sampled_from(list(Source)),
        neighbour=st.booleans(),
        connected_since=st.floats(NOW - 100, NOW),
        jobs=st.booleans(),
        protected=st.booleans(),
        dialable=st.booleans(),
    ),
    max_size=60,
    unique_by=lambda p: p.peer_id,
)


@given(peers_strategy, st.integers(4, 20))
def test_its_invariants_hold_for_any_peers(peers: list[PeerInfo], maximum: int) -> None:
    limits = Limits.of(maximum)
    out = plan(peers, limits, NOW)
    connected = {p.peer_id for p in peers if p.connected}
    spared = {
        p.peer_id
        for p in peers
        if p.connected
        and (
            p.jobs
            or p.protected
            or NOW - p.connected_since < (limits.grace if p.neighbour else limits.brief)
        )
    }
    assert set(out.keep) | set(out.trim) == connected
    assert not set(out.keep) & set(out.trim)
    busy = {p.peer_id for p in peers if p.connected and (p.jobs or p.protected)}
    assert not busy & set(out.trim)  # never a job's or a relay's
    kept_view = [p for p in peers if p.peer_id in out.keep and p.neighbour]
    assert len(kept_view) <= max(limits.high, len(busy))  # the view is never larger
    cut_young = {p.peer_id for p in peers if p.neighbour} & spared & set(out.trim)
    assert not cut_young or len(kept_view) == limits.high  # (newcomers, only past it)
    spared -= cut_young
    if len(connected) <= limits.high:
        assert out.trim == ()
    else:  # down to `target`, but for young transients; neighbours never past `target`
        by_id = {p.peer_id: p for p in peers}
        young = {i for i in spared if not by_id[i].neighbour}
        assert len(out.keep) <= max(limits.target, len(spared)) + len(young)
        kept_neighbours = [i for i in out.keep if by_id[i].neighbour]
        # (Neighbours go down to `target` only if transients' trimming left it past `high`.)
        assert len(kept_neighbours) <= max(limits.high, len(spared - young))
        if any(by_id[i].neighbour for i in out.trim):  # (transients went first)
            assert all(by_id[i].neighbour or i in spared for i in out.keep)
    candidates = {p.peer_id for p in peers if not p.neighbour and p.dialable} - set(out.trim)
    assert set(out.dial) <= candidates
    kept = [p for p in peers if p.peer_id in out.keep and p.neighbour]
    kept_wide = sum(1 for p in kept if p.source in (Source.DHT, Source.BOOTSTRAP))
    room = max(limits.floor - len(kept), limits.wide - kept_wide)
    assert len(out.dial) <= max(0, room)
    if len(kept) >= limits.floor:  # (past the floor, only a few contacts beyond the LAN)
        far = {p.peer_id for p in peers if p.source in (Source.DHT, Source.BOOTSTRAP)}
        assert set(out.dial) <= far
        assert not out.dial or len(connected) < limits.high
    shuffled = list(peers)
    random.Random(7).shuffle(shuffled)
    assert plan(shuffled, limits, NOW) == out  # (the order of the input does not matter)


def test_over_the_limit_it_keeps_a_few_wide_contacts_then_the_lan_then_the_rest() -> None:
    limits = Limits.of(8)  # keeps 6 when trimming, 3 of them DHT contacts before the LAN
    dht = [peer(f"d{i}", Source.DHT, connected_since=OLD + i) for i in range(4)]
    lan = [peer(f"l{i}", Source.MDNS, connected_since=OLD + i) for i in range(5)]
    hinted = [peer("h0", Source.HINT), peer("i0", Source.INBOUND)]
    out = plan([*dht, *lan, *hinted], limits, NOW)
    assert set(out.keep) == {"d0", "d1", "d2", "l0", "l1", "l2"}  # the older of each
    assert set(out.trim) == {"d3", "l3", "l4", "h0", "i0"}
    assert out.dial == ()


def test_jobs_relays_and_newcomers_stay_even_past_the_limit() -> None:
    limits = Limits.of(4)  # target 3
    busy = [
        peer("job", jobs=True),
        peer("relay", protected=True),
        peer("new", Source.INBOUND, connected_since=NOW - 1),
    ]
    idle = [peer(f"x{i}", Source.MDNS) for i in range(3)]
    out = plan([*busy, *idle], limits, NOW)
    assert set(out.keep) == {"job", "relay", "new"}
    assert set(out.trim) == {"x0", "x1", "x2"}


def test_below_the_floor_it_dials_a_contact_beyond_the_lan_then_lan_candidates() -> None:
    limits = Limits.of(12)  # floor 4, wide 4
    out = plan(
        [
            peer("kept", Source.MDNS),
            peer("far", Source.DHT, connected=False),
            peer("near", Source.MDNS, connected=False),
            peer("mute", Source.MDNS, connected=False, dialable=False),
            peer("told", Source.HINT, connected=False),
        ],
        limits,
        NOW,
    )
    assert out.keep == ("kept",) and out.dial == ("far", "near", "told")


def test_past_the_floor_a_lan_still_dials_beyond_itself() -> None:
    limits = Limits.of(8)  # floor 2, wide 2
    lan = [peer(f"l{i}", Source.MDNS) for i in range(4)]
    out = plan([*lan, peer("boot", Source.BOOTSTRAP, connected=False)], limits, NOW)
    assert out.dial == ("boot",)
    out = plan(
        [*lan, peer("boot", Source.BOOTSTRAP), peer("d", Source.DHT, connected=False)], limits, NOW
    )
    assert out.dial == ("d",)
    full = [peer(f"l{i}", Source.MDNS) for i in range(8)]
    assert plan([*full, peer("d", Source.DHT, connected=False)], limits, NOW).dial == ()


def test_transient_connections_go_first_and_are_greeted_when_neighbours_are_few() -> None:
    limits = Limits.of(4)  # high 4, target 3, floor 2
    lookups = [
        peer(f"t{i}", Source.DHT, neighbour=False, connected_since=OLD + i) for i in range(4)
    ]
    out = plan([*lookups, peer("n", Source.MDNS)], limits, NOW)
    assert set(out.keep) == {"n", "t2", "t3"} and set(out.trim) == {"t0", "t1"}  # oldest go
    out = plan(lookups[:3], limits, NOW)  # no neighbour yet: two are said hello to
    assert out.trim == () and out.dial == ("t0", "t1")
    answering = [
        peer(f"q{i}", Source.DHT, neighbour=False, connected_since=NOW - 1) for i in range(6)
    ]
    assert plan(answering, limits, NOW).trim == ()  # (their queries are under way)
    standing = [peer(f"n{i}", Source.MDNS) for i in range(3)]
    out = plan([*answering, *standing], limits, NOW)
    assert out.trim == () and {"n0", "n1", "n2"} <= set(out.keep)  # a burst costs no neighbour
