"""Property: whatever sequence of exchanges runs among several identities (retries, lost and
repeated messages, cheating attempts included), no credit is created: the sum of all balances is
never above zero, and is exactly zero once every agreement has reached its worker."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.errors import LedgerError
from ledger.messages import Agree, Propose
from ledger.service import Ledger
from tests.ledger_helpers import LIMITS, identity, resign

PEOPLE = 4

step = st.one_of(
    # (kind, a, b, c): meanings depend on the kind, see the loop below
    st.tuples(
        st.just("propose"),
        st.integers(0, PEOPLE - 1),
        st.integers(0, PEOPLE - 1),
        st.integers(0, 5),
        st.integers(0, LIMITS.max_cpu_ms),
    ),
    st.tuples(st.just("agree"), st.integers(0, 50), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("deliver"), st.integers(0, 50), st.just(0), st.just(0), st.just(0)),
    st.tuples(
        st.just("misdeliver"),
        st.integers(0, 50),
        st.integers(0, PEOPLE - 1),
        st.just(0),
        st.just(0),
    ),
    st.tuples(st.just("inflate"), st.integers(0, 50), st.just(0), st.just(0), st.just(0)),
)


def total(ledgers: list[Ledger]) -> int:
    return sum(ledger.balance().balance_milli for ledger in ledgers)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(step, min_size=1, max_size=40))
def test_sum_of_balances_is_zero(steps: list[tuple[str, int, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        people = [identity(i) for i in range(PEOPLE)]
        # NORMAL: this test is about arithmetic, not power loss; it spares the shared disk.
        ledgers = [
            Ledger.open(Path(tmp) / str(i), p, synchronous="NORMAL") for i, p in enumerate(people)
        ]
        by_key = {ledger.public_key: ledger for ledger in ledgers}
        proposals: list[Propose] = []
        agreements: list[Agree] = []
        try:
            for kind, a, b, c, d in steps:
                before = total(ledgers)
                if kind == "propose" and a != b:
                    proposals.append(
                        ledgers[a].propose(
                            requester=ledgers[b].public_key,
                            job_id=f"job-{c}",
                            cpu_ms=d,
                            gpu_ms=0,
                            limits=LIMITS,
                            result_hash=bytes(32),
                        )
                    )
                elif kind == "agree" and proposals:
                    p = proposals[a % len(proposals)]
                    agreements.append(by_key[p.block.link_public_key].agree(p, LIMITS))
                elif kind == "deliver" and agreements:
                    g = agreements[a % len(agreements)]
                    assert by_key[g.block.link_public_key].accept_agreement(g).may_release
                elif kind == "misdeliver" and agreements:
                    # An agreement sent to someone else than its worker earns them nothing.
                    g = agreements[a % len(agreements)]
                    wrong = ledgers[b]
                    if wrong.public_key != g.block.link_public_key:
                        try:
                            wrong.accept_agreement(g)
                        except LedgerError as exc:
                            assert exc.fault == "remote"
                        else:
                            raise AssertionError("a misdelivered agreement was accepted")
                elif kind == "inflate" and agreements:
                    # The worker edits the countersigned amount: refused, with or without
                    # re-signing (it cannot sign as the requester).
                    half = agreements[a % len(agreements)].block
                    tx = dataclasses.replace(half.transaction, cpu_ms=half.transaction.cpu_ms + 1)
                    worker_id = next(p for p in people if p.public_raw == half.link_public_key)
                    for forged in (
                        dataclasses.replace(half, transaction=tx),
                        resign(half, worker_id, transaction=tx),
                    ):
                        try:
                            by_key[half.link_public_key].accept_agreement(Agree(forged))
                        except LedgerError as exc:
                            assert exc.fault == "remote"
                        else:
                            raise AssertionError("an inflated agreement was accepted")
                after = total(ledgers)
                assert after <= 0
                if kind in ("propose", "deliver", "misdeliver", "inflate"):
                    assert after >= before  # only an agreement (a spend) lowers the sum
            # Every agreement reaches its worker (again, for some): the books balance exactly.
            for g in agreements:
                by_key[g.block.link_public_key].accept_agreement(g)
            assert total(ledgers) == 0
            # Each ledger's own records agree with a full verification of its chain, and a
            # third party that fetches every chain finds the same balances.
            auditor = ledgers[0]
            audited = 0
            for ledger in ledgers:
                report = ledger.verify()
                assert report.ok and report.balance == ledger.balance()
                if ledger is auditor:
                    audited += report.balance.balance_milli
                    continue
                while auditor.ingest_page(
                    ledger.serve_chain(auditor.chain_request(ledger.public_key))
                ).more:
                    pass
                verified = auditor.verified_balance(ledger.public_key)
                assert verified is not None
                assert verified.balance_milli == report.balance.balance_milli
                audited += verified.balance_milli
            assert audited == 0
        finally:
            for ledger in ledgers:
                ledger.close()
