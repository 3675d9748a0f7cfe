"""Fork proofs: two different blocks signed by one key at one sequence number.

A chain is append-only, so a key that signs two bodies for one position has shown two histories
to two audiences, typically to spend the same credit twice. The pair of signed blocks is a proof
anyone can check with no trust in whoever relays it; a node keeps such proofs, passes them on to
the peers it deals with, and refuses the offender (see ledger.service).
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.block import HalfBlock
from ledger.codec import Wire, as_map
from ledger.errors import MalformedMessage
from rainnet.identity import peer_id_from_public_bytes

_KEYS = frozenset({"a", "b"})


@dataclass(frozen=True)
class ForkProof:
    """Two validly signed, different blocks of one key at one sequence (ordered by hash, so one
    fork always yields the same proof)."""

    first: HalfBlock
    second: HalfBlock

    @property
    def offender(self) -> bytes:
        return self.first.public_key

    @property
    def sequence(self) -> int:
        return self.first.sequence

    def problem(self) -> str | None:
        """Why this is not a proof (None when it is one)."""
        a, b = self.first, self.second
        if a.position != b.position:
            return "the two blocks are at different positions"
        if a.body == b.body:
            return "the two blocks are the same block"
        if a.hash > b.hash:
            return "the blocks are not in canonical order"
        if not a.signature_ok() or not b.signature_ok():
            return "a block's signature does not verify"
        return None

    def describe(self) -> str:
        return (
            f"{peer_id_from_public_bytes(self.offender)} signed two different blocks "
            f"#{self.sequence} (a fork: proof of double-spending)"
        )

    def to_wire(self) -> Wire:
        return {"a": self.first.to_wire(), "b": self.second.to_wire()}

    @classmethod
    def from_wire(cls, obj: object, what: str = "fork proof") -> ForkProof:
        """A proof from a peer, fully checked: a bogus proof is the sender's fault."""
        m = as_map(obj, what, _KEYS)
        proof = cls(
            HalfBlock.from_wire(m["a"], f"{what}.a"), HalfBlock.from_wire(m["b"], f"{what}.b")
        )
        why = proof.problem()
        if why is not None:
            raise MalformedMessage(f"{what} is not a proof: {why}")
        return proof


def fork_between(a: HalfBlock, b: HalfBlock) -> ForkProof | None:
    """The proof that `a` and `b` fork their key's chain, if they do and both signatures hold."""
    if a.position != b.position or a.body == b.body:
        return None
    first, second = (a, b) if a.hash <= b.hash else (b, a)
    proof = ForkProof(first, second)
    return proof if proof.problem() is None else None
