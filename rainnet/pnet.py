"""A private pool at the connection: py-libp2p's pre-shared-key network (pnet), checked.

With a pool key (rainnet.pool) the swarm wraps every raw connection, both ways, before anything
else is exchanged: each side sends an 8-byte nonce and then everything it sends is encrypted with
Salsa20 under the key (`libp2p.security.pnet`). A node without the key cannot produce or read
the stream, so it never reaches the Noise handshake, let alone a hello, a record or a job offer.

What this module adds to py-libp2p's version, and why:
- A clear, early refusal. The first bytes each side sends are multistream-select's header
  (`/multistream/1.0.0`), so the first bytes decrypted from a peer must be exactly that. A peer
  without the key (an open-network node, another pool's) fails that check on its first read: the
  connection is closed then, with a log line naming the remote address, where py-libp2p's would
  wait out the negotiation's timeout and say only "failed to negotiate the secure protocol".
- The nonce is read whole: py-libp2p takes one read of up to 8 bytes, which TCP may cut short.
- Relayed connections are protected both ways. py-libp2p protects circuits it accepts
  (`upgrade_inbound_raw_conn`) but not those it dials (`upgrade_outbound_raw_conn`), so a relayed
  connection between two pool nodes would fail; rainnet.relay calls `protect_outbound` on its own.

There is no message authentication at this layer (as in go-libp2p's pnet): Noise, inside, is what
authenticates. The key proves membership: without it no byte of ours is readable, and no byte of
theirs decrypts to the header.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import libp2p.network.swarm as _swarm_module
from Crypto.Cipher import Salsa20
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.protocol_muxer.multiselect import MULTISELECT_PROTOCOL_ID
from libp2p.utils.varint import encode_delim

log = logging.getLogger("rainnet.pool")

NONCE_BYTES = 8
HEADER = encode_delim(MULTISELECT_PROTOCOL_ID.encode())
# Refusals are logged, but a stranger dialing in a loop must not fill the log: at most this many
# lines a minute, then one line saying how many more were refused.
LOG_PER_MINUTE = 20


class NotInPool(RawConnError):  # type: ignore[misc]
    """The peer does not hold the pool's key. A RawConnError, so py-libp2p's upgrade treats it
    as a broken connection (and our handlers never see it)."""


class _RefusalLog:
    def __init__(self) -> None:
        self._window = 0.0
        self._logged = 0
        self._suppressed = 0

    def refused(self, what: str) -> None:
        now = time.monotonic()
        if now - self._window >= 60.0:
            if self._suppressed:
                log.warning("%d more connections refused (not in the pool)", self._suppressed)
            self._window, self._logged, self._suppressed = now, 0, 0
        if self._logged < LOG_PER_MINUTE:
            self._logged += 1
            log.warning("%s", what)
        else:
            self._suppressed += 1


_refusals = _RefusalLog()


class PoolConn(RawConnection):  # type: ignore[misc]
    """A raw connection encrypted with the pool key, whose first decrypted bytes are checked."""

    def __init__(self, conn: Any, psk_hex: str) -> None:
        if len(psk_hex) != 64:
            raise ValueError("a pool key is 64 hex characters")
        super().__init__(
            conn,
            getattr(conn, "is_initiator", False),
            getattr(conn, "_connection_type", None) or _default_type(),
            getattr(conn, "_actual_addresses", None),
        )
        self._conn = conn
        self._key = bytes.fromhex(psk_hex)
        self._write_cipher: Any = None
        self._read_cipher: Any = None
        self._unchecked = HEADER  # what the peer's first plaintext bytes must still be

    def _where(self) -> str:
        try:
            remote = self._conn.get_remote_address()
        except Exception:
            remote = None
        if remote:
            return f"{remote[0]}:{remote[1]}"
        try:  # (a dialed TCP connection knows only the multiaddr it dialed)
            addrs = self._conn.get_transport_addresses()
        except Exception:
            addrs = []
        return str(addrs[0]) if addrs else "an address py-libp2p did not say"

    async def write(self, data: bytes) -> None:
        if self._write_cipher is None:
            nonce = os.urandom(NONCE_BYTES)
            self._write_cipher = Salsa20.new(key=self._key, nonce=nonce)
            data = nonce + self._write_cipher.encrypt(data)
        else:
            data = self._write_cipher.encrypt(data)
        await self._conn.write(data)

    async def read(self, n: int | None = None) -> bytes:
        if self._read_cipher is None:
            nonce = b""
            while len(nonce) < NONCE_BYTES:
                chunk = await self._conn.read(NONCE_BYTES - len(nonce))
                if not chunk:
                    return b""  # closed before it said anything
                nonce += chunk
            self._read_cipher = Salsa20.new(key=self._key, nonce=nonce)
        data = await self._conn.read(n)
        if not data:
            return b""
        plain: bytes = self._read_cipher.decrypt(data)
        if self._unchecked:
            head = plain[: len(self._unchecked)]
            if not self._unchecked.startswith(head):
                await self._refuse()
            self._unchecked = self._unchecked[len(head) :]
        return plain

    async def _refuse(self) -> None:
        direction = "to" if self.is_initiator else "from"
        where = self._where()
        _refusals.refused(
            f"refused a connection {direction} {where}: it does not hold this pool's key "
            "(a node of the open network or of another pool)"
        )
        try:
            await self._conn.close()
        finally:
            raise NotInPool(f"{where} is not in this pool")

    async def close(self) -> None:
        await self._conn.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        remote: tuple[str, int] | None = self._conn.get_remote_address()
        return remote


def _default_type() -> Any:
    from libp2p.connection_types import ConnectionType

    return ConnectionType.DIRECT


def protect(conn: Any, psk_hex: str) -> PoolConn:
    """What py-libp2p's swarm calls for every raw connection when it has a `psk`."""
    return PoolConn(conn, psk_hex)


def protect_outbound(host: Any, conn: Any) -> Any:
    """`conn`, protected if `host` is in a pool (a circuit we dial: see the module docstring)."""
    psk = getattr(host.get_network(), "psk", None)
    return protect(conn, psk) if psk is not None else conn


# The swarm looks `new_protected_conn` up in its own module at each connection.
_swarm_module.new_protected_conn = protect
