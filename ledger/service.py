"""`Ledger`: one identity's ledger, what the node calls (store + signing key + the pure core).

Each method is short, synchronous and runs in one transaction, so the node can call it from trio
with `trio.to_thread.run_sync(ledger.method, ...)`; methods that take a message return the message
to send back (or raise a RemoteFault to report to the peer, or a LocalFault). The network moves
the messages of ledger.messages; nothing here opens a socket.

Worker:     propose() -> send Propose; on Agree: accept_agreement() -> release the outputs;
            after a restart, exchange(requester, job) says which of the two to redo.
Requester:  on Propose: agree(msg, the limits it gave the job) -> send Agree, or on a
            RemoteFault send Refuse(job, str(error)).
Batches:    propose_many / agree_many / accept_agreements do the same for many exchanges in one
            transaction (one fsync), returning a result or an error per item.
Admission:  chain_request(key) -> send; on ChainPage: ingest_page(); repeat while more;
            then admit(key, limits) before running the job, by_priority() to order the queue.
Gossip:     heads() / observe_heads(), fork_proofs() / receive_fork_proofs(), on every contact;
            take_fresh_fork_proofs() for the proofs to pass on at once.

Ordering rule for crash safety: a block is signed inside the write transaction that stores it,
and returned (so sent) only after COMMIT. Retries find what the first attempt stored.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from ledger.admission import check_floor
from ledger.audit import VerifyReport, verify_store
from ledger.balance import Balance
from ledger.block import HalfBlock, JobLimits, Signer
from ledger.errors import (
    ExchangeRefused,
    ForkDetected,
    InvalidBlock,
    LedgerCorrupt,
    LedgerError,
    LedgerMisuse,
    MalformedMessage,
    OffenderRefused,
    WrongIdentity,
)
from ledger.exchange import (
    Exchange,
    check_proposal,
    make_agreement,
    make_proposal,
)
from ledger.fork import ForkProof, fork_between
from ledger.messages import (
    MAX_FORK_PROOFS,
    MAX_HEADS,
    MAX_PAGE_BLOCKS,
    MAX_PENDING,
    Agree,
    ChainPage,
    ChainRequest,
    ForkProofs,
    Heads,
    Propose,
)
from ledger.store import (
    LEDGER_FILE,
    ChainState,
    HistoryRow,
    Store,
    Txn,
    block_from_row,
)
from ledger.units import DEFAULT_FLOOR_MILLI
from ledger.validate import (
    ChainVerifier,
    Problem,
    block_problem,
    link_problem,
    signatures_ok,
)
from rainnet.identity import peer_id_from_public_bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """What a worker claims for one job it ran (the arguments of `Ledger.propose`)."""

    requester: bytes
    job_id: str
    cpu_ms: int  # milli-CPU-seconds measured by the sandbox
    gpu_ms: int
    limits: JobLimits  # the job's limits, as the requester set them
    result_hash: bytes  # the hash of the result manifest (node.jobs.core.results) to release
    time_ms: int | None = None  # default: now


@dataclass(frozen=True, slots=True)
class UnpaidClaim:
    """A claim of ours a requester has not paid (no agreement of its stored)."""

    job_id: str
    amount_milli: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class SyncResult:
    """Where a peer's chain stands after ingesting a page."""

    public_key: bytes
    verified: int  # blocks 1..verified are held and verified
    balance: Balance  # the verified balance of that prefix
    more: bool  # the peer holds more: ask again with chain_request()


def _now_ms() -> int:
    return int(time.time() * 1000)


class Ledger:
    """The ledger of the identity `signer`, stored in `store`."""

    def __init__(self, store: Store, signer: Signer, floor_milli: int) -> None:
        self._store = store
        self._signer = signer
        self.public_key = signer.public_raw  # computed once: Identity derives it on each access
        self.floor_milli = floor_milli

    @classmethod
    def open(
        cls,
        home: Path,
        signer: Signer,
        *,
        floor_milli: int | None = None,
        synchronous: str = "FULL",
    ) -> Ledger:
        """The ledger in `home` (created on first use). `floor_milli`, if given, is recorded so
        `rain credit` shows the floor this node applies; otherwise the recorded one is used."""
        if floor_milli is not None and floor_milli > 0:
            raise LedgerMisuse("the floor is a lowest balance: zero or below")
        store = Store(home / LEDGER_FILE, synchronous=synchronous)
        pk = signer.public_raw
        try:
            with store.write() as txn:
                owner = txn.meta("owner")
                if owner is None:
                    txn.set_meta("owner", pk)
                elif owner != pk:
                    raise WrongIdentity(
                        f"{home / LEDGER_FILE} belongs to {peer_id_from_public_bytes(owner)}, "
                        f"not to this node's identity {peer_id_from_public_bytes(pk)}"
                    )
                if floor_milli is not None:
                    txn.set_meta("floor_milli", floor_milli)
                recorded = txn.meta("floor_milli")
        except BaseException:
            store.close()
            raise
        return cls(store, signer, DEFAULT_FLOOR_MILLI if recorded is None else int(recorded))

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_bytes(self.public_key)

    # --- own chain ----------------------------------------------------------------------------

    def head(self) -> HalfBlock | None:
        with self._store.read() as txn:
            return txn.head(self.public_key)

    def balance(self) -> Balance:
        """Our balance as recorded (`verify()` checks the records)."""
        with self._store.read() as txn:
            return txn.own_balance(self.public_key)

    def history(self, limit: int = 50) -> list[HistoryRow]:
        with self._store.read() as txn:
            return txn.history(self.public_key, limit)

    # --- worker side --------------------------------------------------------------------------

    def propose(
        self,
        *,
        requester: bytes,
        job_id: str,
        cpu_ms: int,
        gpu_ms: int,
        limits: JobLimits,
        result_hash: bytes,
        time_ms: int | None = None,
    ) -> Propose:
        """Sign and store our half for `job_id`, run for `requester`; send the result.

        Idempotent: a second call for the same requester and job returns the proposal made the
        first time (the first signed claim stands), so a worker that crashed may simply retry.
        """
        claim = Claim(requester, job_id, cpu_ms, gpu_ms, limits, result_hash, time_ms)
        return _one(self.propose_many([claim]))

    def propose_many(self, claims: Sequence[Claim]) -> list[Propose | LedgerError]:
        """`propose` for several jobs in one transaction (one fsync): a result or error each."""
        me = self.public_key
        out: list[Propose | LedgerError] = []
        with self._store.write() as txn:
            head = txn.head(me)
            for claim in claims:
                try:
                    block = txn.block_for_job(me, claim.requester, claim.job_id, proposal=True)
                    if block is None:
                        block = self._new_proposal(txn, head, claim)
                        head = block
                except LedgerError as exc:
                    out.append(exc)
                else:
                    out.append(Propose(block))
        return out

    def _new_proposal(self, txn: Txn, head: HalfBlock | None, claim: Claim) -> HalfBlock:
        if txn.has_fork_proof(claim.requester):
            raise OffenderRefused(
                f"{peer_id_from_public_bytes(claim.requester)} forked its chain; we deal no more"
            )
        try:
            block = make_proposal(
                self._signer,
                head,
                requester=claim.requester,
                job_id=claim.job_id,
                cpu_ms=claim.cpu_ms,
                gpu_ms=claim.gpu_ms,
                limits=claim.limits,
                result_hash=claim.result_hash,
                time_ms=_now_ms() if claim.time_ms is None else claim.time_ms,
                public_key=self.public_key,
            )
        except ValueError as exc:
            raise LedgerMisuse(f"cannot propose job {claim.job_id!r}: {exc}") from None
        txn.insert(block)
        return block

    def accept_agreement(self, msg: Agree) -> Exchange:
        """Check and store the requester's agreement; the returned exchange `may_release`.

        Idempotent: the same agreement again returns the same exchange. RemoteFault if the
        agreement does not fit a proposal of ours (ForkDetected if it forks the requester's chain).
        """
        return _one(self.accept_agreements([msg]))

    def accept_agreements(self, msgs: Sequence[Agree]) -> list[Exchange | LedgerError]:
        """`accept_agreement` for several agreements in one transaction: an exchange or error
        each."""
        me = self.public_key
        blocks = [m.block for m in msgs]
        # Signatures are checked before taking the lock (in parallel for a big batch).
        good = signatures_ok(blocks)
        out: list[Exchange | LedgerError] = []
        with self._store.write() as txn:
            for agreement, ok in zip(blocks, good, strict=True):
                try:
                    if agreement.is_proposal or agreement.link_public_key != me:
                        raise ExchangeRefused(
                            f"block {agreement.short()} is not an agreement to us"
                        )
                    if not ok:
                        raise InvalidBlock(
                            Problem(*agreement.position, "signature does not verify")
                        )
                    out.append(self._accept_in(txn, agreement))
                except LedgerError as exc:
                    out.append(exc)
        return out

    def _accept_in(self, txn: Txn, agreement: HalfBlock) -> Exchange:
        # Raises only before writing, or after keeping a fork proof that must be kept anyway, so
        # one bad agreement in a batch leaves the others' writes whole.
        me = self.public_key
        proposal = txn.block(me, agreement.link_sequence)
        if proposal is None or not proposal.is_proposal:
            raise ExchangeRefused(
                f"agreement {agreement.short()} links to #{agreement.link_sequence}, "
                "which is no proposal of ours"
            )
        before = Exchange(proposal, txn.agreement_for(me, proposal.sequence))
        try:
            after = before.settle(agreement, signature_checked=True)
        except ForkDetected as exc:
            txn.put_fork_proof(exc.proof)
            raise
        if after is not before:
            self._place(txn, agreement)
        return after

    def exchange(self, requester: bytes, job_id: str) -> Exchange | None:
        """Our exchange with `requester` for `job_id` as stored (after a restart: resend the
        proposal if PROPOSED, release the outputs if AGREED)."""
        me = self.public_key
        with self._store.read() as txn:
            proposal = txn.block_for_job(me, requester, job_id, proposal=True)
            if proposal is None:
                return None
            return Exchange(proposal, txn.agreement_for(me, proposal.sequence))

    # --- requester side -----------------------------------------------------------------------

    def agree(
        self,
        msg: Propose,
        expected_limits: JobLimits | None = None,
        *,
        max_payees: int | None = None,
    ) -> Agree:
        """Countersign a worker's proposal for a job of ours; send the result back.

        `expected_limits` are the limits we gave the job. Idempotent: a repeated proposal gets
        the agreement we already signed for it. RemoteFault if we must refuse (send its text
        back in a Refuse). `max_payees`: how many workers may be paid for this job in all (1 for
        a plain job, K for K replicas): a job that ran again elsewhere after its worker seemed
        lost is still paid once, checked in the same transaction as the signature.
        """
        return _one(self.agree_many([(msg, expected_limits)], max_payees=max_payees))

    def agree_many(
        self,
        items: Sequence[tuple[Propose, JobLimits | None]],
        *,
        max_payees: int | None = None,
    ) -> list[Agree | LedgerError]:
        """`agree` for several proposals in one transaction (one fsync): an agreement or error
        each. Every agreement is committed before any is returned."""
        me = self.public_key
        proposals = [msg.block for msg, _ in items]
        good = signatures_ok(proposals)  # before taking the lock, in parallel for a big batch
        checked: list[LedgerError | None] = []
        for (_, limits), proposal, ok in zip(items, proposals, good, strict=True):
            try:
                if not ok:
                    raise InvalidBlock(Problem(*proposal.position, "signature does not verify"))
                check_proposal(proposal, me, limits, signature_checked=True)
            except LedgerError as exc:
                checked.append(exc)
            else:
                checked.append(None)
        out: list[Agree | LedgerError] = []
        with self._store.write() as txn:
            head = txn.head(me)
            for proposal, error in zip(proposals, checked, strict=True):
                if error is not None:
                    out.append(error)
                    continue
                try:
                    agreement = self._agree_in(txn, head, proposal, max_payees)
                except LedgerError as exc:
                    out.append(exc)
                    continue
                if head is None or agreement.sequence > head.sequence:
                    head = agreement
                out.append(Agree(agreement))
        return out

    def _agree_in(
        self, txn: Txn, head: HalfBlock | None, proposal: HalfBlock, max_payees: int | None
    ) -> HalfBlock:
        # Raises only before writing, or after keeping a fork proof (see _accept_in).
        me = self.public_key
        worker = proposal.public_key
        job = proposal.transaction.job_id
        done = txn.block_for_job(me, worker, job, proposal=False)
        if done is not None:
            if done.link_sequence == proposal.sequence and done.link_hash == proposal.hash:
                return done  # a retry: the same agreement again
            self._place(txn, proposal)  # ForkDetected if it forks the proposal we agreed to
            raise ExchangeRefused(
                f"job {job!r} was already settled by our agreement #{done.sequence} to your "
                f"proposal #{done.link_sequence}"
            )
        if txn.has_fork_proof(worker):
            raise OffenderRefused(f"{peer_id_from_public_bytes(worker)} forked its chain")
        if max_payees is not None:
            others = txn.payees_for_job(me, job) - {worker}
            if len(others) >= max_payees:
                raise ExchangeRefused(
                    f"job {job!r} was already paid to {len(others)} other worker(s)"
                )
        self._place(txn, proposal)
        agreement = make_agreement(self._signer, head, proposal, public_key=me)
        txn.insert(agreement)
        return agreement

    # --- admission ----------------------------------------------------------------------------

    def verified_state(self, public_key: bytes) -> ChainState | None:
        """How far we hold `public_key`'s chain verified, and its balance there (None: never
        fetched)."""
        with self._store.read() as txn:
            return txn.chain_state(public_key)

    def verified_balance(self, public_key: bytes) -> Balance | None:
        """Balance of the verified prefix we hold of `public_key`'s chain (None: never fetched)."""
        state = self.verified_state(public_key)
        return None if state is None else state.balance

    def unpaid(self, requester: bytes, since_ms: int, limit: int = 256) -> list[UnpaidClaim]:
        """Our claims since `since_ms` that `requester` has not paid for (proposed, not agreed:
        being settled now, held for its return, or refused), newest first."""
        with self._store.read() as txn:
            rows = txn.unpaid_claims(self.public_key, requester, since_ms, limit)
        return [UnpaidClaim(*row) for row in rows]

    def unpaid_by_newcomers(self, since_ms: int) -> int:
        """What requesters that never earned credit owe us since `since_ms` (milli-credits)."""
        with self._store.read() as txn:
            return txn.unpaid_by_newcomers(self.public_key, since_ms)

    def admit(self, requester: bytes, limits: JobLimits, exposure_milli: int = 0) -> Balance:
        """Whether we may run a job with `limits` for `requester`: its verified balance, or a
        RemoteFault saying why not (BelowFloor's message tells the user how to earn).
        `exposure_milli`: what it may already owe us (its jobs running here at their limits,
        its claims unpaid): counted against its balance too, so concurrent offers cannot each
        spend the whole floor.

        The requester's chain must have been fetched and verified first (chain_request /
        ingest_page); a chain served shorter than a block of it we already hold is refused, so a
        requester cannot hide its latest spending by sending an old prefix.
        """
        with self._store.read() as txn:
            if txn.has_fork_proof(requester):
                raise OffenderRefused(
                    f"{peer_id_from_public_bytes(requester)} forked its chain (double-spending); "
                    "its jobs are refused"
                )
            state = txn.chain_state(requester)
            known = txn.max_sequence(requester)
        if state is None:
            raise LedgerMisuse("fetch and verify the requester's chain before admitting its job")
        if known > state.verified:
            raise ExchangeRefused(
                f"your chain as sent ends at #{state.verified}, but we hold your block #{known}: "
                "send the whole chain"
            )
        check_floor(state.balance.balance_milli, limits, self.floor_milli, exposure_milli)
        return state.balance

    def is_offender(self, public_key: bytes) -> bool:
        with self._store.read() as txn:
            return txn.has_fork_proof(public_key)

    # --- chain sync ---------------------------------------------------------------------------

    def chain_request(self, public_key: bytes, limit: int = MAX_PAGE_BLOCKS) -> ChainRequest:
        """The request for the part of `public_key`'s chain we have not verified yet, and for
        the agreements of its proposals that were still pending when we verified them."""
        with self._store.read() as txn:
            state = txn.chain_state(public_key)
            if state is None:
                return ChainRequest(public_key, 0, limit)
            pending = txn.pending_proposals(public_key, state.verified, MAX_PENDING)
        return ChainRequest(public_key, state.verified, limit, tuple(pending))

    def serve_chain(self, request: ChainRequest) -> ChainPage:
        """Answer a ChainRequest: our own chain, or the verified prefix we hold of another's."""
        pk = request.public_key
        with self._store.read() as txn:
            if pk == self.public_key:
                head = txn.max_sequence(pk)
            else:
                state = txn.chain_state(pk)
                head = 0 if state is None else state.verified
            blocks, linked = _page_rows(
                txn, pk, request.since, min(head, request.since + request.limit)
            )
            for seq in request.pending:
                late = txn.agreement_for(pk, seq) if seq <= head else None
                if late is not None:
                    linked.append(late)
        return ChainPage(pk, request.since, tuple(blocks), tuple(linked), head)

    def catch_up(
        self, public_key: bytes, offered: ChainPage | None, limit: int = MAX_PAGE_BLOCKS
    ) -> ChainRequest | None:
        """Bring our verified copy of `public_key`'s chain up to the head of `offered`, a page
        its owner volunteered (with a job offer) without being asked; None if that sufficed,
        else the ChainRequest to ask it for the rest.

        The page is used only where it continues what we verified (overlap is dropped). We ask
        anyway when we never verified this chain, and when agreements to its own proposals are
        still missing from our tally (`pending`: only a request fetches those). Blocks of it we
        hold beyond the page (its agreements to our proposals, sent after it made the page: it
        settled a job of ours while offering the next) are verified from our own copy; only a
        gap before them makes us ask, since admit() refuses a chain verified short of a block we
        hold. Trusting the head the page names is otherwise no weaker than asking: either way
        the chain's owner says where it ends.
        """
        request = self.chain_request(public_key, limit)
        if offered is None or request.pending:
            return request
        if offered.public_key != public_key:
            raise MalformedMessage("the chain offered is not the requester's")
        if self.verified_state(public_key) is None:
            return request
        if offered.head > request.since:
            if not offered.since <= request.since < offered.since + len(offered.blocks):
                return request  # a gap between what we hold and the page
            if self.ingest_page(offered.after(request.since)).more:
                return self.chain_request(public_key, limit)
        if not self._verify_held(public_key):
            return self.chain_request(public_key, limit)
        return None

    def _verify_held(self, public_key: bytes) -> bool:
        """Extend our verified copy of `public_key`'s chain over the blocks of it we hold just
        beyond: True if it now reaches the last of them, False if a gap is left (they are
        agreements with us; the blocks between went to others, and only the owner has them)."""
        with self._store.read() as txn:
            state = txn.chain_state(public_key)
            if state is None:
                return False
            top = txn.max_sequence(public_key)
            if top <= state.verified:
                return True
            blocks, linked = _page_rows(txn, public_key, state.verified, top)
        if len(blocks) != top - state.verified:
            return False
        page = ChainPage(public_key, state.verified, tuple(blocks), tuple(linked), top)
        self.ingest_page(page)  # InvalidBlock / ForkDetected as for any page
        return True

    def ingest_page(self, page: ChainPage) -> SyncResult:
        """Verify a page of a peer's chain against what we hold, and store it.

        All or nothing: InvalidBlock (naming the first bad block) or ForkDetected if the page
        breaks a rule; the fork proof is kept. The verified balance is then `verified_balance()`.
        """
        pk = page.public_key
        if pk == self.public_key:
            raise ExchangeRefused("a peer cannot send us our own chain")
        with self._store.read() as txn:
            state = txn.chain_state(pk) or ChainState(0, Balance())
            tip = txn.block(pk, state.verified) if state.verified else None
            if page.since != state.verified:
                raise ExchangeRefused(
                    f"page starts after #{page.since}; we asked after #{state.verified}"
                )
            if any(b.public_key != pk for b in page.blocks):
                raise MalformedMessage("a chain page holds blocks of another key")
            # Which counterparty half goes with which block of the page.
            positions = {b.sequence for b in page.blocks}
            agreements: dict[int, HalfBlock] = {}
            proposals: dict[tuple[bytes, int], HalfBlock] = {}
            late: list[tuple[HalfBlock, HalfBlock]] = []  # (our pending proposal, agreement)
            for half in page.linked:
                if half.is_proposal:
                    proposals[half.position] = half
                elif half.link_public_key != pk or half.link_sequence in agreements:
                    raise MalformedMessage(f"linked half {half.short()} fits no block of the page")
                elif half.link_sequence in positions:
                    agreements[half.link_sequence] = half
                else:
                    late.append((self._late_proposal(txn, half, page.since), half))

        # The heavy part (signatures) runs before we take the database lock.
        verifier = ChainVerifier(pk, tip, _with_late(state.balance, late))
        problem = verifier.feed(page.blocks, proposals, agreements)
        if problem is not None:
            raise InvalidBlock(problem)
        for _, agreement in late:
            why = block_problem(agreement)
            if why is not None:
                raise InvalidBlock(Problem(*agreement.position, why))
        fork: ForkDetected | None = None
        verified = verifier.tip.sequence if verifier.tip else state.verified
        with self._store.write() as txn:
            now = txn.chain_state(pk) or ChainState(0, Balance())
            if now.verified != state.verified:
                raise LedgerMisuse("two pages of one chain were ingested at once")
            try:
                with txn.savepoint():
                    halves = (*agreements.values(), *proposals.values(), *(a for _, a in late))
                    for block in (*page.blocks, *halves):
                        self._place(txn, block)
            except ForkDetected as exc:
                fork = exc  # the page is undone (savepoint); the proof is kept just below
            if fork is not None:
                txn.put_fork_proof(fork.proof)
            else:
                txn.set_chain_state(pk, ChainState(verified, verifier.balance))
        if fork is not None:
            raise fork
        return SyncResult(pk, verified, verifier.balance, page.more)

    @staticmethod
    def _late_proposal(txn: Txn, agreement: HalfBlock, since: int) -> HalfBlock:
        """The pending proposal we hold that a late `agreement` in a page is for."""
        proposal = txn.block(agreement.link_public_key, agreement.link_sequence)
        if (
            agreement.link_sequence > since
            or proposal is None
            or txn.agreement_for(*proposal.position) is not None
        ):
            raise MalformedMessage(f"linked half {agreement.short()} fits no block of the page")
        why = link_problem(proposal, agreement)
        if why is not None:
            raise InvalidBlock(Problem(*agreement.position, why))
        return proposal

    # --- gossip -------------------------------------------------------------------------------

    def heads(self, limit: int = MAX_HEADS) -> Heads:
        """Our head, then heads of the chains we hold, most recently verified first."""
        with self._store.read() as txn:
            out = []
            own = txn.head(self.public_key)
            if own is not None:
                out.append(own)
            for key in txn.known_keys(limit):
                if len(out) >= limit:
                    break
                head = txn.head(key)
                if head is not None:
                    out.append(head)
        return Heads(tuple(out[:limit]))

    def observe_heads(self, msg: Heads) -> tuple[ForkProof, ...]:
        """Compare a peer's heads with the blocks we hold; keep and return new fork proofs.

        Heads of chains we hold nothing of are ignored (anyone can mint chains, and we only need
        to catch forks of those we deal with); the others are kept as blocks, so a later page or
        exchange that contradicts them is caught too.
        """
        for head in msg.heads:
            why = block_problem(head)
            if why is not None:
                raise InvalidBlock(Problem(head.public_key, head.sequence, why))
        found = []
        with self._store.write() as txn:
            for head in msg.heads:
                if head.public_key == self.public_key:
                    ours = txn.block(*head.position)
                    if ours is None or ours.body != head.body:
                        # A block signed with our key that our ledger lacks: it was restored
                        # from an old copy, or the key leaked. Signing on would fork our chain.
                        raise LedgerCorrupt(
                            Problem(
                                *head.position,
                                "a peer holds this block signed with our key, and our ledger "
                                "does not: restore the ledger (or retire the key) before "
                                "signing anything",
                            )
                        )
                    continue
                if not txn.holds_key(head.public_key):
                    continue
                try:
                    self._place(txn, head)
                except ForkDetected as exc:
                    found.append(exc.proof)
                except InvalidBlock:
                    continue  # a second block for one job: suspicious, but not a proof
        return tuple(found)

    def fork_proofs(self, limit: int = MAX_FORK_PROOFS) -> ForkProofs:
        with self._store.read() as txn:
            return ForkProofs(tuple(txn.fork_proofs(limit=limit)))

    def receive_fork_proofs(self, msg: ForkProofs) -> tuple[ForkProof, ...]:
        """Keep the proofs a peer shared (each was checked when decoded); return the new ones."""
        new = []
        with self._store.write() as txn:
            for proof in msg.proofs:
                why = proof.problem()
                if why is not None:
                    raise MalformedMessage(f"not a fork proof: {why}")
                if txn.put_fork_proof(proof):
                    new.append(proof)
        return tuple(new)

    def take_fresh_fork_proofs(self) -> tuple[ForkProof, ...]:
        """The fork proofs this ledger found or was given since the last call: to share with
        live peers at once rather than at the next meeting (the node does, node.fork_news)."""
        return self._store.take_fresh_fork_proofs()

    @property
    def has_fresh_fork_proofs(self) -> bool:
        return self._store.has_fresh_fork_proofs

    def fork_proofs_against(self, public_key: bytes) -> tuple[ForkProof, ...]:
        with self._store.read() as txn:
            return tuple(txn.fork_proofs(public_key))

    # --- audit --------------------------------------------------------------------------------

    def verify(self, public_key: bytes | None = None) -> VerifyReport:
        """Check the whole chain of `public_key` (ours by default) as stored (ledger.audit)."""
        return verify_store(self._store, public_key or self.public_key, self.public_key)

    # --- helpers (inside a write transaction) ---------------------------------------------------

    @staticmethod
    def _place(txn: Txn, block: HalfBlock) -> None:
        """Record a peer's `block` unless we hold it already.

        ForkDetected (the proof kept) if we hold another block at its position; InvalidBlock if
        its job is already settled by another block of that key. Writes nothing else on error.
        """
        stored = txn.block(*block.position)
        if stored is not None:
            if stored.body == block.body:
                return
            proof = fork_between(stored, block)
            if proof is None:
                # One of the two does not verify on its own: not a proof we could show anyone.
                bad = block if block_problem(block) else stored
                why = "conflicts with a block we hold"
                raise InvalidBlock(Problem(bad.public_key, bad.sequence, why))
            txn.put_fork_proof(proof)
            raise ForkDetected(proof)
        try:
            txn.insert(block)
        except sqlite3.IntegrityError:
            raise InvalidBlock(
                Problem(
                    block.public_key,
                    block.sequence,
                    f"job {block.transaction.job_id!r} with this peer is already settled by "
                    "another block",
                )
            ) from None


T = TypeVar("T")


def _page_rows(
    txn: Txn, public_key: bytes, since: int, last: int
) -> tuple[list[HalfBlock], list[HalfBlock]]:
    """`public_key`'s blocks we hold after `since` up to `last`, and the counterparty halves
    that go with them (agreements to its proposals, proposals its agreements are for)."""
    blocks = [block_from_row(r) for r in txn.chain_rows(public_key, since + 1, last)]
    linked = [block_from_row(r) for r in txn.agreement_rows(public_key, since + 1, last)]
    linked += [block_from_row(r) for r in txn.proposal_rows(public_key, since + 1, last)]
    return blocks, linked


def _one(results: list[T | LedgerError]) -> T:
    (result,) = results
    if isinstance(result, LedgerError):
        raise result
    return result


def _with_late(balance: Balance, late: list[tuple[HalfBlock, HalfBlock]]) -> Balance:
    """`balance` once the pending proposals of `late` count as earned."""
    amount = sum(p.amount_milli for p, _ in late)
    return Balance(
        earned_milli=balance.earned_milli + amount,
        spent_milli=balance.spent_milli,
        pending_milli=balance.pending_milli - amount,
        exchanges=balance.exchanges + len(late),
        blocks=balance.blocks,
    )
