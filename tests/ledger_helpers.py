"""Helpers for the ledger tests: fixed identities, hand-made exchanges and chains, re-signing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from ledger.block import HalfBlock, JobLimits, Signer, sign_block
from ledger.exchange import make_agreement, make_proposal
from ledger.validate import ChainVerifier, Problem
from rainnet.identity import Identity

LIMITS = JobLimits(cpus_milli=2000, gpus=0, wall_ms=600_000)  # 2 CPUs for 10 minutes
RESULT = bytes(range(32))


def identity(n: int) -> Identity:
    """A fixed identity per number, so failures are reproducible."""
    return Identity.from_seed(bytes([n + 1]) * 32)


def exchange(
    worker: Identity,
    worker_head: HalfBlock | None,
    requester: Identity,
    requester_head: HalfBlock | None,
    job: str,
    cpu_ms: int = 1500,
    gpu_ms: int = 0,
    limits: JobLimits = LIMITS,
) -> tuple[HalfBlock, HalfBlock]:
    """One complete exchange made by hand: (proposal, agreement)."""
    proposal = make_proposal(
        worker,
        worker_head,
        requester=requester.public_raw,
        job_id=job,
        cpu_ms=cpu_ms,
        gpu_ms=gpu_ms,
        limits=limits,
        result_hash=RESULT,
        time_ms=1_700_000_000_000,
    )
    return proposal, make_agreement(requester, requester_head, proposal)


class World:
    """Chains of several identities built by hand, exchange by exchange (no storage)."""

    def __init__(self, people: Sequence[Identity]) -> None:
        self.people = list(people)
        self.chains: dict[bytes, list[HalfBlock]] = {p.public_raw: [] for p in people}

    def head(self, who: Identity) -> HalfBlock | None:
        chain = self.chains[who.public_raw]
        return chain[-1] if chain else None

    def trade(self, worker: Identity, requester: Identity, job: str, cpu_ms: int = 1500) -> None:
        p, a = exchange(worker, self.head(worker), requester, self.head(requester), job, cpu_ms)
        self.chains[worker.public_raw].append(p)
        self.chains[requester.public_raw].append(a)

    def all_blocks(self) -> list[HalfBlock]:
        return [b for chain in self.chains.values() for b in chain]


def halves_for(
    chain: Iterable[HalfBlock], others: Iterable[HalfBlock]
) -> tuple[dict[tuple[bytes, int], HalfBlock], dict[int, HalfBlock]]:
    """The `proposals` and `agreements` maps ChainVerifier.feed wants, from blocks we hold."""
    chain = list(chain)
    if not chain:
        return {}, {}
    pk = chain[0].public_key
    by_pos = {b.position: b for b in others}
    proposals = {}
    agreements = {}
    for b in others:
        if not b.is_proposal and b.link_public_key == pk:
            agreements[b.link_sequence] = b
    for b in chain:
        if not b.is_proposal and (b.link_public_key, b.link_sequence) in by_pos:
            proposals[(b.link_public_key, b.link_sequence)] = by_pos[
                (b.link_public_key, b.link_sequence)
            ]
    return proposals, agreements


def check_chain(
    pk: bytes, chain: Sequence[HalfBlock], others: Iterable[HalfBlock]
) -> tuple[Problem | None, ChainVerifier]:
    proposals, agreements = halves_for(chain, others)
    verifier = ChainVerifier(pk)
    return verifier.feed(chain, proposals, agreements), verifier


def forge(block: HalfBlock, **changes: Any) -> HalfBlock:
    """`block` with fields changed and its old signature kept (as if edited in the database)."""
    return dataclasses.replace(block, **changes)


def resign(block: HalfBlock, signer: Signer, **changes: Any) -> HalfBlock:
    """`block` with fields changed and signed again by `signer`."""
    b = dataclasses.replace(block, **changes)
    return sign_block(
        signer,
        sequence=b.sequence,
        previous_hash=b.previous_hash,
        link_public_key=b.link_public_key,
        link_sequence=b.link_sequence,
        link_hash=b.link_hash,
        transaction=b.transaction,
        public_key=b.public_key,
    )
