"""A private pool's secret: what it is, its file format, and what the network derives from it.

Sans-io. A pool is a name and a 32-byte random key. Nodes started with the same pool
(`rain-node --pool NAME`) protect every connection with the key (py-libp2p's pre-shared-key
network, see rainnet.pnet), so a node without it cannot complete a connection, and they announce
themselves on mDNS under a service type derived from the key (`mdns_service_type`), so nodes of
other pools, or of the open network, do not even discover them.

The file `rain pool create` writes is what a user copies to their other machines: a few lines of
text, with the key in hex. Whoever holds it can join the pool, which the file's first line says.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field

KEY_BYTES = 32
FORMAT = "rainnet-pool 1"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_FILE_BYTES = 4096
# mDNS service names are at most 15 characters after the underscore (RFC 6763 section 7.2):
# "rain-" and 10 hex characters (40 bits of the key's hash) keep pools apart on one LAN.
MDNS_TAG_HEX = 10


class PoolError(ValueError):
    """A pool name or pool file that cannot be used, said in the user's terms."""


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise PoolError(
            f"pool name {name!r}: use 1 to 64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class PoolSecret:
    name: str
    # The key never appears in a repr (configs and errors are logged).
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_name(self.name)
        if len(self.key) != KEY_BYTES:
            raise PoolError(f"a pool key is {KEY_BYTES} bytes, not {len(self.key)}")

    @classmethod
    def create(cls, name: str) -> PoolSecret:
        return cls(check_name(name), secrets.token_bytes(KEY_BYTES))

    def psk_hex(self) -> str:
        """The key as py-libp2p's `psk` (64 hex characters)."""
        return self.key.hex()

    def fingerprint(self) -> str:
        """A short public tag of the key, for logs and `rain pool` listings (not the key)."""
        return hashlib.sha256(b"rainnet pool fingerprint\0" + self.key).hexdigest()[:12]

    def mdns_service_type(self) -> str:
        """The pool's mDNS service type: nodes of other pools browse and answer other types."""
        tag = hashlib.sha256(b"rainnet pool mdns\0" + self.key).hexdigest()[:MDNS_TAG_HEX]
        return f"_rain-{tag}._udp.local."

    def render(self) -> str:
        """The pool file's text."""
        return (
            f"# rainnet pool {self.name!r}: whoever holds this file can join the pool.\n"
            "# Copy it only to your own machines, then run `rain pool join FILE` there.\n"
            f"{FORMAT}\n"
            f"name {self.name}\n"
            f"key {self.key.hex()}\n"
        )


def parse(text: str) -> PoolSecret:
    """A pool file's secret; PoolError saying what is wrong with it."""
    if len(text) > MAX_FILE_BYTES:
        raise PoolError(f"not a pool file: over {MAX_FILE_BYTES} bytes")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines or lines[0] != FORMAT:
        raise PoolError(f"not a pool file: it does not start with {FORMAT!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        if key in fields:
            raise PoolError(f"pool file names {key!r} twice")
        fields[key] = value.strip()
    if set(fields) != {"name", "key"}:
        raise PoolError("a pool file has one name line and one key line")
    try:
        raw = bytes.fromhex(fields["key"])
    except ValueError:
        raise PoolError("the pool file's key is not hex") from None
    return PoolSecret(check_name(fields["name"]), raw)
