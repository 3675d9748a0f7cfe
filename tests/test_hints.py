"""Hole 10 of issue 14, dial reflection, in memory: peer hints can make a node dial an address
only within the budgets of rainnet.hints, whatever hellos an attacker sends and when.

The node's dial loop is played here as rainnet.contact plays it: every tick, each candidate due
is dialed at `Membership.dial_addrs` (nobody answers: the attacker's address is not a peer), and
a failed dial backs off."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from rainnet.hints import DIALS_PER_ADDRESS, HINTS_PER_SOURCE, WINDOW, Hint, address_key
from rainnet.identity import Identity
from rainnet.membership import Membership, Source
from tests.test_wire import _record

VICTIMS = ["/ip4/127.0.0.1/tcp/9", "/ip4/127.0.0.1/tcp/10", "/ip4/10.1.2.3/tcp/4001"]

RawHint = tuple[str, list[str], bool]
Hello = tuple[str, list[RawHint], float]


hello = st.tuples(
    st.sampled_from(["attacker", "sybil-1", "sybil-2"]),  # who says hello
    st.lists(  # its hints: made-up peer ids at addresses it chose
        st.tuples(
            st.integers(0, 500).map(lambda i: f"fake{i}"),
            st.lists(st.sampled_from(VICTIMS), min_size=1, max_size=3),
            st.booleans(),  # with a /p2p/<that id> suffix
        ),
        max_size=16,
    ),
    st.floats(0.0, 20.0),  # seconds until the next hello
)


def _hints(raw: list[RawHint]) -> list[Hint]:
    return [
        Hint(peer, tuple(f"{a}/p2p/{peer}" if suffix else a for a in addrs))
        for peer, addrs, suffix in raw
    ]


def _play(view: Membership, hellos: list[Hello], until: float) -> list[tuple[float, str]]:
    """Hellos at their times, the dial loop every 0.2 s until `until`: (time, address) dialed."""
    dials: list[tuple[float, str]] = []
    at = 0.0
    schedule: list[tuple[float, str, list[Hint]]] = []
    for source, raw, gap in hellos:
        schedule.append((at, source, _hints(raw)))
        at += gap
    now = 0.0
    while now <= until:
        while schedule and schedule[0][0] <= now:
            _, source, hints = schedule.pop(0)
            view.learn_hints(source, hints, now)
        for peer in view.due_for_dial(now):
            addrs = view.dial_addrs(peer, now)
            dials.extend((now, address_key(a)) for a in addrs)
            view.failed(peer.peer_id, now)
        now = round(now + 0.2, 1)
    return dials


@settings(max_examples=60, deadline=None)
@given(st.lists(hello, min_size=1, max_size=12))
def test_hints_never_make_more_dials_per_address_than_its_budget(hellos: list[Hello]) -> None:
    view = Membership("me")
    dials = _play(view, hellos, until=150.0)
    by_addr: dict[str, list[float]] = defaultdict(list)
    for t, addr in dials:
        by_addr[addr].append(t)
    for addr, times in by_addr.items():
        for i, t in enumerate(times):
            within = [u for u in times[i:] if u - t < WINDOW]
            assert len(within) <= DIALS_PER_ADDRESS, (addr, within)


def test_one_hello_of_sixteen_made_up_peers_at_one_address_gets_it_three_dials_a_minute() -> None:
    """The attack as seen: before the budgets, 16 hinted ids at one address were each dialed with
    backoff, 135 connections in 90 s; now the address gets its budget's worth per minute."""
    view = Membership("me")
    raw = [(f"fake{i}", [VICTIMS[0]], False) for i in range(16)]
    dials = _play(view, [("attacker", raw, 0.0)], until=90.0)
    assert len(dials) <= DIALS_PER_ADDRESS * 2
    assert view.hints.refused_dials > 0


def test_a_source_gets_its_budget_of_new_peers_a_window_and_known_peers_are_free() -> None:
    view = Membership("me")
    new = [Hint(f"p{i}", ("/ip4/10.0.0.1/tcp/1",)) for i in range(100)]
    assert view.learn_hints("src", new, 0.0) == HINTS_PER_SOURCE
    assert view.learn_hints("src", [Hint("q", ("/ip4/10.0.0.2/tcp/1",))], 1.0) == 0
    # Another source has a budget of its own; hints about peers we know cost nothing.
    assert view.learn_hints("other", [Hint("q", ("/ip4/10.0.0.2/tcp/1",))], 1.0) == 1
    assert view.learn_hints("src", new[:10], 2.0) == 10
    # A window later the budget is back.
    assert view.learn_hints("src", [Hint("r", ("/ip4/10.0.0.3/tcp/1",))], WINDOW + 1) == 1


def test_hints_of_ourselves_of_the_sender_or_at_addresses_of_another_peer_are_dropped() -> None:
    view = Membership("me")
    hints = [
        Hint("me", ("/ip4/10.0.0.1/tcp/1",)),
        Hint("src", ("/ip4/10.0.0.1/tcp/1",)),
        Hint("p", ("/ip4/10.0.0.1/tcp/1/p2p/somebody-else",)),
        Hint("q", ("/ip4/10.0.0.1/tcp/1/p2p/somebody-else", "/ip4/10.0.0.2/tcp/1/p2p/q")),
    ]
    assert view.learn_hints("src", hints, 0.0) == 1
    assert view.peers["q"].addrs == ("/ip4/10.0.0.2/tcp/1/p2p/q",)


def test_a_peer_that_answered_once_is_dialed_at_all_its_addresses() -> None:
    """The budget is for peers known only from hints: once one has answered as itself, its
    redials (it left, and comes back) are not charged."""
    view = Membership("me")
    peer = Identity.generate()
    addr = f"{VICTIMS[0]}/p2p/{peer.peer_id}"
    view.learn_hints("src", [Hint(peer.peer_id, (addr,))], 0.0)
    for _ in range(DIALS_PER_ADDRESS):
        assert view.dial_addrs(view.peers[peer.peer_id], 0.0) == (addr,)
    assert view.dial_addrs(view.peers[peer.peer_id], 0.0) == ()
    view.contacted(peer.peer_id, 1.0, _record(peer))
    assert view.dial_addrs(view.peers[peer.peer_id], 1.0) == view.peers[peer.peer_id].addrs != ()


def test_a_hint_adds_no_address_to_a_peer_whose_signed_record_we_hold() -> None:
    view = Membership("me")
    peer = Identity.generate()
    view.contacted(peer.peer_id, 0.0, _record(peer))
    before = view.peers[peer.peer_id].addrs
    view.learn_hints("src", [Hint(peer.peer_id, (VICTIMS[0],))], 1.0)
    assert view.peers[peer.peer_id].addrs == before


def test_a_hint_adds_no_address_to_a_peer_our_own_discovery_found() -> None:
    view = Membership("me")
    view.learn("p", ("/ip4/10.0.0.1/tcp/1",), Source.BOOTSTRAP, 0.0)
    view.learn_hints("src", [Hint("p", (VICTIMS[0],))], 1.0)
    assert view.peers["p"].addrs == ("/ip4/10.0.0.1/tcp/1",)


def test_a_peer_also_found_by_mdns_is_no_longer_a_hint_only() -> None:
    view = Membership("me")
    view.learn_hints("src", [Hint("p", ("/ip4/10.0.0.1/tcp/1",))], 0.0)
    view.learn("p", ("/ip4/10.0.0.1/tcp/1",), Source.MDNS, 0.0)
    assert view.peers["p"].source is Source.MDNS
    for _ in range(DIALS_PER_ADDRESS + 2):
        assert view.dial_addrs(view.peers["p"], 0.0)
