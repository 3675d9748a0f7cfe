"""The ledger's error types, each saying whose fault it is.

A node acts differently on the two kinds: a `RemoteFault` means a peer sent something wrong (a
malformed message, a bad signature, a fork, a job beyond its credit), so the node refuses that
peer's request, may tell it why, and carries on; a `LocalFault` means this node's own state or
caller is wrong (a corrupt database, a ledger opened with another identity, a misuse of the API),
which no peer can fix and which the operator must see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ledger.fork import ForkProof
    from ledger.validate import Problem


class LedgerError(Exception):
    """Base of every ledger error; `fault` is "remote" or "local"."""

    fault: ClassVar[str] = "local"


class RemoteFault(LedgerError):
    """A peer sent something we must refuse; the peer is at fault, this node keeps running."""

    fault = "remote"


class LocalFault(LedgerError):
    """This node's own ledger or caller is wrong; no peer caused it."""

    fault = "local"


# --- the remote's fault ---------------------------------------------------------------------------


class MalformedMessage(RemoteFault):
    """A message or block from the network is not msgpack, is too big, or has bad fields."""


class InvalidBlock(RemoteFault):
    """A well-formed block or chain from a peer breaks a rule (signature, link, amount...)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.describe())
        self.problem = problem


class ExchangeRefused(RemoteFault):
    """A proposal or agreement does not fit the exchange it claims to belong to."""


class ForkDetected(RemoteFault):
    """A peer signed two different blocks with the same sequence number (proof kept)."""

    def __init__(self, proof: ForkProof) -> None:
        super().__init__(proof.describe())
        self.proof = proof


class OffenderRefused(RemoteFault):
    """We hold a fork proof against this peer, so we deal with it no more."""


class BelowFloor(RemoteFault):
    """The requester's verified balance would go below the floor if this job ran."""


# --- our own fault -------------------------------------------------------------------------------


class LedgerCorrupt(LocalFault):
    """Our own database holds a block that fails validation (altered, truncated, or a bug)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.describe())
        self.problem = problem


class WrongIdentity(LocalFault):
    """The ledger database belongs to another identity than the one opening it."""


class LedgerMisuse(LocalFault):
    """The caller asked for something the ledger's rules forbid (a bug on this node)."""
