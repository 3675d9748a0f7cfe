"""A pool's secret: its file round-trips, a damaged or foreign file is refused in plain words, and
a home keeps it the user's alone."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import pools
from rainnet.pool import NAME_RE, PoolError, PoolSecret, parse

names = st.from_regex(NAME_RE, fullmatch=True)


@given(names, st.binary(min_size=32, max_size=32))
def test_a_pool_file_round_trips(name: str, key: bytes) -> None:
    secret = PoolSecret(name, key)
    assert parse(secret.render()) == secret


@given(st.text(max_size=300))
def test_any_text_is_a_pool_or_a_pool_error(text: str) -> None:
    with contextlib.suppress(PoolError):
        parse(text)


def test_the_key_is_never_in_a_repr() -> None:
    secret = PoolSecret.create("home")
    assert secret.key.hex() not in repr(secret)


def test_two_pools_differ_in_key_fingerprint_and_mdns_service() -> None:
    a, b = PoolSecret.create("same"), PoolSecret.create("same")
    assert a.psk_hex() != b.psk_hex() and len(a.psk_hex()) == 64
    assert a.fingerprint() != b.fingerprint()
    assert a.mdns_service_type() != b.mdns_service_type()
    # zeroconf refuses a service name over 15 characters.
    assert len(a.mdns_service_type().split(".")[0]) <= 16


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "does not start"),
        ("rainnet-pool 1\nname x\n", "one name line and one key line"),
        ("rainnet-pool 1\nname x\nkey zz\n", "not hex"),
        ("rainnet-pool 1\nname x\nkey abcd\n", "32 bytes"),
        (f"rainnet-pool 1\nname ../x\nkey {'00' * 32}\n", "pool name"),
    ],
)
def test_a_bad_pool_file_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(PoolError, match=says):
        parse(text)


def test_a_home_keeps_its_pool_secret_0600_and_refuses_a_second_key_under_one_name(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    secret = PoolSecret.create("lab")
    path = pools.join(home, secret)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert pools.load(home, "lab") == secret
    assert pools.join(home, secret) == path  # joining again is a no-op
    with pytest.raises(PoolError, match="different pool named 'lab'"):
        pools.join(home, PoolSecret.create("lab"))
    with pytest.raises(PoolError, match="has not joined pool 'other'"):
        pools.load(home, "other")
    assert [s.name for s in pools.joined(home)] == ["lab"]
    assert pools.leave(home, "lab") and not pools.joined(home)
