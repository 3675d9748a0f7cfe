"""The half-block: format, canonical encoding, hash, signature, and its wire form.

A half-block is one party's signed record of its side of one exchange, at the next position of its
own chain. The worker signs a *proposal* (link_sequence 0: the requester's position is not known
yet); the requester signs an *agreement* naming the proposal by key, sequence and hash and carrying
a copy of its transaction. The two halves together are one exchange.

Canonical encoding: the fields, in a fixed order, as one msgpack array (msgpack writes each int in
its shortest form and bytes as bin, so equal fields give equal bytes, whatever the wire form was).
What is signed: SIGN_DOMAIN + body. The domain tag keeps a ledger signature from ever being a valid
signature of anything else made with the same key (the key is also the node's libp2p key).
The block hash is SHA-256(SIGN_DOMAIN + body + signature): it covers the signature, so the hash
links of a chain commit to every earlier block's signature too (ledger.validate relies on that).
Two blocks are "the same" when their bodies are equal; a fork is two bodies at one position.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from ledger.codec import Wire, as_map, get_bytes, get_int, get_str
from ledger.errors import MalformedMessage
from ledger.units import amount_milli, format_credits
from rainnet.identity import peer_id_from_public_bytes, verify

BLOCK_VERSION = 1
SIGN_DOMAIN = b"rainnet/ledger/half-block/v1\x00"
KEY_SIZE = 32
HASH_SIZE = 32
SIGNATURE_SIZE = 64
GENESIS_HASH = bytes(HASH_SIZE)  # previous_hash of sequence 1; link_hash of every proposal
MAX_JOB_ID_BYTES = 128

# Bounds keep every value, and every sum over a chain, inside SQLite's signed 64-bit integers.
MAX_SEQUENCE = 1 << 48
MAX_CPUS_MILLI = 1_000_000  # 1000 CPUs
MAX_GPUS = 1024
MAX_WALL_MS = 366 * 86_400_000  # a year
MAX_USAGE_MS = MAX_CPUS_MILLI * MAX_WALL_MS // 1000  # what the largest limits allow
MAX_TIME_MS = 1 << 53


class Signer(Protocol):
    """What signs blocks: rainnet.identity.Identity, or anything with the same two members."""

    @property
    def public_raw(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if type(value) is not int:
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is outside [{lo}, {hi}]")


def _check_bytes(name: str, value: object, size: int) -> None:
    if type(value) is not bytes or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")


@dataclass(frozen=True, slots=True)
class JobLimits:
    """The job's resource limits as the requester set them; they bound what the worker may claim."""

    cpus_milli: int  # CPUs x 1000 (a job may get half a CPU)
    gpus: int
    wall_ms: int  # wall-time limit

    def __post_init__(self) -> None:
        # One expression for the usual, valid case (blocks are built by the 100,000 when a chain
        # is verified); the detailed checks below only run to name what is wrong.
        if not (
            type(self.cpus_milli) is int
            and 1 <= self.cpus_milli <= MAX_CPUS_MILLI
            and type(self.gpus) is int
            and 0 <= self.gpus <= MAX_GPUS
            and type(self.wall_ms) is int
            and 1 <= self.wall_ms <= MAX_WALL_MS
        ):
            _check_int("cpus_milli", self.cpus_milli, 1, MAX_CPUS_MILLI)
            _check_int("gpus", self.gpus, 0, MAX_GPUS)
            _check_int("wall_ms", self.wall_ms, 1, MAX_WALL_MS)

    def __str__(self) -> str:
        return (
            f"{format_credits(self.cpus_milli)} CPUs, {self.gpus} GPUs, "
            f"{format_credits(self.wall_ms)} s"
        )

    @property
    def max_cpu_ms(self) -> int:
        """The most CPU time (milli-CPU-seconds) the job can use: cpus x wall time."""
        return self.cpus_milli * self.wall_ms // 1000

    @property
    def max_gpu_ms(self) -> int:
        return self.gpus * self.wall_ms

    @property
    def max_amount_milli(self) -> int:
        """The most this job can cost, in milli-credits."""
        return amount_milli(self.max_cpu_ms, self.max_gpu_ms)


@dataclass(frozen=True, slots=True)
class Transaction:
    """What was exchanged: identical in both halves of one exchange."""

    job_id: str
    cpu_ms: int  # milli-CPU-seconds of guest work measured by the worker's sandbox
    gpu_ms: int  # milli-GPU-seconds
    limits: JobLimits
    result_hash: bytes  # SHA-256 of the outputs the worker will release
    time_ms: int  # when the worker measured the work (Unix milliseconds)

    def __post_init__(self) -> None:
        if type(self.job_id) is not str or not 0 < len(self.job_id.encode()) <= MAX_JOB_ID_BYTES:
            raise ValueError(f"job_id must be a string of 1 to {MAX_JOB_ID_BYTES} bytes")
        if not (  # the fast path, as in JobLimits
            type(self.cpu_ms) is int
            and 0 <= self.cpu_ms <= MAX_USAGE_MS
            and type(self.gpu_ms) is int
            and 0 <= self.gpu_ms <= MAX_USAGE_MS
            and type(self.limits) is JobLimits
            and type(self.result_hash) is bytes
            and len(self.result_hash) == HASH_SIZE
            and type(self.time_ms) is int
            and 0 <= self.time_ms <= MAX_TIME_MS
        ):
            _check_int("cpu_ms", self.cpu_ms, 0, MAX_USAGE_MS)
            _check_int("gpu_ms", self.gpu_ms, 0, MAX_USAGE_MS)
            if not isinstance(self.limits, JobLimits):
                raise ValueError("limits must be JobLimits")
            _check_bytes("result_hash", self.result_hash, HASH_SIZE)
            _check_int("time_ms", self.time_ms, 0, MAX_TIME_MS)

    @property
    def amount_milli(self) -> int:
        return amount_milli(self.cpu_ms, self.gpu_ms)

    def within_limits(self) -> bool:
        """Whether the claimed usage fits the job's limits (cpus x wall time, gpus x wall time)."""
        return self.cpu_ms <= self.limits.max_cpu_ms and self.gpu_ms <= self.limits.max_gpu_ms

    def to_wire(self) -> Wire:
        return {
            "job": self.job_id,
            "cpu_ms": self.cpu_ms,
            "gpu_ms": self.gpu_ms,
            "cpus_milli": self.limits.cpus_milli,
            "gpus": self.limits.gpus,
            "wall_ms": self.limits.wall_ms,
            "result": self.result_hash,
            "time_ms": self.time_ms,
        }

    @classmethod
    def from_wire(cls, obj: object, what: str = "transaction") -> Transaction:
        m = as_map(obj, what, _TX_KEYS)
        job = get_str(m, "job", what, MAX_JOB_ID_BYTES)
        try:
            return cls(
                job_id=job,
                cpu_ms=get_int(m, "cpu_ms", what, 0, MAX_USAGE_MS),
                gpu_ms=get_int(m, "gpu_ms", what, 0, MAX_USAGE_MS),
                limits=JobLimits(
                    cpus_milli=get_int(m, "cpus_milli", what, 1, MAX_CPUS_MILLI),
                    gpus=get_int(m, "gpus", what, 0, MAX_GPUS),
                    wall_ms=get_int(m, "wall_ms", what, 1, MAX_WALL_MS),
                ),
                result_hash=get_bytes(m, "result", what, HASH_SIZE),
                time_ms=get_int(m, "time_ms", what, 0, MAX_TIME_MS),
            )
        except ValueError as exc:
            raise MalformedMessage(f"{what}: {exc}") from None


_TX_KEYS = frozenset(
    {"job", "cpu_ms", "gpu_ms", "cpus_milli", "gpus", "wall_ms", "result", "time_ms"}
)
_BLOCK_KEYS = frozenset({"v", "pk", "seq", "prev", "lpk", "lseq", "lhash", "tx", "sig"})


# Not slots: body and hash are cached in the instance dict, computed at most once per object,
# which matters when a chain of 100,000 blocks is checked link by link.
@dataclass(frozen=True)
class HalfBlock:
    """One signed half of an exchange, at `sequence` in the chain of `public_key`."""

    public_key: bytes
    sequence: int  # 1, 2, 3... in this key's chain
    previous_hash: bytes  # hash of this key's block at sequence - 1 (GENESIS_HASH for 1)
    link_public_key: bytes  # the counterparty
    link_sequence: int  # 0 in a proposal; the proposal's sequence in an agreement
    link_hash: bytes  # GENESIS_HASH in a proposal; the proposal's hash in an agreement
    transaction: Transaction
    signature: bytes

    def __post_init__(self) -> None:
        if not (  # the fast path, as in JobLimits
            type(self.public_key) is bytes
            and len(self.public_key) == KEY_SIZE
            and type(self.sequence) is int
            and 1 <= self.sequence <= MAX_SEQUENCE
            and type(self.previous_hash) is bytes
            and len(self.previous_hash) == HASH_SIZE
            and type(self.link_public_key) is bytes
            and len(self.link_public_key) == KEY_SIZE
            and type(self.link_sequence) is int
            and 0 <= self.link_sequence <= MAX_SEQUENCE
            and type(self.link_hash) is bytes
            and len(self.link_hash) == HASH_SIZE
            and type(self.transaction) is Transaction
            and type(self.signature) is bytes
            and len(self.signature) == SIGNATURE_SIZE
        ):
            _check_bytes("public_key", self.public_key, KEY_SIZE)
            _check_int("sequence", self.sequence, 1, MAX_SEQUENCE)
            _check_bytes("previous_hash", self.previous_hash, HASH_SIZE)
            _check_bytes("link_public_key", self.link_public_key, KEY_SIZE)
            _check_int("link_sequence", self.link_sequence, 0, MAX_SEQUENCE)
            _check_bytes("link_hash", self.link_hash, HASH_SIZE)
            if not isinstance(self.transaction, Transaction):
                raise ValueError("transaction must be a Transaction")
            _check_bytes("signature", self.signature, SIGNATURE_SIZE)

    @property
    def is_proposal(self) -> bool:
        return self.link_sequence == 0

    @property
    def amount_milli(self) -> int:
        return self.transaction.amount_milli

    @property
    def position(self) -> tuple[bytes, int]:
        return (self.public_key, self.sequence)

    # Cached by hand in the instance dict: functools.cached_property takes a lock on every
    # access in Python 3.11, which costs more than the encoding it saves.
    @property
    def body(self) -> bytes:
        """The canonical encoding of everything but the signature."""
        cache = self.__dict__
        body: bytes | None = cache.get("_body")
        if body is None:
            body = cache["_body"] = encode_body(
                self.public_key,
                self.sequence,
                self.previous_hash,
                self.link_public_key,
                self.link_sequence,
                self.link_hash,
                self.transaction,
            )
        return body

    @property
    def hash(self) -> bytes:
        cache = self.__dict__
        digest: bytes | None = cache.get("_hash")
        if digest is None:
            digest = cache["_hash"] = hashlib.sha256(
                SIGN_DOMAIN + self.body + self.signature
            ).digest()
        return digest

    def signature_ok(self) -> bool:
        return verify(self.public_key, self.signature, SIGN_DOMAIN + self.body)

    def to_wire(self) -> Wire:
        return {
            "v": BLOCK_VERSION,
            "pk": self.public_key,
            "seq": self.sequence,
            "prev": self.previous_hash,
            "lpk": self.link_public_key,
            "lseq": self.link_sequence,
            "lhash": self.link_hash,
            "tx": self.transaction.to_wire(),
            "sig": self.signature,
        }

    @classmethod
    def from_wire(cls, obj: object, what: str = "block") -> HalfBlock:
        """A block from a peer: shape, types and sizes checked (MalformedMessage otherwise).
        Signature and chain rules are ledger.validate's job."""
        m = as_map(obj, what, _BLOCK_KEYS)
        version = m.get("v")
        if version != BLOCK_VERSION or type(version) is not int:
            raise MalformedMessage(f"{what}: unsupported block version {version!r}")
        return cls(
            public_key=get_bytes(m, "pk", what, KEY_SIZE),
            sequence=get_int(m, "seq", what, 1, MAX_SEQUENCE),
            previous_hash=get_bytes(m, "prev", what, HASH_SIZE),
            link_public_key=get_bytes(m, "lpk", what, KEY_SIZE),
            link_sequence=get_int(m, "lseq", what, 0, MAX_SEQUENCE),
            link_hash=get_bytes(m, "lhash", what, HASH_SIZE),
            transaction=Transaction.from_wire(m.get("tx"), f"{what}.tx"),
            signature=get_bytes(m, "sig", what, SIGNATURE_SIZE),
        )

    def short(self) -> str:
        """`#seq of <peer id>` for messages."""
        return f"#{self.sequence} of {peer_id_from_public_bytes(self.public_key)}"


def encode_body(
    public_key: bytes,
    sequence: int,
    previous_hash: bytes,
    link_public_key: bytes,
    link_sequence: int,
    link_hash: bytes,
    tx: Transaction,
) -> bytes:
    fields: list[Any] = [
        BLOCK_VERSION,
        public_key,
        sequence,
        previous_hash,
        link_public_key,
        link_sequence,
        link_hash,
        tx.job_id,
        tx.cpu_ms,
        tx.gpu_ms,
        tx.limits.cpus_milli,
        tx.limits.gpus,
        tx.limits.wall_ms,
        tx.result_hash,
        tx.time_ms,
    ]
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def sign_block(
    signer: Signer,
    *,
    sequence: int,
    previous_hash: bytes,
    link_public_key: bytes,
    link_sequence: int,
    link_hash: bytes,
    transaction: Transaction,
    public_key: bytes | None = None,
) -> HalfBlock:
    """A new half-block signed by `signer` (`public_key` saves recomputing the signer's key)."""
    pk = signer.public_raw if public_key is None else public_key
    body = encode_body(
        pk, sequence, previous_hash, link_public_key, link_sequence, link_hash, transaction
    )
    return HalfBlock(
        public_key=pk,
        sequence=sequence,
        previous_hash=previous_hash,
        link_public_key=link_public_key,
        link_sequence=link_sequence,
        link_hash=link_hash,
        transaction=transaction,
        signature=signer.sign(SIGN_DOMAIN + body),
    )
