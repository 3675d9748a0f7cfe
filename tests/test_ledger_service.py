"""The node-facing Ledger on real SQLite files: exchanges, idempotent retries, refusals, forks,
admission, chain sync and gossip."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import audit as ledger_audit
from ledger import validate as ledger_validate
from ledger.admission import Candidate, by_priority, check_floor
from ledger.audit import VerifyReport, verify_store
from ledger.block import JobLimits
from ledger.errors import (
    BelowFloor,
    ExchangeRefused,
    ForkDetected,
    InvalidBlock,
    LedgerCorrupt,
    LedgerMisuse,
    MalformedMessage,
    OffenderRefused,
    RemoteFault,
    WrongIdentity,
)
from ledger.exchange import ExchangeState
from ledger.messages import Agree, ChainPage, ChainRequest, Heads, Propose
from ledger.service import Claim, Ledger
from ledger.store import LEDGER_FILE, Store
from ledger.units import DEFAULT_FLOOR_MILLI
from tests.ledger_helpers import LIMITS, RESULT, identity, resign

A, B, C = identity(0), identity(1), identity(2)


@pytest.fixture
def ledgers(tmp_path: Path) -> Iterator[tuple[Ledger, Ledger, Ledger]]:
    opened = [Ledger.open(tmp_path / name, who) for name, who in (("a", A), ("b", B), ("c", C))]
    try:
        yield opened[0], opened[1], opened[2]
    finally:
        for ledger in opened:
            ledger.close()


BIG = JobLimits(cpus_milli=4000, gpus=0, wall_ms=3_600_000)


def settle(
    worker: Ledger, requester: Ledger, job: str, cpu_ms: int = 1500, limits: JobLimits = LIMITS
) -> Agree:
    outputs = f"outputs of {job}".encode()
    proposal = worker.propose(
        requester=requester.public_key,
        job_id=job,
        cpu_ms=cpu_ms,
        gpu_ms=0,
        limits=limits,
        result_hash=hashlib.sha256(outputs).digest(),
    )
    agreement = requester.agree(proposal, limits)
    exchange = worker.accept_agreement(agreement)
    assert exchange.may_release and exchange.state is ExchangeState.AGREED
    return agreement


def sync(asker: Ledger, holder: Ledger, key: bytes, limit: int = 256) -> None:
    while True:
        page = holder.serve_chain(asker.chain_request(key, limit))
        if not asker.ingest_page(page).more:
            return


def test_an_exchange_moves_credit_from_requester_to_worker(ledgers: tuple[Ledger, ...]) -> None:
    a, b, _ = ledgers
    settle(a, b, "job-1", 1500)
    settle(b, a, "job-2", 400)
    assert a.balance().balance_milli == 1100 and b.balance().balance_milli == -1100
    assert a.balance().exchanges == 2
    for ledger in (a, b):
        report = ledger.verify()
        assert report.ok and report.blocks == 2
        assert report.balance.balance_milli == ledger.balance().balance_milli
    lines = a.history()
    assert [(h.job_id, h.amount_milli, h.role) for h in lines] == [
        ("job-2", -400, "spent"),
        ("job-1", 1500, "earned"),
    ]


def test_every_step_is_idempotent(ledgers: tuple[Ledger, ...]) -> None:
    a, b, _ = ledgers
    kw = dict(requester=b.public_key, job_id="j", gpu_ms=0, limits=LIMITS, result_hash=bytes(32))
    p1 = a.propose(cpu_ms=1000, **kw)  # type: ignore[arg-type]
    p2 = a.propose(cpu_ms=9999, **kw)  # type: ignore[arg-type]  # a retry: the first claim stands
    assert p1 == p2
    assert a.exchange(b.public_key, "j") is not None
    assert a.exchange(b.public_key, "j").state is ExchangeState.PROPOSED  # type: ignore[union-attr]
    g1 = b.agree(p1, LIMITS)
    g2 = b.agree(p2, LIMITS)
    assert g1 == g2
    e1 = a.accept_agreement(g1)
    e2 = a.accept_agreement(g2)
    assert e1 == e2
    assert a.head().sequence == 1 and b.head().sequence == 1  # type: ignore[union-attr]
    assert a.balance().balance_milli == 1000 == -b.balance().balance_milli


def test_refusals_are_the_remotes_fault_and_leave_no_trace(ledgers: tuple[Ledger, ...]) -> None:
    a, b, c = ledgers
    p = a.propose(
        requester=b.public_key, job_id="j", cpu_ms=1, gpu_ms=0, limits=LIMITS, result_hash=bytes(32)
    )
    # Not addressed to C.
    with pytest.raises(ExchangeRefused):
        c.agree(p)
    # Limits other than those B gave the job.
    with pytest.raises(ExchangeRefused):
        b.agree(p, JobLimits(cpus_milli=1000, gpus=0, wall_ms=1000))
    # A forged proposal (signature no longer A's).
    tx = dataclasses.replace(p.block.transaction, cpu_ms=2)
    with pytest.raises(InvalidBlock):
        b.agree(Propose(dataclasses.replace(p.block, transaction=tx)))
    assert b.head() is None
    g = b.agree(p, LIMITS)
    # An agreement tampered with, or signed by someone else, or linking nowhere.
    with pytest.raises(InvalidBlock):
        a.accept_agreement(Agree(dataclasses.replace(g.block, signature=bytes(64))))
    with pytest.raises(ExchangeRefused):
        a.accept_agreement(Agree(resign(g.block, C, public_key=C.public_raw)))
    with pytest.raises(ExchangeRefused):
        a.accept_agreement(Agree(resign(g.block, B, link_sequence=7)))
    with pytest.raises(ExchangeRefused):
        b.accept_agreement(g)  # B made no proposal
    assert a.exchange(b.public_key, "j").state is ExchangeState.PROPOSED  # type: ignore[union-attr]
    assert a.accept_agreement(g).may_release


def test_a_second_agreement_for_one_proposal_is_a_fork_and_the_offender_is_refused(
    ledgers: tuple[Ledger, ...],
) -> None:
    """B signs two different agreements at one sequence for A's proposal."""
    a, b, c = ledgers
    settle(b, c, "first")  # B's #1
    p = a.propose(
        requester=b.public_key, job_id="j", cpu_ms=5, gpu_ms=0, limits=LIMITS, result_hash=bytes(32)
    )
    g = b.agree(p, LIMITS)
    a.accept_agreement(g)
    twin = resign(g.block, B, previous_hash=bytes([9]) * 32)  # same position, another body
    with pytest.raises(ForkDetected) as info:
        a.accept_agreement(Agree(twin))
    assert info.value.proof.offender == B.public_raw
    assert a.is_offender(B.public_raw)
    with pytest.raises(OffenderRefused):
        a.propose(
            requester=b.public_key,
            job_id="k",
            cpu_ms=1,
            gpu_ms=0,
            limits=LIMITS,
            result_hash=bytes(32),
        )
    assert a.fork_proofs().proofs == (info.value.proof,)


def test_usage_beyond_the_limits_is_capped_when_proposing(ledgers: tuple[Ledger, ...]) -> None:
    a, b, _ = ledgers
    small = JobLimits(cpus_milli=500, gpus=1, wall_ms=10_000)  # half a CPU, one GPU, 10 s
    p = a.propose(
        requester=b.public_key,
        job_id="j",
        cpu_ms=10_000,
        gpu_ms=20_000,
        limits=small,
        result_hash=bytes(32),
    )
    assert p.block.transaction.cpu_ms == 5_000 and p.block.transaction.gpu_ms == 10_000
    b.agree(p, small)
    assert b.balance().spent_milli == 5_000 + 10 * 10_000


def test_batches_settle_in_one_transaction_each(ledgers: tuple[Ledger, ...]) -> None:
    a, b, _ = ledgers
    claims = [Claim(b.public_key, f"j{i}", 100 + i, 0, LIMITS, bytes(32)) for i in range(20)]
    claims.append(Claim(a.public_key, "self", 1, 0, LIMITS, bytes(32)))  # a local mistake
    proposals = a.propose_many(claims)
    assert isinstance(proposals[-1], LedgerMisuse)
    good = [p for p in proposals if isinstance(p, Propose)]
    assert len(good) == 20
    forged = Propose(dataclasses.replace(good[0].block, signature=bytes(64)))
    agreements = b.agree_many([(p, LIMITS) for p in good] + [(forged, None)])
    assert isinstance(agreements[-1], InvalidBlock)
    ok = [g for g in agreements if isinstance(g, Agree)]
    results = a.accept_agreements([*ok, ok[0]])
    assert all(not isinstance(r, RemoteFault) for r in results)
    assert a.balance().balance_milli == sum(100 + i for i in range(20))
    assert a.verify().ok and b.verify().ok


def test_floor_and_priority() -> None:
    one_hour = JobLimits(cpus_milli=1000, gpus=0, wall_ms=3_600_000)
    check_floor(0, one_hour, DEFAULT_FLOOR_MILLI)  # a newcomer may spend one CPU-hour
    with pytest.raises(BelowFloor) as info:
        check_floor(-1, one_hour, DEFAULT_FLOOR_MILLI)
    assert "Earn credit" in str(info.value) and info.value.fault == "remote"
    gpu = JobLimits(cpus_milli=1000, gpus=1, wall_ms=600_000)  # 600 CPU-s + 10 x 600 GPU-s
    with pytest.raises(BelowFloor):
        check_floor(0, gpu, DEFAULT_FLOOR_MILLI)
    queue = [
        Candidate(b"\x02" * 32, -5000, 1),
        Candidate(b"\x01" * 32, 9000, 3),
        Candidate(b"\x03" * 32, 9000, 2),
        Candidate(b"\x04" * 32, 0, 0),
    ]
    assert [c.arrival for c in by_priority(queue)] == [2, 3, 0, 1]


def test_admission_uses_the_verified_chain(ledgers: tuple[Ledger, ...]) -> None:
    a, b, c = ledgers
    with pytest.raises(LedgerMisuse):
        a.admit(b.public_key, LIMITS)
    sync(a, b, b.public_key)
    assert a.admit(b.public_key, LIMITS).balance_milli == 0  # a newcomer
    # B spends almost all its allowance with C, so A refuses B's 2-CPU, 10-minute job.
    settle(c, b, "big", 2_500_000, BIG)
    # B's head reaches A (gossip): A now knows B's chain is longer than what B sent.
    assert a.observe_heads(b.heads()) == ()
    with pytest.raises(ExchangeRefused):
        a.admit(b.public_key, LIMITS)
    sync(a, b, b.public_key)
    assert a.verified_balance(b.public_key).balance_milli == -2_500_000  # type: ignore[union-attr]
    with pytest.raises(BelowFloor):
        a.admit(b.public_key, LIMITS)
    # B earns by working for C; after a new sync A serves B again.
    settle(b, c, "work", 2_000_000, BIG)
    sync(a, b, b.public_key)
    assert a.admit(b.public_key, LIMITS).balance_milli == -500_000


def test_chain_sync_in_pages_and_verify_peer(ledgers: tuple[Ledger, ...]) -> None:
    a, b, c = ledgers
    for i in range(25):
        settle(a, b, f"ab{i}", 1000 + i)
        settle(c, a, f"ca{i}", 10)
    sync(b, a, a.public_key, limit=7)
    expected = a.verify()
    assert b.verified_balance(a.public_key) == expected.balance
    report = b.verify(a.public_key)
    assert report.ok and report.blocks == 50
    # B can serve A's chain onward to C, who checks it just the same.
    sync(c, b, a.public_key, limit=16)
    assert c.verified_balance(a.public_key) == expected.balance


def test_a_page_that_breaks_a_rule_is_refused_whole(ledgers: tuple[Ledger, ...]) -> None:
    a, b, _ = ledgers
    for i in range(3):
        settle(a, b, f"j{i}")
    page = a.serve_chain(ChainRequest(a.public_key, 0, 10))
    bad_tx = dataclasses.replace(page.blocks[1].transaction, cpu_ms=1)
    bad = dataclasses.replace(
        page,
        blocks=(
            page.blocks[0],
            dataclasses.replace(page.blocks[1], transaction=bad_tx),
            page.blocks[2],
        ),
    )
    with pytest.raises(InvalidBlock) as info:
        b.ingest_page(bad)
    assert info.value.problem.sequence == 2
    assert b.verified_balance(a.public_key) is None
    missing = dataclasses.replace(page, linked=())
    assert b.ingest_page(missing).balance.earned_milli == 0  # proposals pending without halves
    with pytest.raises(ExchangeRefused):
        b.ingest_page(ChainPage(a.public_key, 5, (), (), 9))


def test_forks_surface_through_heads_and_pages(ledgers: tuple[Ledger, ...]) -> None:
    """B shows A one history and C another: C's view of B's head reveals it to A."""
    a, b, c = ledgers
    settle(b, a, "honest")  # B #1 = proposal to A
    sync(a, b, b.public_key)
    # B signs a different #1 (its database "lost" the first one) and deals with C.
    p1 = b.head()
    assert p1 is not None
    twin = resign(p1, B, link_public_key=C.public_raw)
    found = a.observe_heads(Heads((twin,)))
    assert len(found) == 1 and found[0].offender == B.public_raw
    assert a.is_offender(B.public_raw)
    with pytest.raises(OffenderRefused):
        a.admit(b.public_key, LIMITS)
    # The proof travels to C, who then refuses B too.
    assert c.receive_fork_proofs(a.fork_proofs()) == found
    assert c.is_offender(B.public_raw)
    assert c.receive_fork_proofs(a.fork_proofs()) == ()  # already known


def test_ledger_refuses_another_identity(tmp_path: Path) -> None:
    Ledger.open(tmp_path, A).close()
    with pytest.raises(WrongIdentity):
        Ledger.open(tmp_path, B)


def test_floor_is_recorded_for_the_cli(tmp_path: Path) -> None:
    Ledger.open(tmp_path, A, floor_milli=-7_200_000).close()
    with Ledger.open(tmp_path, A) as again:
        assert again.floor_milli == -7_200_000


def test_store_enforces_one_block_per_position_and_job(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "a", A) as a, Ledger.open(tmp_path / "b", B) as b:
        settle(a, b, "j")
    db = sqlite3.connect(tmp_path / "a" / LEDGER_FILE)
    row = db.execute("SELECT * FROM blocks WHERE sequence = 1 AND link_sequence = 0").fetchone()
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(f"INSERT INTO blocks VALUES ({', '.join('?' * len(row))})", row)
    again = list(row)
    again[1] = 2  # same job, next sequence
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(f"INSERT INTO blocks VALUES ({', '.join('?' * len(row))})", again)
    db.close()


def test_a_page_cannot_plant_an_unsigned_proposal(ledgers: tuple[Ledger, ...]) -> None:
    """B's page carries A's proposal with a broken signature (B's agreement is bound to it):
    refused, so no block we cannot prove is ever stored in A's name."""
    a, b, c = ledgers
    settle(a, b, "j")
    page = b.serve_chain(ChainRequest(b.public_key, 0, 10))
    (proposal,) = page.linked
    broken = dataclasses.replace(proposal, signature=bytes(64))
    agreement = resign(page.blocks[0], B, link_hash=broken.hash)
    with pytest.raises(InvalidBlock) as info:
        c.ingest_page(dataclasses.replace(page, blocks=(agreement,), linked=(broken,)))
    assert "proposal" in str(info.value) and "bad signature" in str(info.value)
    assert c.verified_balance(b.public_key) is None


def test_a_peer_holding_our_lost_block_stops_us(
    ledgers: tuple[Ledger, ...], tmp_path: Path
) -> None:
    """Our ledger was restored from an old copy: a peer's view of our head reveals it."""
    a, b, _ = ledgers
    settle(a, b, "j")
    theirs = b.heads()
    fresh = Ledger.open(tmp_path / "restored", A)  # same key, empty ledger
    try:
        our_head = a.heads().heads[0]
        with pytest.raises(LedgerCorrupt):
            fresh.observe_heads(Heads((our_head,)))
        assert a.observe_heads(Heads((our_head,))) == ()  # the intact ledger is fine
        assert fresh.observe_heads(theirs) == ()  # B's chain: nothing held, ignored
    finally:
        fresh.close()


def test_floor_must_not_be_positive(tmp_path: Path) -> None:
    with pytest.raises(LedgerMisuse):
        Ledger.open(tmp_path, A, floor_milli=1)


@pytest.mark.parametrize(
    ("bad", "processes"), [(1, 1), (3, 1), (4, 1), (6, 1), (10, 1), (3, 2), (5, 2), (6, 2), (9, 3)]
)
def test_verify_in_runs_threads_and_processes_names_the_altered_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: int, processes: int
) -> None:
    """Small runs and low thresholds for threads and processes, so run and segment boundaries
    and the parallel paths are exercised as on a 100,000-block chain."""
    monkeypatch.setattr(ledger_audit, "VERIFY_CHUNK", 3)
    monkeypatch.setattr(ledger_audit, "PARALLEL_AUDIT_MIN", 4)
    monkeypatch.setattr(ledger_validate, "_PARALLEL_MIN", 2)

    def audit() -> VerifyReport:
        store = Store(tmp_path / "a" / LEDGER_FILE)
        try:
            return verify_store(store, A.public_raw, A.public_raw, processes=processes)
        finally:
            store.close()

    with Ledger.open(tmp_path / "a", A) as a, Ledger.open(tmp_path / "b", B) as b:
        for i in range(10):
            if i % 3 == 0:
                settle(b, a, f"j{i}")
            else:
                settle(a, b, f"j{i}")
        good = audit()
        assert good.ok and good.blocks == 10
        assert good.balance == a.balance()
    db = sqlite3.connect(tmp_path / "a" / LEDGER_FILE)
    with db:
        db.execute(
            "UPDATE blocks SET time_ms = time_ms + 1 WHERE public_key = ? AND sequence = ?",
            (A.public_raw, bad),
        )
    db.close()
    report = audit()
    assert report.problem is not None and report.problem.sequence == bad
    assert report.blocks == bad - 1


def test_a_tally_catches_up_with_agreements_that_came_late(ledgers: tuple[Ledger, ...]) -> None:
    """C fetches A's chain while A's proposal waits for B's countersignature: pending. Once A
    holds the agreement, C's next fetch asks for it and counts it as earned."""
    a, b, c = ledgers
    settle(a, b, "first", 1000)
    p = a.propose(
        requester=b.public_key,
        job_id="late",
        cpu_ms=700,
        gpu_ms=0,
        limits=LIMITS,
        result_hash=bytes(32),
    )
    sync(c, a, a.public_key)
    early = c.verified_balance(a.public_key)
    assert early is not None and (early.earned_milli, early.pending_milli) == (1000, 700)
    a.accept_agreement(b.agree(p, LIMITS))
    request = c.chain_request(a.public_key)
    assert request.pending == (2,)
    c.ingest_page(a.serve_chain(request))
    late = c.verified_balance(a.public_key)
    assert late is not None and (late.earned_milli, late.pending_milli) == (1700, 0)
    assert c.verify(a.public_key).ok
    assert c.chain_request(a.public_key).pending == ()
    # A forged late agreement is refused, and the tally stays.
    settle(a, b, "third", 5)
    q = a.propose(
        requester=b.public_key,
        job_id="fourth",
        cpu_ms=9,
        gpu_ms=0,
        limits=LIMITS,
        result_hash=bytes(32),
    )
    sync(c, a, a.public_key)
    g = b.agree(q, LIMITS)
    page = a.serve_chain(c.chain_request(a.public_key))
    assert page.linked == ()  # A has not accepted it yet
    forged = dataclasses.replace(g.block, signature=bytes(64))
    with pytest.raises(InvalidBlock):
        c.ingest_page(dataclasses.replace(page, linked=(forged,)))
    assert c.verified_balance(a.public_key).pending_milli == 9  # type: ignore[union-attr]


def test_a_job_is_paid_to_at_most_max_payees_workers(tmp_path: Path) -> None:
    """A job that ran again after its first worker seemed lost is still paid once."""
    me, first, second = identity(0), identity(1), identity(2)
    with (
        Ledger.open(tmp_path / "r", me) as requester,
        Ledger.open(tmp_path / "w1", first) as w1,
        Ledger.open(tmp_path / "w2", second) as w2,
    ):
        claims = [
            w.propose(
                requester=me.public_raw,
                job_id="job-1",
                cpu_ms=100,
                gpu_ms=0,
                limits=LIMITS,
                result_hash=RESULT,
            )
            for w in (w1, w2)
        ]
        requester.agree(claims[0], LIMITS, max_payees=1)
        assert requester.agree(claims[0], LIMITS, max_payees=1)  # a retry is fine
        with pytest.raises(ExchangeRefused, match="already paid to 1 other"):
            requester.agree(claims[1], LIMITS, max_payees=1)
        requester.agree(claims[1], LIMITS, max_payees=2)  # replicas: both are paid


def test_a_volunteered_page_brings_a_chain_up_to_date_without_asking(
    ledgers: tuple[Ledger, ...],
) -> None:
    """What a requester sends with a job offer (the blocks since what the worker verified last)
    is used where it continues the worker's copy, overlap trimmed; otherwise the worker asks."""
    a, b, c = ledgers  # a works for b (the requester); c too
    settle(a, b, "first")
    assert a.catch_up(b.public_key, None) == ChainRequest(b.public_key, 0)  # no page: ask
    # Never verified: ask, whatever an (empty) page claims.
    empty = ChainPage(b.public_key, 0, (), (), 0)
    assert a.catch_up(b.public_key, empty) == ChainRequest(b.public_key, 0)
    sync(a, b, b.public_key)
    assert a.catch_up(b.public_key, b.serve_chain(ChainRequest(b.public_key, 1, 16))) is None
    for i in range(3):
        settle(c, b, f"c{i}")  # b's chain grows through work a did not see: blocks 2..4
    # Sent from #1 (what b believes a verified): a takes all three.
    assert a.catch_up(b.public_key, b.serve_chain(ChainRequest(b.public_key, 1, 16))) is None
    assert a.verified_balance(b.public_key) == b.balance()
    settle(c, b, "c3")
    # An overlapping page (from #2, a holds #4 already) is trimmed to the new block #5; the
    # counterparty halves of the dropped blocks go with them.
    overlap = b.serve_chain(ChainRequest(b.public_key, 2, 16))
    assert len(overlap.after(4).blocks) == 1 and len(overlap.after(4).linked) == 1
    assert a.catch_up(b.public_key, overlap) is None
    assert a.verified_state(b.public_key).verified == 5  # type: ignore[union-attr]
    assert a.verified_balance(b.public_key) == b.balance()
    settle(c, b, "c4")
    settle(c, b, "c5")
    # A page that starts after a gap is of no use: ask from what we hold.
    gap = b.serve_chain(ChainRequest(b.public_key, 6, 16))
    assert a.catch_up(b.public_key, gap) == ChainRequest(b.public_key, 5)
    # Nothing newer than what we hold: nothing to do.
    assert a.catch_up(b.public_key, b.serve_chain(ChainRequest(b.public_key, 1, 3))) == (
        ChainRequest(b.public_key, 5)
    )  # (the page says b's head is #7: the rest must be asked for)
    with pytest.raises(MalformedMessage):
        a.catch_up(b.public_key, c.serve_chain(ChainRequest(c.public_key, 0, 16)))
    # A page that breaks a rule is refused whole, as when asked for.
    page = b.serve_chain(ChainRequest(b.public_key, 5, 16))
    bad_tx = dataclasses.replace(page.blocks[0].transaction, cpu_ms=1)
    forged = dataclasses.replace(page, blocks=(resign(page.blocks[0], B, transaction=bad_tx),))
    with pytest.raises(InvalidBlock):
        a.catch_up(b.public_key, forged)
    assert a.catch_up(b.public_key, page) is None
    assert a.verified_balance(b.public_key) == b.balance()
    # b made its page, then paid a for another job (a holds that agreement, #8): the page
    # stops short of a block a holds (admit() would refuse the chain), but the block follows
    # the page, so a verifies it from its own copy without asking.
    stale = b.serve_chain(ChainRequest(b.public_key, 7, 16))
    settle(a, b, "second")
    assert a.catch_up(b.public_key, stale) is None
    assert a.verified_state(b.public_key).verified == 8  # type: ignore[union-attr]
    assert a.verified_balance(b.public_key) == b.balance()
    a.admit(b.public_key, LIMITS)
    # Again, but b paid c (#9) before paying a (#10): a cannot see #9, so it asks.
    stale = b.serve_chain(ChainRequest(b.public_key, 8, 16))
    settle(c, b, "c6")
    settle(a, b, "third")
    assert a.catch_up(b.public_key, stale) == ChainRequest(b.public_key, 8)
    with pytest.raises(ExchangeRefused):
        a.admit(b.public_key, LIMITS)
    sync(a, b, b.public_key)
    assert a.verified_balance(b.public_key) == b.balance()
