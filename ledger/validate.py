"""Validation of half-blocks and chains: pure functions of the blocks, no storage, no network.

Rules for the chain of key K (each broken rule is a `Problem` naming the first bad block):
  - each block is K's, at sequence 1, 2, 3... with no gap, and its previous_hash is the hash of
    K's block before it (GENESIS_HASH for #1);
  - no block links to K itself, a proposal has link_sequence 0 and an empty link_hash, and the
    claimed CPU/GPU time fits the job's limits (cpus x wall time, gpus x wall time);
  - every agreement of K names a proposal we hold ("missing half" otherwise) whose hash is its
    link_hash, whose requester is K and whose transaction is identical;
  - every agreement held for one of K's proposals is a valid agreement of that proposal, signed
    by the requester;
  - K has one proposal, and one agreement, per (counterparty, job id): a job is paid once.

Signatures. A block's hash covers its signature, so each previous_hash commits to all of K's
earlier blocks, signatures included; a valid signature on the last block of a contiguous run
therefore authenticates the whole run (as a signed tree head does in Certificate Transparency).
So a run is checked with one signature of K plus one per counterparty half (the agreements are
what `earned` rests on; the proposals K agreed to are bound by K's signed link_hash already, and
are checked so that nothing unsigned gets stored, see ChainVerifier). Only when something fails
are K's blocks checked one by one, to name the first bad block exactly. Blocks that arrive alone
(a proposal, an agreement, a head) are checked on their own with `block_problem`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ledger.balance import Balance
from ledger.block import GENESIS_HASH, HalfBlock
from ledger.units import format_credits
from rainnet.identity import peer_id_from_public_bytes


@dataclass(frozen=True, slots=True)
class Problem:
    """The first rule a chain breaks: which block, and why."""

    public_key: bytes
    sequence: int
    reason: str

    def describe(self) -> str:
        return (
            f"block #{self.sequence} of {peer_id_from_public_bytes(self.public_key)}: {self.reason}"
        )


def shape_problem(block: HalfBlock) -> str | None:
    """Rules about a block on its own, apart from its signature."""
    if block.link_public_key == block.public_key:
        return "links to its own key (an exchange needs two parties)"
    if block.is_proposal and block.link_hash != GENESIS_HASH:
        return "a proposal must have an empty link_hash"
    if block.sequence == 1 and block.previous_hash != GENESIS_HASH:
        return "block #1 must have the genesis previous_hash"
    tx = block.transaction
    if not tx.within_limits():
        lim = tx.limits
        return (
            f"claims {format_credits(tx.cpu_ms)} CPU-s and {format_credits(tx.gpu_ms)} GPU-s, "
            f"beyond the job's limits ({format_credits(lim.cpus_milli)} CPUs, "
            f"{lim.gpus} GPUs, {format_credits(lim.wall_ms)} s)"
        )
    return None


def block_problem(block: HalfBlock) -> str | None:
    """Every rule a lone block can be checked against, signature included."""
    return shape_problem(block) or (None if block.signature_ok() else "signature does not verify")


def link_problem(proposal: HalfBlock, agreement: HalfBlock) -> str | None:
    """Why `agreement` is not the agreement of `proposal` (None when the two halves match)."""
    if not proposal.is_proposal:
        return f"block #{proposal.sequence} it links to is not a proposal"
    if agreement.is_proposal:
        return "is a proposal, not an agreement"
    if (agreement.link_public_key, agreement.link_sequence) != proposal.position:
        return "links to another block than the proposal"
    if agreement.public_key != proposal.link_public_key:
        return "is signed by another key than the proposal's requester"
    if agreement.link_hash != proposal.hash:
        return "link_hash is not the hash of the proposal"
    if agreement.transaction != proposal.transaction:
        return "transaction differs from the proposal's"
    return None


# Signature checks release the GIL (cryptography's Rust/OpenSSL code), so a few threads verify a
# long chain's counterparty halves in parallel; below this many, threads cost more than they save.
_PARALLEL_MIN = 256
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            workers = max(1, min(4, os.cpu_count() or 1))
            _executor = ThreadPoolExecutor(workers, thread_name_prefix="ledger-verify")
        return _executor


def _check_part(blocks: Sequence[HalfBlock]) -> list[bool]:
    return [b.signature_ok() for b in blocks]


def submit_signatures(blocks: Sequence[HalfBlock]) -> Callable[[], list[bool]]:
    """Start checking each block's own signature; the returned function gives the results, in
    order. Many blocks are checked on worker threads, so the caller can work meanwhile."""
    if len(blocks) < _PARALLEL_MIN:
        return lambda: _check_part(blocks)
    pool = _pool()
    step = max(64, len(blocks) // (4 * pool._max_workers))
    futures = [pool.submit(_check_part, blocks[i : i + step]) for i in range(0, len(blocks), step)]
    return lambda: [ok for f in futures for ok in f.result()]


def signatures_ok(blocks: Sequence[HalfBlock]) -> list[bool]:
    """Each block's own signature check, in order (in parallel when there are many)."""
    return submit_signatures(blocks)()


class ChainVerifier:
    """Checks one key's chain run by run, in order, and tallies its balance as it goes.

    Start it at #1 (`tip=None`) or just after a block already verified (`tip`, with the balance
    tallied so far). `feed` takes the next run of blocks with the counterparty halves we hold for
    them and returns the first Problem, or None; after a Problem it refuses further runs.
    Job uniqueness is checked among the blocks this verifier has seen (storage enforces it across
    resumptions with a unique index).
    """

    def __init__(
        self,
        public_key: bytes,
        tip: HalfBlock | None = None,
        balance: Balance | None = None,
        *,
        check_proposal_signatures: bool = True,
    ) -> None:
        if tip is not None and tip.public_key != public_key:
            raise ValueError("tip belongs to another key")
        # The proposals this chain agreed to are bound by its own signed link_hash, so their own
        # signatures do not change its balance; they are still checked on blocks from the network
        # so that we never store a block whose signature does not hold (a fake "proposal of W"
        # planted by another peer could otherwise stand in the way of W's real block). An audit
        # of our database may skip them: they were checked when they came in.
        self.check_proposal_signatures = check_proposal_signatures
        self.public_key = public_key
        self.tip = tip
        self.balance = balance or Balance()
        self.problem: Problem | None = None
        self._broken = False  # a begun run broke a rule; its finish names the problem
        self._jobs: dict[tuple[bytes, str, bool], int] = {}

    @property
    def next_sequence(self) -> int:
        return 1 if self.tip is None else self.tip.sequence + 1

    def feed(
        self,
        blocks: Sequence[HalfBlock],
        proposals: Mapping[tuple[bytes, int], HalfBlock],
        agreements: Mapping[int, HalfBlock],
    ) -> Problem | None:
        """Check `blocks` (the next run of this chain); the first Problem, or None.

        `proposals` maps (key, sequence) to the proposals this chain's agreements link to;
        `agreements` maps the sequence of each of this chain's proposals to the agreement we hold
        for it (a proposal without one is pending, worth nothing yet).
        """
        return self.begin(blocks, proposals, agreements)()

    def begin(
        self,
        blocks: Sequence[HalfBlock],
        proposals: Mapping[tuple[bytes, int], HalfBlock],
        agreements: Mapping[int, HalfBlock],
    ) -> Callable[[], Problem | None]:
        """`feed` in two steps, so a long chain's signatures (worker threads) overlap the walk
        of its next run (this thread) as far as the GIL lets them (the threads need it back
        between two signatures): the rules that need no signature are checked now, and
        the returned function waits for the signatures and gives the run's result. Runs may be
        begun before earlier ones finish, but must be finished in the order they were begun;
        the balance and tip count a begun run until its end says otherwise."""
        if self.problem is not None or self._broken or not blocks:
            return lambda: self.problem
        pk = self.public_key
        # Signatures go out first: checked on worker threads while this thread walks the run.
        wanted = list(agreements.values())
        if self.check_proposal_signatures:
            wanted += proposals.values()
        wanted.append(blocks[-1])  # the run's last block vouches for the whole run
        signatures = submit_signatures(wanted)
        found: Problem | None = None
        expected = self.next_sequence
        prev_hash = GENESIS_HASH if self.tip is None else self.tip.hash
        earned = spent = pending = exchanges = 0
        new_jobs: dict[tuple[bytes, str, bool], int] = {}
        # (sequence of our block, the counterparty half whose signature must hold, what it is)
        halves: list[tuple[int, HalfBlock, str]] = []
        checked = 0
        for block in blocks:
            reason = None
            at = block.sequence
            if block.public_key != pk:
                reason, at = "belongs to another key's chain", expected
            elif block.sequence > expected:
                # Name the first block that is not there, as a deleted row would be.
                reason = f"missing (the chain goes from #{expected - 1} to #{block.sequence})"
                at = expected
            elif block.sequence < expected:
                reason = f"repeats or reorders the chain (expected #{expected})"
            elif block.previous_hash != prev_hash:
                reason = f"previous_hash is not the hash of #{expected - 1}"
            else:
                reason = shape_problem(block)
            if reason is None:
                tx = block.transaction
                job = (block.link_public_key, tx.job_id, block.is_proposal)
                earlier = self._jobs.get(job, new_jobs.get(job))
                if earlier is not None:
                    reason = f"job {tx.job_id!r} with this peer was already settled in #{earlier}"
                new_jobs[job] = block.sequence
            if reason is None and block.is_proposal:
                agreement = agreements.get(block.sequence)
                if agreement is None:
                    pending += block.amount_milli
                else:
                    why = link_problem(block, agreement) or shape_problem(agreement)
                    if why is not None:
                        reason = f"its agreement #{agreement.sequence} {why}"
                    else:
                        halves.append((block.sequence, agreement, "agreement"))
                        earned += block.amount_milli
                        exchanges += 1
            elif reason is None:
                proposal = proposals.get((block.link_public_key, block.link_sequence))
                if proposal is None:
                    reason = (
                        f"missing half: the proposal #{block.link_sequence} of "
                        f"{peer_id_from_public_bytes(block.link_public_key)} it agrees to "
                        "is not held"
                    )
                else:
                    why = link_problem(proposal, block)
                    if why is not None:
                        reason = f"agreement {why}"
                    elif self.check_proposal_signatures:
                        halves.append((block.sequence, proposal, "proposal"))
                    spent += block.amount_milli
                    exchanges += 1
            if reason is not None:
                found = Problem(pk, at, reason)
                break
            prev_hash = block.hash
            expected += 1
            checked += 1

        run = blocks[:checked]
        if found is None:
            # Counted now, so the next run can begin from here; undone by a bad signature
            # below (which sets self.problem, and nothing counts after a problem).
            self._jobs.update(new_jobs)
            self.tip = run[-1]
            b = self.balance
            self.balance = Balance(
                earned_milli=b.earned_milli + earned,
                spent_milli=b.spent_milli + spent,
                pending_milli=b.pending_milli + pending,
                exchanges=b.exchanges + exchanges,
                blocks=b.blocks + len(run),
            )
        else:
            self._broken = True

        def finish() -> Problem | None:
            if self.problem is not None:
                return self.problem
            results = dict(zip(map(id, wanted), signatures(), strict=True))
            halves_ok = [results[id(h)] for _, h, _ in halves]
            if found is None and all(halves_ok) and results[id(blocks[-1])]:
                return None
            self.problem = self._diagnose(blocks, checked, found, halves, halves_ok)
            return self.problem

        return finish

    def _diagnose(
        self,
        blocks: Sequence[HalfBlock],
        checked: int,
        found: Problem | None,
        halves: list[tuple[int, HalfBlock, str]],
        halves_ok: list[bool],
    ) -> Problem:
        """The first bad block of a run that failed: our blocks are checked one by one. A block
        whose own signature fails comes first (it is not what its key signed); then a bad half."""
        pk = self.public_key
        candidates: list[Problem] = []
        if found is not None:
            candidates.append(found)
        # The block that broke a rule is checked too: a bad signature is the root cause there.
        suspects = [b for b in blocks[: checked + 1] if b.public_key == pk]
        for block, good in zip(suspects, signatures_ok(suspects), strict=True):
            if not good:
                candidates.append(Problem(pk, block.sequence, "signature does not verify"))
                break
        for (seq, half, what), good in zip(halves, halves_ok, strict=True):
            if not good:
                candidates.append(
                    Problem(
                        pk,
                        seq,
                        f"its {what} (#{half.sequence} of "
                        f"{peer_id_from_public_bytes(half.public_key)}) has a bad signature",
                    )
                )
                break
        if not candidates:  # cannot happen (something above failed), but never pass a bad run
            candidates.append(Problem(pk, blocks[-1].sequence, "does not verify"))
        # Ties at one sequence: a bad signature explains any other symptom of that block.
        candidates.sort(key=lambda p: (p.sequence, p.reason != "signature does not verify"))
        return candidates[0]
