"""The ledger's network messages: frozen dataclasses with `to_wire()` / `from_wire()`.

The node carries them over libp2p streams; this module only says what they hold. `from_wire`
checks shape, types and sizes and raises MalformedMessage (the remote's fault) for anything off;
the chain rules (signatures, links, forks) are applied afterwards by ledger.service, which raises
the other RemoteFault kinds. `encode_message` / `decode_message` turn them into single msgpack maps
(`{"t": type, "v": version, ...fields}`) for callers that want bytes.

Conversations:
  exchange:  worker -> Propose;  requester -> Agree, or Refuse(reason)
  chain:     ChainRequest(key, since, limit, pending) -> ChainPage (at most MAX_PAGE_BLOCKS
             blocks after `since`, the counterparty halves held for them, and the agreements
             that have come since for the proposals listed in `pending`); repeat while more
  gossip:    Heads (own head and heads of chains we hold) and ForkProofs, both ways
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ledger.block import KEY_SIZE, MAX_JOB_ID_BYTES, MAX_SEQUENCE, HalfBlock
from ledger.codec import Wire, as_map, get_bytes, get_int, get_list, get_str, pack, unpack
from ledger.errors import MalformedMessage
from ledger.fork import ForkProof

MESSAGE_VERSION = 1
MAX_PAGE_BLOCKS = 256  # blocks per ChainPage (and at most as many counterparty halves)
MAX_PENDING = 64  # late agreements one ChainRequest may ask for
MAX_LINKED = MAX_PAGE_BLOCKS + MAX_PENDING
MAX_HEADS = 32
MAX_FORK_PROOFS = 16
MAX_REASON_BYTES = 1024


def _blocks(m: Wire, key: str, what: str, cap: int) -> tuple[HalfBlock, ...]:
    return tuple(
        HalfBlock.from_wire(b, f"{what}.{key}[{i}]")
        for i, b in enumerate(get_list(m, key, what, cap))
    )


@dataclass(frozen=True)
class Propose:
    """Worker -> requester: my signed half for the job you gave me; countersign to get outputs."""

    TYPE: ClassVar[str] = "ledger.propose"
    block: HalfBlock

    def to_wire(self) -> Wire:
        return {"block": self.block.to_wire()}

    @classmethod
    def from_wire(cls, obj: object) -> Propose:
        m = as_map(obj, cls.TYPE, frozenset({"block"}))
        return cls(HalfBlock.from_wire(m["block"], f"{cls.TYPE}.block"))


@dataclass(frozen=True)
class Agree:
    """Requester -> worker: my signed agreement to your proposal."""

    TYPE: ClassVar[str] = "ledger.agree"
    block: HalfBlock

    def to_wire(self) -> Wire:
        return {"block": self.block.to_wire()}

    @classmethod
    def from_wire(cls, obj: object) -> Agree:
        m = as_map(obj, cls.TYPE, frozenset({"block"}))
        return cls(HalfBlock.from_wire(m["block"], f"{cls.TYPE}.block"))


@dataclass(frozen=True)
class Refuse:
    """Either side: I will not take part in this exchange, and why (for the peer's log/user)."""

    TYPE: ClassVar[str] = "ledger.refuse"
    job_id: str
    reason: str

    def __post_init__(self) -> None:
        # A reason built locally from a long error is cut rather than refused: it is only prose.
        if len(self.reason.encode()) > MAX_REASON_BYTES:
            object.__setattr__(
                self, "reason", self.reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
            )

    def to_wire(self) -> Wire:
        return {"job": self.job_id, "reason": self.reason}

    @classmethod
    def from_wire(cls, obj: object) -> Refuse:
        m = as_map(obj, cls.TYPE, frozenset({"job", "reason"}))
        return cls(
            get_str(m, "job", cls.TYPE, MAX_JOB_ID_BYTES),
            get_str(m, "reason", cls.TYPE, MAX_REASON_BYTES),
        )


@dataclass(frozen=True)
class ChainRequest:
    """Send me the chain of `public_key` after sequence `since` (at most `limit` blocks), and the
    agreements you now hold for its proposals `pending` (at or before `since`, which were still
    waiting for theirs when I last asked), so my tally of that chain catches up."""

    TYPE: ClassVar[str] = "ledger.chain-request"
    public_key: bytes
    since: int = 0
    limit: int = MAX_PAGE_BLOCKS
    pending: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.public_key) != KEY_SIZE or not 0 <= self.since <= MAX_SEQUENCE:
            raise ValueError("bad chain request")
        if not 1 <= self.limit <= MAX_PAGE_BLOCKS:
            raise ValueError(f"limit must be within [1, {MAX_PAGE_BLOCKS}]")
        if len(self.pending) > MAX_PENDING or any(not 1 <= s <= self.since for s in self.pending):
            raise ValueError(f"at most {MAX_PENDING} pending sequences, each at most `since`")

    def to_wire(self) -> Wire:
        return {
            "pk": self.public_key,
            "since": self.since,
            "limit": self.limit,
            "pending": list(self.pending),
        }

    @classmethod
    def from_wire(cls, obj: object) -> ChainRequest:
        what = cls.TYPE
        m = as_map(obj, what, frozenset({"pk", "since", "limit", "pending"}))
        since = get_int(m, "since", what, 0, MAX_SEQUENCE)
        pending = get_list(m, "pending", what, MAX_PENDING)
        try:
            return cls(
                get_bytes(m, "pk", what, KEY_SIZE),
                since,
                get_int(m, "limit", what, 1, MAX_PAGE_BLOCKS),
                tuple(get_int({"s": s}, "s", f"{what}.pending", 1, since) for s in pending),
            )
        except ValueError as exc:
            raise MalformedMessage(f"{what}: {exc}") from None


@dataclass(frozen=True)
class ChainPage:
    """Blocks `since+1...` of one chain, the counterparty halves held for them, and the head.

    `linked` holds, for each proposal in `blocks`, its agreement if the sender has it, for each
    agreement, the proposal it links to, and the agreements asked for in the request's `pending`.
    `head` is the last sequence the sender holds for that chain, so the asker knows whether to ask
    again (`more`).
    """

    TYPE: ClassVar[str] = "ledger.chain-page"
    public_key: bytes
    since: int
    blocks: tuple[HalfBlock, ...]
    linked: tuple[HalfBlock, ...]
    head: int

    def __post_init__(self) -> None:
        if len(self.blocks) > MAX_PAGE_BLOCKS or len(self.linked) > MAX_LINKED:
            raise ValueError(f"a page holds at most {MAX_PAGE_BLOCKS} blocks, {MAX_LINKED} halves")

    @property
    def more(self) -> bool:
        last = self.blocks[-1].sequence if self.blocks else self.since
        return self.head > last

    def after(self, sequence: int) -> ChainPage:
        """The same page without its blocks up to `sequence` (which the reader holds already)
        and without the counterparty halves that went with them."""
        if sequence <= self.since:
            return self
        blocks = tuple(b for b in self.blocks if b.sequence > sequence)
        kept = {b.sequence for b in blocks}
        # An agreement block of this chain links to a proposal on another; a proposal block is
        # answered by an agreement on another that links back to it.
        proposals = {(b.link_public_key, b.link_sequence) for b in blocks if not b.is_proposal}

        def goes_with_a_kept_block(half: HalfBlock) -> bool:
            if half.is_proposal:
                return half.position in proposals
            return half.link_public_key == self.public_key and half.link_sequence in kept

        linked = tuple(h for h in self.linked if goes_with_a_kept_block(h))
        return ChainPage(self.public_key, sequence, blocks, linked, self.head)

    def to_wire(self) -> Wire:
        return {
            "pk": self.public_key,
            "since": self.since,
            "blocks": [b.to_wire() for b in self.blocks],
            "linked": [b.to_wire() for b in self.linked],
            "head": self.head,
        }

    @classmethod
    def from_wire(cls, obj: object) -> ChainPage:
        what = cls.TYPE
        m = as_map(obj, what, frozenset({"pk", "since", "blocks", "linked", "head"}))
        return cls(
            public_key=get_bytes(m, "pk", what, KEY_SIZE),
            since=get_int(m, "since", what, 0, MAX_SEQUENCE),
            blocks=_blocks(m, "blocks", what, MAX_PAGE_BLOCKS),
            linked=_blocks(m, "linked", what, MAX_LINKED),
            head=get_int(m, "head", what, 0, MAX_SEQUENCE),
        )


@dataclass(frozen=True)
class Heads:
    """The last block of some chains (the sender's own first): a fork shows up as soon as two
    nodes compare a head with the block they hold at that position."""

    TYPE: ClassVar[str] = "ledger.heads"
    heads: tuple[HalfBlock, ...]

    def __post_init__(self) -> None:
        if len(self.heads) > MAX_HEADS:
            raise ValueError(f"at most {MAX_HEADS} heads per message")

    def to_wire(self) -> Wire:
        return {"heads": [h.to_wire() for h in self.heads]}

    @classmethod
    def from_wire(cls, obj: object) -> Heads:
        m = as_map(obj, cls.TYPE, frozenset({"heads"}))
        return cls(_blocks(m, "heads", cls.TYPE, MAX_HEADS))


@dataclass(frozen=True)
class ForkProofs:
    """Proofs of double-spending the sender holds (each checked on decoding)."""

    TYPE: ClassVar[str] = "ledger.fork-proofs"
    proofs: tuple[ForkProof, ...]

    def __post_init__(self) -> None:
        if len(self.proofs) > MAX_FORK_PROOFS:
            raise ValueError(f"at most {MAX_FORK_PROOFS} proofs per message")

    def to_wire(self) -> Wire:
        return {"proofs": [p.to_wire() for p in self.proofs]}

    @classmethod
    def from_wire(cls, obj: object) -> ForkProofs:
        m = as_map(obj, cls.TYPE, frozenset({"proofs"}))
        items = get_list(m, "proofs", cls.TYPE, MAX_FORK_PROOFS)
        return cls(
            tuple(ForkProof.from_wire(p, f"{cls.TYPE}.proofs[{i}]") for i, p in enumerate(items))
        )


LedgerMessage = Propose | Agree | Refuse | ChainRequest | ChainPage | Heads | ForkProofs
MESSAGE_TYPES: dict[str, Any] = {
    cls.TYPE: cls for cls in (Propose, Agree, Refuse, ChainRequest, ChainPage, Heads, ForkProofs)
}


def encode_message(msg: LedgerMessage) -> bytes:
    return pack({"t": msg.TYPE, "v": MESSAGE_VERSION, **msg.to_wire()})


def decode_message(data: bytes, expected: tuple[type, ...] | None = None) -> LedgerMessage:
    """The message in `data`; MalformedMessage (the sender's fault) for anything else, including
    a valid message of a type not in `expected`."""
    m = unpack(data)
    type_name = m.pop("t", None)
    version = m.pop("v", None)
    cls = MESSAGE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise MalformedMessage(f"unknown ledger message type {str(type_name)[:64]!r}")
    if expected is not None and cls not in expected:
        raise MalformedMessage(f"unexpected ledger message {type_name!r} here")
    if version != MESSAGE_VERSION or type(version) is not int:
        raise MalformedMessage(f"{type_name} version {version!r} unsupported")
    try:
        msg: LedgerMessage = cls.from_wire(m)
    except ValueError as exc:  # cross-field rules in __post_init__
        raise MalformedMessage(f"{type_name}: {exc}") from None
    return msg
