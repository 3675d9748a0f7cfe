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
    return PeerInfo(peer_id=name, source=source, **{**defaults, **kw})  # type: ignore[arg-type]


def test_limits_follow_the_maximum() -> None:
    assert Limits.of(8) == Limits(high=8, target=6, floor=2, wide=2)
    assert Limits.of(64) == Limits(high=64, target=48, floor=16, wide=4)
    with pytest.raises(ValueError, match="at least 4"):
        Limits.of(3)


peers_strategy = st.lists(
    st.builds(
        PeerInfo,
        peer_id=st.text("abcdefgh", min_size=1, max_size=3),
        connected=st.booleans(),
        source=st.sampled_from(list(Source)),
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
        if p.connected and (p.jobs or p.protected or NOW - p.connected_since < limits.grace)
    }
    assert set(out.keep) | set(out.trim) == connected
    assert not set(out.keep) & set(out.trim)
    assert not spared & set(out.trim)  # never a job's, a relay's, or a newcomer's
    if len(connected) <= limits.high:
        assert out.trim == ()
    else:
        assert len(out.keep) == max(limits.target, len(spared))
    unconnected = {p.peer_id for p in peers if not p.connected and p.dialable}
    assert set(out.dial) <= unconnected
    assert not out.dial or len(out.keep) + len(out.dial) <= limits.floor
    shuffled = list(peers)
    random.Random(7).shuffle(shuffled)
    assert plan(shuffled, limits, NOW) == out  # (the order of the input does not matter)


def test_over_the_limit_it_keeps_a_few_wide_contacts_then_the_lan_then_the_rest() -> None:
    limits = Limits.of(8)  # keeps 6 when trimming, 2 of them DHT contacts before the LAN
    dht = [peer(f"d{i}", Source.DHT, connected_since=OLD + i) for i in range(4)]
    lan = [peer(f"l{i}", Source.MDNS, connected_since=OLD + i) for i in range(5)]
    hinted = [peer("h0", Source.HINT), peer("i0", Source.INBOUND)]
    out = plan([*dht, *lan, *hinted], limits, NOW)
    assert set(out.keep) == {"d0", "d1", "l0", "l1", "l2", "l3"}  # the older of each
    assert set(out.trim) == {"d2", "d3", "l4", "h0", "i0"}
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


def test_below_the_floor_it_dials_lan_candidates_first() -> None:
    limits = Limits.of(12)  # floor 3
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
    assert out.keep == ("kept",) and out.dial == ("near", "far")
