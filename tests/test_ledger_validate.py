"""Validation of hand-made chains: good, altered amount, broken link, missing half, forged
signature, fork, and the other chain rules."""

from __future__ import annotations

import dataclasses

import pytest

from ledger.block import GENESIS_HASH, JobLimits
from ledger.fork import ForkProof, fork_between
from ledger.validate import ChainVerifier, block_problem, link_problem
from tests.ledger_helpers import World, check_chain, forge, halves_for, identity, resign

A, B, C = identity(0), identity(1), identity(2)


@pytest.fixture
def world() -> World:
    """A works for B twice, B for A once, C for A once: chains of 3, 3 and 1 blocks...
    A: [P(B) #1, A(B) #2, P(B) #3, A(C) #4], B: [A #1, P #2, A #3], C: [P #1]."""
    w = World([A, B, C])
    w.trade(A, B, "job-1", 1500)
    w.trade(B, A, "job-2", 700)
    w.trade(A, B, "job-3", 2500)
    w.trade(C, A, "job-4", 100)
    return w


def test_good_chains_verify_and_balance(world: World) -> None:
    others = world.all_blocks()
    totals = 0
    for person in (A, B, C):
        chain = world.chains[person.public_raw]
        problem, verifier = check_chain(person.public_raw, chain, others)
        assert problem is None
        assert verifier.balance.blocks == len(chain)
        totals += verifier.balance.balance_milli
    _, va = check_chain(A.public_raw, world.chains[A.public_raw], others)
    assert va.balance.earned_milli == 1500 + 2500
    assert va.balance.spent_milli == 700 + 100
    assert totals == 0


def test_good_chain_checked_in_runs(world: World) -> None:
    """Verifying run by run (as pages arrive) gives the same result as all at once."""
    chain = world.chains[A.public_raw]
    others = world.all_blocks()
    _, whole = check_chain(A.public_raw, chain, others)
    verifier = ChainVerifier(A.public_raw)
    for i in range(len(chain)):
        proposals, agreements = halves_for(chain[i : i + 1], others)
        assert verifier.feed(chain[i : i + 1], proposals, agreements) is None
    assert verifier.balance == whole.balance


def test_altered_amount_is_named(world: World) -> None:
    chain = list(world.chains[A.public_raw])
    tx = chain[2].transaction
    chain[2] = forge(chain[2], transaction=dataclasses.replace(tx, cpu_ms=tx.cpu_ms * 100))
    problem, _ = check_chain(A.public_raw, chain, world.all_blocks())
    assert problem is not None
    assert problem.sequence == 3
    assert "signature" in problem.reason


def test_altered_amount_of_the_head_is_named(world: World) -> None:
    chain = list(world.chains[A.public_raw])
    tx = chain[-1].transaction
    chain[-1] = forge(chain[-1], transaction=dataclasses.replace(tx, cpu_ms=tx.cpu_ms + 1))
    problem, _ = check_chain(A.public_raw, chain, world.all_blocks())
    assert problem is not None and problem.sequence == len(chain)


def test_amount_beyond_the_jobs_limits_is_refused_even_if_signed(world: World) -> None:
    """A worker cannot sign itself more than cpus x wall time."""
    small = JobLimits(cpus_milli=1000, gpus=0, wall_ms=1000)  # 1 CPU-second at most
    p = world.chains[C.public_raw][0]
    greedy = resign(p, C, transaction=dataclasses.replace(p.transaction, limits=small))
    assert greedy.transaction.cpu_ms <= small.max_cpu_ms  # 100 ms fits
    over = resign(p, C, transaction=dataclasses.replace(p.transaction, limits=small, cpu_ms=1001))
    assert block_problem(greedy) is None
    assert "beyond the job's limits" in (block_problem(over) or "")


def test_broken_link_is_named(world: World) -> None:
    """Block #3 re-signed by its owner but pointing at a made-up predecessor."""
    chain = list(world.chains[A.public_raw])
    chain[2] = resign(chain[2], A, previous_hash=bytes([7]) * 32)
    problem, _ = check_chain(A.public_raw, chain, world.all_blocks())
    assert problem is not None
    assert problem.sequence == 3
    assert "previous_hash" in problem.reason


def test_gap_and_reorder_are_named(world: World) -> None:
    chain = list(world.chains[A.public_raw])
    problem, _ = check_chain(A.public_raw, chain[:1] + chain[2:], world.all_blocks())
    assert problem is not None and problem.sequence == 2 and "missing" in problem.reason
    problem, _ = check_chain(A.public_raw, chain[1:], world.all_blocks())
    assert problem is not None and "missing" in problem.reason


def test_missing_half_of_an_agreement_is_named(world: World) -> None:
    """A's #2 agrees to B's proposal #2; without that proposal the exchange is incomplete."""
    chain = world.chains[A.public_raw]
    held = [b for b in world.all_blocks() if b.position != (B.public_raw, 2)]
    problem, _ = check_chain(A.public_raw, chain, held)
    assert problem is not None
    assert problem.sequence == 2
    assert "missing half" in problem.reason


def test_missing_agreement_makes_a_proposal_pending_not_earned(world: World) -> None:
    """Without B's countersignature, A's proposal #3 is worth nothing: no one mints credit."""
    chain = world.chains[A.public_raw]
    held = [b for b in world.all_blocks() if b.position != (B.public_raw, 3)]
    problem, verifier = check_chain(A.public_raw, chain, held)
    assert problem is None
    assert verifier.balance.earned_milli == 1500
    assert verifier.balance.pending_milli == 2500


def test_forged_signature_in_the_middle_is_named(world: World) -> None:
    """C signs a block in A's chain (and the rest of A's chain is kept): the block is named."""
    chain = list(world.chains[A.public_raw])
    tx = chain[1].transaction
    chain[1] = resign(chain[1], C, transaction=dataclasses.replace(tx, cpu_ms=1))
    problem, _ = check_chain(A.public_raw, chain, world.all_blocks())
    assert problem is not None
    assert problem.sequence == 2
    assert "signature" in problem.reason


def test_forged_chain_tail_is_named_at_its_first_block(world: World) -> None:
    """A forger rebuilds A's chain from #2 on with valid links but its own key."""
    chain = list(world.chains[A.public_raw])
    prev = chain[0].hash
    for i in range(1, len(chain)):
        chain[i] = resign(chain[i], C, previous_hash=prev)
        prev = chain[i].hash
    problem, _ = check_chain(A.public_raw, chain, world.all_blocks())
    assert problem is not None and problem.sequence == 2 and "signature" in problem.reason


def test_forged_agreement_half_is_named(world: World) -> None:
    """An agreement to A's proposal #3 signed by C instead of B earns nothing: refused."""
    chain = world.chains[A.public_raw]
    others = [b for b in world.all_blocks() if b.position != (B.public_raw, 3)]
    real = world.chains[B.public_raw][2]
    others.append(resign(real, C))  # same fields, B's key, C's signature
    problem, _ = check_chain(A.public_raw, chain, others)
    assert problem is not None
    assert problem.sequence == 3
    assert "bad signature" in problem.reason


def test_agreement_that_changes_the_transaction_does_not_match() -> None:
    w = World([A, B])
    w.trade(A, B, "j")
    proposal, agreement = w.chains[A.public_raw][0], w.chains[B.public_raw][0]
    assert link_problem(proposal, agreement) is None
    cheap = resign(agreement, B, transaction=dataclasses.replace(agreement.transaction, cpu_ms=1))
    assert "transaction differs" in (link_problem(proposal, cheap) or "")
    problem, _ = check_chain(A.public_raw, w.chains[A.public_raw], [cheap])
    assert problem is not None and problem.sequence == 1


def test_self_dealing_is_refused() -> None:
    w = World([A, B])
    w.trade(A, B, "j")
    p = w.chains[A.public_raw][0]
    selfish = resign(p, A, link_public_key=A.public_raw)
    assert "own key" in (block_problem(selfish) or "")


def test_a_job_is_paid_once_per_peer() -> None:
    w = World([A, B])
    w.trade(A, B, "same-job")
    w.trade(A, B, "same-job")
    problem, _ = check_chain(A.public_raw, w.chains[A.public_raw], w.all_blocks())
    assert problem is not None and problem.sequence == 2 and "already settled" in problem.reason


def test_first_block_must_start_at_genesis(world: World) -> None:
    chain = list(world.chains[C.public_raw])
    chain[0] = resign(chain[0], C, previous_hash=bytes([1]) * 32)
    problem, _ = check_chain(C.public_raw, chain, world.all_blocks())
    assert problem is not None and problem.sequence == 1
    assert chain[0].previous_hash != GENESIS_HASH


def test_fork_is_a_checkable_proof(world: World) -> None:
    """B signs a second, different #3 (spending elsewhere what it spent with A)."""
    honest = world.chains[B.public_raw][2]
    other = resign(honest, B, link_public_key=C.public_raw)
    proof = fork_between(honest, other)
    assert proof is not None
    assert proof.offender == B.public_raw and proof.sequence == 3
    assert proof.problem() is None
    assert fork_between(other, honest) == proof  # one fork, one proof
    assert fork_between(honest, honest) is None
    # Not proofs: a forged second block, or two blocks at different positions.
    assert fork_between(honest, forge(other, signature=bytes(64))) is None
    assert ForkProof(honest, world.chains[B.public_raw][1]).problem() is not None
    # Round trip through the wire keeps it a proof.
    assert ForkProof.from_wire(proof.to_wire()) == proof
