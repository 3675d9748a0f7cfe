"""Node records: what a node says about itself, signed, with a sequence number and an expiry.

A record names the node's peer id, addresses, CPUs, memory, GPUs, sandbox backends, software version
and state (idle, busy, owner, suspended...), and what the panels show of it: its two user lights,
whether it runs too hot, and its load. It is published in the DHT under `/rain/node/<peer id>`
and handed over directly in the hello exchange. Anyone can check it: the signature is by the key
inlined in the peer id. Records expire (`issued_at + ttl`); stale ones are ignored, and a higher
sequence number replaces a lower one.

Pure code: signing takes an Identity, checking takes bytes and the current time.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field

from rainnet import wire
from rainnet.identity import Identity, public_bytes_from_peer_id, verify

RECORD_NAMESPACE = "rain"
RECORD_KEY_PREFIX = f"/{RECORD_NAMESPACE}/node/"
# Signatures are over a domain-separated message so a record signature can never be replayed as
# (say) a ledger signature made with the same key.
_SIGNING_DOMAIN = b"rainnet/node-record/v1\x00"
# A record from a clock a little ahead of ours is still accepted.
CLOCK_SKEW = 30.0
MAX_TTL = 3600.0
MAX_RECORD_BYTES = 8192

STATES = ("starting", "idle", "busy", "owner", "suspended", "stopping")
_PEER_ID_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{40,60}$")
LOAD_STEPS = 8  # a record's load is in eighths of the machine, as a bar of eight lights


class Light(enum.StrEnum):
    """A user light, as the front panels' programmer-chosen LEDs (`rain light`, or a job)."""

    OFF = "off"
    ON = "on"
    BLINK = "blink"


_LIGHTS = frozenset(Light)


class RecordError(Exception):
    """A record that fails checks (whoever sent it is at fault)."""


@wire.message("node-record")
@dataclass(frozen=True)
class NodeRecord(wire.Message):
    peer_id: str = field(metadata=wire.limit(64))
    addrs: tuple[str, ...] = field(metadata=wire.limit(32))
    cpus: int
    memory: int
    gpus: int
    backends: tuple[str, ...] = field(metadata=wire.limit(8))
    version: str = field(metadata=wire.limit(64))
    state: str = field(metadata=wire.limit(16))
    seq: int
    issued_at: float
    ttl: float
    # Added with the panel: optional, so that an older node's record (without them) still
    # parses here, and ours there (unknown keys are tolerated by the codec).
    user1: str = field(default=Light.OFF.value, metadata=wire.limit(8))
    user2: str = field(default=Light.OFF.value, metadata=wire.limit(8))
    hot: bool = False  # too hot to run at full speed (the owner's temperature limit holds)
    load: int = 0  # how busy the machine is, guests included, in eighths
    # Added later, optional too: the owner's name for the machine, and whether it lends at all
    # (cpus and memory are what it lends: the guests' share).
    name: str = field(default="", metadata=wire.limit(64))
    lends: bool = True
    # Added with MPI groups (node.mpi): it takes MPI ranks (MPICH with hydra, mpi4py, a sandbox
    # that can give ranks the host's network). Optional, as the panel's fields.
    mpi: bool = False

    def __post_init__(self) -> None:
        if not _PEER_ID_RE.match(self.peer_id):
            raise ValueError(f"peer_id {self.peer_id[:64]!r} is not a peer id")
        if self.state not in STATES:
            raise ValueError(f"state {self.state!r} is not one of {', '.join(STATES)}")
        if not (0 <= self.cpus <= 1 << 16 and 0 <= self.gpus <= 1 << 10 and self.memory >= 0):
            raise ValueError("cpus, gpus and memory must be small non-negative numbers")
        if self.seq < 0 or not 0 < self.ttl <= MAX_TTL:
            raise ValueError(f"seq must be >= 0 and ttl in (0, {MAX_TTL:.0f}]")
        for addr in self.addrs:
            if len(addr) > 256 or not addr.startswith("/"):
                raise ValueError(f"address {addr[:64]!r} is not a multiaddr")
        if self.user1 not in _LIGHTS or self.user2 not in _LIGHTS:
            raise ValueError(f"user lights must be one of {', '.join(Light)}")
        if not 0 <= self.load <= LOAD_STEPS:
            raise ValueError(f"load must be in 0..{LOAD_STEPS}")

    @property
    def expires_at(self) -> float:
        return self.issued_at + self.ttl

    def is_fresh(self, now: float) -> bool:
        return self.issued_at <= now + CLOCK_SKEW and now < self.expires_at

    def dht_key(self) -> str:
        return record_key(self.peer_id)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@wire.message("signed-record")
@dataclass(frozen=True)
class SignedRecord(wire.Message):
    """A NodeRecord's bytes and their signature: what travels and what the DHT stores."""

    record: bytes = field(metadata=wire.limit(MAX_RECORD_BYTES))
    signature: bytes = field(metadata=wire.limit(64))

    def to_bytes(self) -> bytes:
        return wire.encode_payload(self)


def record_key(peer_id: str) -> str:
    return RECORD_KEY_PREFIX + peer_id


def sign_record(identity: Identity, record: NodeRecord) -> SignedRecord:
    if record.peer_id != identity.peer_id:
        raise ValueError("a node signs only its own record")
    body = wire.encode_payload(record)
    return SignedRecord(record=body, signature=identity.sign(_SIGNING_DOMAIN + body))


def open_record(signed: SignedRecord, now: float, expect_peer: str | None = None) -> NodeRecord:
    """The record inside `signed` once its signature, owner and freshness check out."""
    try:
        record = wire.decode_payload(signed.record, expected=(NodeRecord,))
    except wire.RemoteProtocolError as exc:
        raise RecordError(f"malformed record: {exc}") from None
    assert isinstance(record, NodeRecord)
    if expect_peer is not None and record.peer_id != expect_peer:
        raise RecordError(f"record of {record.peer_id} where {expect_peer}'s was expected")
    try:
        public = public_bytes_from_peer_id(record.peer_id)
    except ValueError as exc:
        raise RecordError(str(exc)) from None
    if not verify(public, signed.signature, _SIGNING_DOMAIN + signed.record):
        raise RecordError(f"bad signature on the record of {record.peer_id}")
    if not record.is_fresh(now):
        raise RecordError(f"stale record of {record.peer_id} (seq {record.seq})")
    return record


def parse_signed(value: bytes, now: float, key: str | None = None) -> NodeRecord:
    """Check a DHT value stored under `key` (if given, the record must be that key's peer's)."""
    try:
        signed = wire.decode_payload(value, expected=(SignedRecord,))
    except wire.RemoteProtocolError as exc:
        raise RecordError(f"malformed signed record: {exc}") from None
    assert isinstance(signed, SignedRecord)
    expect = None
    if key is not None:
        if not key.startswith(RECORD_KEY_PREFIX):
            raise RecordError(f"{key[:80]!r} is not a node-record key")
        expect = key[len(RECORD_KEY_PREFIX) :]
    return open_record(signed, now, expect)


def newest(records: list[NodeRecord]) -> int:
    """Index of the record to keep among several for one key: highest seq, then latest issue."""
    if not records:
        raise ValueError("no records")
    return max(range(len(records)), key=lambda i: (records[i].seq, records[i].issued_at))
