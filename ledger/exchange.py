"""The exchange between a worker and a requester, as a sans-io state machine.

  worker                                   requester
  ------                                   ---------
  job done, usage measured by the sandbox
  make_proposal() -> store -> send  ---->  check_proposal(); make_agreement() -> store -> send
  check_agreement(); store  <-------------
  release the outputs  ------------------> the outputs must hash to the signed result_hash
                                           (node.jobs.core.results, checked file by file)

The worker withholds the outputs until it holds the requester's countersignature, and the
requester countersigns only a hash of outputs it has not seen yet; a result that then fails to
match the hash the worker signed is proof (to the requester) that the worker cheated.

States of one exchange, from the worker's side: PROPOSED (its half signed and stored, outputs
withheld) -> AGREED (both halves stored: release). Every step is idempotent so that any message may
be lost or repeated: a repeated proposal gets the same agreement back, a repeated agreement changes
nothing, and a *different* second agreement for one proposal is refused. Nothing here stores or
sends; ledger.service does that around these functions, committing each block before its
signature leaves the process.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ledger.block import GENESIS_HASH, HalfBlock, JobLimits, Signer, Transaction, sign_block
from ledger.errors import ExchangeRefused, ForkDetected, InvalidBlock, LedgerMisuse
from ledger.fork import fork_between
from ledger.validate import Problem, block_problem, link_problem, shape_problem


class ExchangeState(enum.Enum):
    PROPOSED = "proposed"  # the worker's half exists; outputs are withheld
    AGREED = "agreed"  # both halves exist; the worker may release the outputs


@dataclass(frozen=True)
class Exchange:
    """One exchange as far as it has got."""

    proposal: HalfBlock
    agreement: HalfBlock | None = None

    @property
    def state(self) -> ExchangeState:
        return ExchangeState.PROPOSED if self.agreement is None else ExchangeState.AGREED

    @property
    def may_release(self) -> bool:
        """Whether the worker may hand over the outputs (it holds the countersignature)."""
        return self.agreement is not None

    @property
    def worker(self) -> bytes:
        return self.proposal.public_key

    @property
    def requester(self) -> bytes:
        return self.proposal.link_public_key

    @property
    def job_id(self) -> str:
        return self.proposal.transaction.job_id

    @property
    def amount_milli(self) -> int:
        return self.proposal.amount_milli

    def settle(self, agreement: HalfBlock, *, signature_checked: bool = False) -> Exchange:
        """The exchange once `agreement` is applied (RemoteFault if it does not fit).

        Idempotent: the agreement already held gives back this exchange unchanged.
        """
        check_agreement(self.proposal, agreement, signature_checked=signature_checked)
        if self.agreement is None:
            return Exchange(self.proposal, agreement)
        if self.agreement.body == agreement.body:
            return self
        proof = fork_between(self.agreement, agreement)
        if proof is not None:
            raise ForkDetected(proof)
        raise ExchangeRefused(
            f"job {self.job_id!r} already has agreement #{self.agreement.sequence}; "
            f"a second one (#{agreement.sequence}) would pay it twice"
        )


def next_position(head: HalfBlock | None) -> tuple[int, bytes]:
    """Sequence and previous_hash of the block after `head` (the chain's last block)."""
    return (1, GENESIS_HASH) if head is None else (head.sequence + 1, head.hash)


def make_proposal(
    signer: Signer,
    head: HalfBlock | None,
    *,
    requester: bytes,
    job_id: str,
    cpu_ms: int,
    gpu_ms: int,
    limits: JobLimits,
    result_hash: bytes,
    time_ms: int,
    public_key: bytes | None = None,
) -> HalfBlock:
    """The worker's half, after `head` in its chain.

    Usage is capped at what the limits allow: the sandbox's accounting can overshoot the limit by a
    scheduler tick, and the requester refuses any claim beyond the limits, so the worker claims
    the most it may rather than lose the whole exchange.
    """
    pk = signer.public_raw if public_key is None else public_key
    if requester == pk:
        raise LedgerMisuse("a node cannot run its own job for credit")
    sequence, previous = next_position(head)
    tx = Transaction(
        job_id=job_id,
        cpu_ms=min(cpu_ms, limits.max_cpu_ms),
        gpu_ms=min(gpu_ms, limits.max_gpu_ms),
        limits=limits,
        result_hash=result_hash,
        time_ms=time_ms,
    )
    return sign_block(
        signer,
        sequence=sequence,
        previous_hash=previous,
        link_public_key=requester,
        link_sequence=0,
        link_hash=GENESIS_HASH,
        transaction=tx,
        public_key=pk,
    )


def check_proposal(
    proposal: HalfBlock,
    requester: bytes,
    expected_limits: JobLimits | None = None,
    *,
    signature_checked: bool = False,
) -> None:
    """The requester's checks on a proposal it received (RemoteFault if it must refuse it).

    `expected_limits` are the limits the requester gave the job: a worker may not claim that the
    job was allowed more than that. `signature_checked`: the caller already verified the
    signature (in a parallel batch), so it is not verified twice.
    """
    if not proposal.is_proposal:
        raise ExchangeRefused(f"block {proposal.short()} is not a proposal")
    if proposal.link_public_key != requester:
        raise ExchangeRefused(f"proposal {proposal.short()} is addressed to another requester")
    why = shape_problem(proposal) if signature_checked else block_problem(proposal)
    if why is not None:
        raise InvalidBlock(Problem(proposal.public_key, proposal.sequence, why))
    if expected_limits is not None and proposal.transaction.limits != expected_limits:
        raise ExchangeRefused(
            f"proposal {proposal.short()} states limits {proposal.transaction.limits}, "
            f"but job {proposal.transaction.job_id!r} was given {expected_limits}"
        )


def make_agreement(
    signer: Signer, head: HalfBlock | None, proposal: HalfBlock, public_key: bytes | None = None
) -> HalfBlock:
    """The requester's half for `proposal` (already checked), after `head` in its chain."""
    pk = signer.public_raw if public_key is None else public_key
    if proposal.link_public_key != pk:
        raise LedgerMisuse("cannot agree to a proposal addressed to someone else")
    sequence, previous = next_position(head)
    return sign_block(
        signer,
        sequence=sequence,
        previous_hash=previous,
        link_public_key=proposal.public_key,
        link_sequence=proposal.sequence,
        link_hash=proposal.hash,
        transaction=proposal.transaction,
        public_key=pk,
    )


def check_agreement(
    proposal: HalfBlock, agreement: HalfBlock, *, signature_checked: bool = False
) -> None:
    """The worker's checks on an agreement for its `proposal` (RemoteFault if it must refuse it)."""
    why = link_problem(proposal, agreement)
    if why is not None:
        raise ExchangeRefused(f"agreement {agreement.short()} {why}")
    why = shape_problem(agreement) if signature_checked else block_problem(agreement)
    if why is not None:
        raise InvalidBlock(Problem(agreement.public_key, agreement.sequence, why))
