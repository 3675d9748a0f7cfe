"""A node's identity: one Ed25519 key, kept in the node's home, and the libp2p peer id it implies.

The key is created on first start (mode 0600) and reused ever after, so a node keeps its peer id
and its ledger across restarts. This module uses `cryptography` only (no libp2p import), so the CLI
and the ledger can compute peer ids and check signatures without paying for libp2p's start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_FILE = "identity.key"

# libp2p's PublicKey protobuf: field 1 (KeyType) = 1 (Ed25519), field 2 (Data) = 32 bytes.
_ED25519_PROTOBUF_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
# Keys this short are inlined in the peer id with the identity multihash (code 0x00, length 36).
_IDENTITY_MULTIHASH_PREFIX = bytes([0x00, 0x24])


class IdentityError(Exception):
    """The identity file is unusable (local fault: wrong size, wrong mode, unreadable)."""


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def peer_id_from_public_bytes(raw: bytes) -> str:
    """The base58 libp2p peer id of a raw 32-byte Ed25519 public key."""
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
    encoded: bytes = base58.b58encode(_IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTOBUF_PREFIX + raw)
    return encoded.decode()


def public_bytes_from_peer_id(peer_id: str) -> bytes:
    """The raw Ed25519 public key inlined in a peer id; ValueError for any other kind of id."""
    try:
        decoded: bytes = base58.b58decode(peer_id)
    except ValueError as exc:
        raise ValueError(f"not a base58 peer id: {peer_id!r}") from exc
    prefix = _IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTOBUF_PREFIX
    if len(decoded) != len(prefix) + 32 or not decoded.startswith(prefix):
        raise ValueError(f"not an Ed25519 peer id: {peer_id!r}")
    return decoded[len(prefix) :]


def verify(public_raw: bytes, signature: bytes, data: bytes) -> bool:
    """True when `signature` is `public_raw`'s Ed25519 signature of `data`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """A node's signing key and the names derived from it."""

    private_key: Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        return public_key_bytes(self.private_key.public_key())

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_bytes(self.public_raw)

    def seed(self) -> bytes:
        """The 32-byte private seed (what libp2p's Ed25519 key is built from)."""
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        return self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))


def load_or_create(home: Path) -> Identity:
    """The identity kept in `home`, created (mode 0600, atomically) on first use."""
    path = home / KEY_FILE
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = Identity.generate()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, identity.seed())
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() rather than rename(): if two processes race on first start, the loser keeps
        # the winner's key instead of silently replacing it.
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return load_or_create(home)
    if len(seed) != 32:
        raise IdentityError(f"{path} holds {len(seed)} bytes; an Ed25519 seed has 32")
    if path.stat().st_mode & 0o077:
        raise IdentityError(f"{path} is readable by others; chmod 600 it")
    return Identity.from_seed(seed)


def load(home: Path) -> Identity:
    """The existing identity in `home` (IdentityError if there is none)."""
    if not (home / KEY_FILE).exists():
        raise IdentityError(f"no identity in {home}: start rain-node there first")
    return load_or_create(home)
