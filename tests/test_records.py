"""Signed node records: who may write them, when they go stale, which one wins."""

from __future__ import annotations

import dataclasses
import time

import pytest

from rainnet import records
from rainnet.host import RecordValidator
from rainnet.identity import Identity
from tests.test_wire import _record


def test_signed_record_checks_out_under_its_key() -> None:
    me = Identity.generate()
    rec = _record(me)
    value = records.sign_record(me, rec).to_bytes()
    assert records.parse_signed(value, time.time(), records.record_key(me.peer_id)) == rec
    RecordValidator().validate(records.record_key(me.peer_id), value)


def test_record_under_someone_elses_key_is_refused() -> None:
    me, other = Identity.generate(), Identity.generate()
    value = records.sign_record(me, _record(me)).to_bytes()
    with pytest.raises(records.RecordError, match="expected"):
        records.parse_signed(value, time.time(), records.record_key(other.peer_id))
    with pytest.raises(ValueError):
        RecordValidator().validate(records.record_key(other.peer_id), value)


def test_forged_signature_is_refused() -> None:
    me, forger = Identity.generate(), Identity.generate()
    body = records.sign_record(me, _record(me, state="busy"))
    forged = dataclasses.replace(body, signature=forger.sign(body.record))
    with pytest.raises(records.RecordError, match="bad signature"):
        records.open_record(forged, time.time())
    # Tampering with the body breaks the owner's own signature too.
    tampered = dataclasses.replace(body, record=body.record.replace(b"busy", b"idle"))
    with pytest.raises(records.RecordError, match="bad signature"):
        records.open_record(tampered, time.time())


def test_stale_record_is_ignored() -> None:
    me = Identity.generate()
    signed = records.sign_record(me, _record(me, issued_at=time.time() - 120, ttl=60.0))
    with pytest.raises(records.RecordError, match="stale"):
        records.open_record(signed, time.time())
    future = records.sign_record(me, _record(me, issued_at=time.time() + 3600))
    with pytest.raises(records.RecordError, match="stale"):
        records.open_record(future, time.time())


def test_validator_selects_the_highest_sequence() -> None:
    me = Identity.generate()
    values = [records.sign_record(me, _record(me, seq=s)).to_bytes() for s in (3, 9, 5)]
    values.insert(0, b"garbage")
    assert RecordValidator().select(records.record_key(me.peer_id), values) == 2


def test_a_node_signs_only_its_own_record() -> None:
    me, other = Identity.generate(), Identity.generate()
    with pytest.raises(ValueError):
        records.sign_record(me, _record(other))
