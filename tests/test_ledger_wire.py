"""Blocks and messages on the wire: canonical encoding, round trips, and malformed input from a
peer always raising MalformedMessage (the remote's fault), never crashing."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.block import SIGN_DOMAIN, HalfBlock, Transaction
from ledger.codec import MAX_MESSAGE_BYTES
from ledger.errors import MalformedMessage, RemoteFault
from ledger.fork import fork_between
from ledger.messages import (
    MAX_PAGE_BLOCKS,
    Agree,
    ChainPage,
    ChainRequest,
    ForkProofs,
    Heads,
    LedgerMessage,
    Propose,
    Refuse,
    decode_message,
    encode_message,
)
from ledger.units import format_credits, parse_credits
from tests.ledger_helpers import World, identity, resign

A, B, C = identity(0), identity(1), identity(2)


def _world() -> World:
    w = World([A, B])
    w.trade(A, B, "job-1")
    w.trade(B, A, "job-2", 2500)
    return w


def test_hash_and_signature_cover_the_canonical_body() -> None:
    p = _world().chains[A.public_raw][0]
    assert p.hash == hashlib.sha256(SIGN_DOMAIN + p.body + p.signature).digest()
    assert p.signature_ok()
    # The same fields decoded from the wire give the same body, hash and signature check.
    again = HalfBlock.from_wire(msgpack.unpackb(msgpack.packb(p.to_wire()), raw=False))
    assert again == p and again.body == p.body and again.hash == p.hash
    # Signing the body without the domain tag does not make a ledger signature.
    bare = dataclasses.replace(p, signature=A.sign(p.body))
    assert not bare.signature_ok()


def test_every_message_round_trips() -> None:
    w = _world()
    p, a = w.chains[A.public_raw][0], w.chains[B.public_raw][0]
    proof = fork_between(p, resign(p, A, link_public_key=C.public_raw))
    assert proof is not None
    messages: list[LedgerMessage] = [
        Propose(p),
        Agree(a),
        Refuse("job-1", "no"),
        ChainRequest(A.public_raw, 3, 10, (1, 3)),
        ChainPage(A.public_raw, 0, (p,), (a,), 2),
        Heads((p, a)),
        ForkProofs((proof,)),
    ]
    for msg in messages:
        assert decode_message(encode_message(msg)) == msg
        assert type(msg).from_wire(msg.to_wire()) == msg


def _wire_block() -> dict[str, Any]:
    return _world().chains[A.public_raw][0].to_wire()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("sig"),
        lambda d: d.update(extra=1),
        lambda d: d.update(seq=True),
        lambda d: d.update(seq=0),
        lambda d: d.update(seq=-5),
        lambda d: d.update(seq=2**63),
        lambda d: d.update(pk=b"short"),
        lambda d: d.update(pk="text"),
        lambda d: d.update(v=2),
        lambda d: d.update(tx=[1, 2, 3]),
        lambda d: d["tx"].update(job=""),
        lambda d: d["tx"].update(job="x" * 200),
        lambda d: d["tx"].update(cpu_ms=1.5),
        lambda d: d["tx"].update(cpus_milli=0),
        lambda d: d["tx"].update(result=b"\x00" * 31),
        lambda d: d["tx"].pop("time_ms"),
    ],
)
def test_malformed_blocks_are_the_remotes_fault(mutate: Any) -> None:
    d = _wire_block()
    mutate(d)
    with pytest.raises(MalformedMessage):
        HalfBlock.from_wire(d)
    with pytest.raises(MalformedMessage):
        decode_message(msgpack.packb({"t": Propose.TYPE, "v": 1, "block": d}))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"t": "nope", "v": 1}),
        msgpack.packb({"t": Propose.TYPE, "v": 9, "block": {}}),
        msgpack.packb(
            {"t": ChainRequest.TYPE, "v": 1, "pk": b"x" * 32, "since": 0, "limit": 0, "pending": []}
        ),
        msgpack.packb({"t": ChainRequest.TYPE, "v": 1, "pk": b"x" * 32, "since": 0}),
        msgpack.packb(
            {
                "t": ChainRequest.TYPE,
                "v": 1,
                "pk": b"x" * 32,
                "since": 3,
                "limit": 1,
                "pending": [4],
            }
        ),
        msgpack.packb(
            {
                "t": ChainRequest.TYPE,
                "v": 1,
                "pk": b"x" * 32,
                "since": 0,
                "limit": 1,
                "pending": [0],
            }
        ),
        msgpack.packb({"t": Refuse.TYPE, "v": 1, "job": "j", "reason": "r" * 5000}),
        msgpack.packb({"t": Heads.TYPE, "v": 1, "heads": [{}] * 40}),
        msgpack.packb({"t": ForkProofs.TYPE, "v": 1, "proofs": [{"a": {}, "b": {}}]}),
        msgpack.packb(msgpack.ExtType(5, b"x")),
        b"\x91" * 100_000,  # deep nesting
        b"\x00" * (MAX_MESSAGE_BYTES + 1),
    ],
)
def test_garbage_messages_are_the_remotes_fault(data: bytes) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_message(data)
    assert isinstance(info.value, RemoteFault) and info.value.fault == "remote"


def test_from_wire_alone_also_blames_the_remote() -> None:
    wire = {"pk": A.public_raw, "since": 3, "limit": 5, "pending": [4]}
    with pytest.raises(MalformedMessage):
        ChainRequest.from_wire(wire)
    with pytest.raises(MalformedMessage):
        Propose.from_wire({"block": 5})


def test_oversized_page_is_refused() -> None:
    b = _world().chains[A.public_raw][0].to_wire()
    payload = {
        "t": ChainPage.TYPE,
        "v": 1,
        "pk": A.public_raw,
        "since": 0,
        "blocks": [b] * (MAX_PAGE_BLOCKS + 1),
        "linked": [],
        "head": 1,
    }
    with pytest.raises(MalformedMessage):
        decode_message(msgpack.packb(payload))


def test_a_bogus_fork_proof_is_refused_on_decoding() -> None:
    p = _world().chains[A.public_raw][0]
    forged = dataclasses.replace(p, link_public_key=C.public_raw)  # old signature: not A's
    a, b = sorted([p, forged], key=lambda x: x.hash)
    payload = {"t": ForkProofs.TYPE, "v": 1, "proofs": [{"a": a.to_wire(), "b": b.to_wire()}]}
    with pytest.raises(MalformedMessage):
        decode_message(msgpack.packb(payload))


def test_unexpected_type_is_refused() -> None:
    data = encode_message(Refuse("j", "r"))
    with pytest.raises(MalformedMessage):
        decode_message(data, expected=(Propose,))
    assert decode_message(data, expected=(Refuse,)) == Refuse("j", "r")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):  # anything else fails the test
        decode_message(data)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_wire_block())), st.integers() | st.binary()))
def test_random_block_fields_never_crash(fields: dict[str, Any]) -> None:
    d = _wire_block()
    d.update(fields)
    with contextlib.suppress(MalformedMessage):  # anything else fails the test
        HalfBlock.from_wire(d)


def test_transaction_refuses_bad_values_locally() -> None:
    tx = _world().chains[A.public_raw][0].transaction
    with pytest.raises(ValueError):
        dataclasses.replace(tx, cpu_ms=-1)
    with pytest.raises(ValueError):
        dataclasses.replace(tx, job_id="")
    assert isinstance(tx, Transaction)


def test_credits_format_and_parse() -> None:
    assert format_credits(1500) == "1.5"
    assert format_credits(-3_600_000) == "-3600"
    assert format_credits(1) == "0.001"
    assert format_credits(-20) == "-0.02"
    assert format_credits(0) == "0"
    for text, milli in [("-3600", -3_600_000), ("12.5", 12_500), ("0.001", 1), ("+2", 2000)]:
        assert parse_credits(text) == milli
    for bad in ["", "1.2345", "abc", "1e3", "-"]:
        with pytest.raises(ValueError):
            parse_credits(bad)
