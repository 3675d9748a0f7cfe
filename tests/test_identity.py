"""A node's identity: created once (mode 0600), reused, and the same peer id libp2p derives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from libp2p.peer.id import ID

from rainnet import identity
from rainnet.host import libp2p_key_pair


def test_created_once_user_only_and_reused(tmp_path: Path) -> None:
    first = identity.load_or_create(tmp_path / "home")
    key = tmp_path / "home" / identity.KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    assert identity.load_or_create(tmp_path / "home").peer_id == first.peer_id


def test_peer_id_matches_libp2p(tmp_path: Path) -> None:
    me = identity.load_or_create(tmp_path)
    assert str(ID.from_pubkey(libp2p_key_pair(me).public_key)) == me.peer_id
    assert identity.public_bytes_from_peer_id(me.peer_id) == me.public_raw


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    identity.load_or_create(tmp_path)
    os.chmod(tmp_path / identity.KEY_FILE, 0o644)
    with pytest.raises(identity.IdentityError, match="chmod 600"):
        identity.load_or_create(tmp_path)


def test_signatures_verify_only_with_the_right_key() -> None:
    a, b = identity.Identity.generate(), identity.Identity.generate()
    sig = a.sign(b"x")
    assert identity.verify(a.public_raw, sig, b"x")
    assert not identity.verify(b.public_raw, sig, b"x")
    assert not identity.verify(a.public_raw, sig, b"y")
