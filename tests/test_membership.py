"""The sans-io membership view, driven with a fake clock."""

from __future__ import annotations

from rainnet.identity import Identity
from rainnet.membership import MAX_ATTEMPTS, Membership, Source
from tests.test_wire import _record


def test_peer_lifecycle_join_silence_leave_return() -> None:
    view = Membership("self", peer_timeout=10.0)
    peer = Identity.generate()
    assert view.learn(peer.peer_id, ("/ip4/10.0.0.1/tcp/1",), Source.MDNS, now=0.0)
    assert [p.peer_id for p in view.due_for_dial(0.0)] == [peer.peer_id]
    assert view.contacted(peer.peer_id, 1.0, _record(peer))
    assert view.is_live(peer.peer_id)
    assert not view.due_for_dial(1.0)
    # Heartbeats keep it in; silence past the timeout takes it out.
    view.contacted(peer.peer_id, 9.0)
    assert view.expire(18.0) == []
    assert view.expire(19.5) == [peer.peer_id]
    assert not view.is_live(peer.peer_id)
    # It stays a candidate, so when it answers again it rejoins.
    assert [p.peer_id for p in view.due_for_dial(19.5)] == [peer.peer_id]
    assert view.contacted(peer.peer_id, 25.0)


def test_backoff_grows_and_gives_up_but_a_new_mention_resets_it() -> None:
    view = Membership("self")
    view.learn("p", ("/ip4/10.0.0.1/tcp/1",), Source.BOOTSTRAP, 0.0)
    now = 0.0
    delays = []
    for _ in range(MAX_ATTEMPTS):
        view.failed("p", now)
        delays.append(view.peers["p"].next_attempt - now)
        now = view.peers["p"].next_attempt
    assert delays[3] > delays[0]
    assert max(delays) <= 30.0 * 1.25
    assert not view.due_for_dial(now + 100)
    assert view.learn("p", (), Source.MDNS, now + 100)
    assert view.due_for_dial(now + 100)


def test_hints_do_not_reset_backoff() -> None:
    view = Membership("self")
    view.learn("p", ("/a",), Source.DHT, 0.0)
    view.failed("p", 0.0)
    assert not view.learn("p", ("/a",), Source.HINT, 0.0)


def test_self_is_never_a_peer_and_the_view_is_bounded() -> None:
    view = Membership("self", max_peers=3)
    assert not view.learn("self", ("/a",), Source.MDNS, 0.0)
    for i in range(3):
        view.contacted(f"p{i}", 0.0)
    assert not view.learn("p9", ("/a",), Source.MDNS, 0.0)  # full of live peers
    assert len(view.peers) == 3


def test_newer_record_replaces_older_only() -> None:
    view = Membership("self")
    peer = Identity.generate()
    view.contacted(peer.peer_id, 0.0, _record(peer, seq=5, state="busy"))
    view.contacted(peer.peer_id, 1.0, _record(peer, seq=4, state="idle"))
    assert view.peers[peer.peer_id].state == "busy"
