"""The sans-io wire codec, driven without sockets."""

from __future__ import annotations

import time

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rainnet import protocols, records, wire
from rainnet.identity import Identity


def _record(me: Identity, **changes: object) -> records.NodeRecord:
    fields: dict[str, object] = dict(
        peer_id=me.peer_id,
        addrs=(f"/ip4/127.0.0.1/tcp/1/p2p/{me.peer_id}",),
        cpus=2,
        memory=1 << 30,
        gpus=0,
        backends=("native",),
        version="t",
        state="idle",
        seq=1,
        issued_at=time.time(),
        ttl=60.0,
    )
    fields.update(changes)
    return records.NodeRecord(**fields)  # type: ignore[arg-type]


def test_round_trip_through_a_byte_at_a_time() -> None:
    me = Identity.generate()
    msgs: list[wire.Message] = [
        protocols.Ping(nonce=7, record_seq=9),
        protocols.Hello(
            records.sign_record(me, _record(me)),
            (protocols.PeerHint(me.peer_id, ("/ip4/1.2.3.4/tcp/1",)),),
        ),
    ]
    stream = b"".join(wire.encode(m) for m in msgs)
    decoder = wire.FrameDecoder()
    out: list[wire.Message] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == msgs
    assert decoder.buffered == 0


def test_unexpected_type_is_the_remotes_fault() -> None:
    decoder = wire.FrameDecoder(expected=(protocols.Ping,))
    with pytest.raises(wire.RemoteProtocolError, match="unexpected message 'pong'"):
        decoder.feed(wire.encode(protocols.Pong(nonce=1, record_seq=1)))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"t": "ping", "v": 1, "nonce": "1", "record_seq": 1}, "ping.nonce: expected an integer"),
        ({"t": "ping", "v": 1, "nonce": True, "record_seq": 1}, "expected an integer"),
        ({"t": "ping", "v": 1, "record_seq": 1}, "missing field 'nonce'"),
        ({"t": "ping", "v": 2, "nonce": 1, "record_seq": 1}, "version 2 unsupported"),
        ({"t": "nope", "v": 1}, "unknown message type"),
        ([1, 2], "a message is a map"),
        ({"t": "peer-hint", "v": 1, "peer_id": "x" * 65, "addrs": []}, "over the cap of 64"),
        ({"t": "peer-hint", "v": 1, "peer_id": "x", "addrs": ["a"] * 17}, "17 items, over the cap"),
    ],
)
def test_malformed_fields_are_named(body: object, reason: str) -> None:
    payload = msgpack.packb(body, use_bin_type=True)
    with pytest.raises(wire.RemoteProtocolError, match=reason):
        wire.FrameDecoder().feed(wire.encode_uvarint(len(payload)) + payload)


def test_oversized_frame_refused_from_its_prefix_alone() -> None:
    decoder = wire.FrameDecoder(max_frame=100)
    with pytest.raises(wire.RemoteProtocolError, match="over the cap of 100"):
        decoder.feed(wire.encode_uvarint(101))


def test_sending_over_the_cap_is_our_fault() -> None:
    with pytest.raises(wire.LocalProtocolError):
        wire.encode(protocols.PeerHint("p" * 60, ("/x" * 100,) * 16), max_frame=64)


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_anything_but_a_protocol_error(data: bytes) -> None:
    decoder = wire.FrameDecoder(max_frame=4096)
    try:
        for msg in decoder.feed(data):
            assert isinstance(msg, wire.Message)
    except wire.RemoteProtocolError:
        pass


@given(st.integers(0, 2**32), st.integers(0, 2**40))
def test_pings_round_trip(nonce: int, seq: int) -> None:
    msg = protocols.Ping(nonce=nonce, record_seq=seq)
    assert wire.FrameDecoder().feed(wire.encode(msg)) == [msg]
