"""msgpack in and out of the ledger, with caps, and typed field readers for wire dicts.

Everything a peer sends reaches the ledger through here, so this is where untrusted input is sized
and typed: every reader raises `MalformedMessage` (the remote's fault) naming the field, never a
KeyError or TypeError that would look like our bug. Canonical encoding of blocks for signing is
`ledger.block`'s business; this module only moves wire dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from ledger.errors import MalformedMessage

# A chain page is the largest message (ledger.messages): 256 blocks and 320 halves of at most
# ~470 bytes each is ~270 KiB, so 1 MiB leaves room and still bounds what a peer can make us
# allocate.
MAX_MESSAGE_BYTES = 1 << 20

Wire = dict[str, Any]


def pack(obj: Mapping[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _no_ext(code: int, data: bytes) -> object:
    raise MalformedMessage(f"msgpack extension type {code} is not allowed")


def unpack(data: bytes, what: str = "message") -> Wire:
    """The map in `data` (at most MAX_MESSAGE_BYTES), or MalformedMessage."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"{what} is {len(data)} bytes, over the {MAX_MESSAGE_BYTES} cap")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, ext_hook=_no_ext)
    except MalformedMessage:
        raise
    except Exception as exc:  # msgpack raises many kinds; to us they all mean "garbage"
        raise MalformedMessage(f"{what} is not msgpack: {exc}") from None
    return as_map(obj, what)


def as_map(obj: object, what: str, keys: frozenset[str] | None = None) -> Wire:
    """`obj` as a str-keyed dict; with `keys`, exactly those keys (blocks are signed whole, so an
    unknown field would be a field nobody checks)."""
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{what} must be a map, not {type(obj).__name__}")
    if keys is not None and obj.keys() != keys:
        missing = sorted(keys - obj.keys())
        extra = sorted(str(k)[:32] for k in obj.keys() - keys)
        raise MalformedMessage(f"{what}: missing fields {missing}, unknown fields {extra}")
    return obj


def get_int(m: Wire, key: str, what: str, lo: int, hi: int) -> int:
    value = m.get(key)
    # bool is an int subclass; a peer sending true for a count is malformed, not 1.
    if type(value) is not int:
        raise MalformedMessage(f"{what}.{key} must be an integer, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise MalformedMessage(f"{what}.{key} = {value} is outside [{lo}, {hi}]")
    return value


def get_bytes(m: Wire, key: str, what: str, size: int) -> bytes:
    value = m.get(key)
    if type(value) is not bytes:
        raise MalformedMessage(f"{what}.{key} must be bytes, not {type(value).__name__}")
    if len(value) != size:
        raise MalformedMessage(f"{what}.{key} has {len(value)} bytes, not {size}")
    return value


def get_str(m: Wire, key: str, what: str, max_bytes: int) -> str:
    value = m.get(key)
    if type(value) is not str:
        raise MalformedMessage(f"{what}.{key} must be a string, not {type(value).__name__}")
    if len(value.encode()) > max_bytes:
        raise MalformedMessage(f"{what}.{key} is longer than {max_bytes} bytes")
    return value


def get_list(m: Wire, key: str, what: str, max_len: int) -> list[Any]:
    value = m.get(key)
    if not isinstance(value, list):
        raise MalformedMessage(f"{what}.{key} must be a list, not {type(value).__name__}")
    if len(value) > max_len:
        raise MalformedMessage(f"{what}.{key} has {len(value)} items, over the cap of {max_len}")
    return value
