"""Ledger benchmarks: settled exchanges per second, time to verify a 100,000-block chain, and
database size per 100,000 blocks. A script, not a test:

    python bench/bench_ledger.py [--blocks 100000] [--exchanges 2000] [--batch 500]

"Settled" means both halves signed, verified by the other party and committed to both parties'
SQLite databases (each party has its own file, as two nodes would). Figures depend on the machine
and its disk; the script prints what it measured and the cost of the signatures alone, which bound
any exchange rate.
"""

from __future__ import annotations

import argparse
import os
import queue
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger.audit import verify_store
from ledger.block import HalfBlock, JobLimits
from ledger.exchange import make_agreement, make_proposal
from ledger.messages import Agree, Propose, decode_message, encode_message
from ledger.service import Claim, Ledger
from ledger.store import LEDGER_FILE, Store, block_from_row
from ledger.validate import signatures_ok
from rainnet.identity import Identity

LIMITS = JobLimits(cpus_milli=4000, gpus=0, wall_ms=3_600_000)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def crypto_floor(n: int = 2000) -> float:
    """Seconds of signing and verifying per exchange: 2 signatures + 2 verifications."""
    me = Identity.generate()
    msg = os.urandom(200)
    key = me.private_key.public_key()
    sig = me.sign(msg)
    t_sign = timed(lambda: [me.sign(msg) for _ in range(n)]) / n
    t_verify = timed(lambda: [key.verify(sig, msg) for _ in range(n)]) / n
    return 2 * t_sign + 2 * t_verify


def settle_one_by_one(root: Path, n: int, synchronous: str) -> float:
    """Exchanges/s, one exchange at a time, messages encoded and decoded as on the wire."""
    a = Ledger.open(root / f"seq-{synchronous}-a", Identity.generate(), synchronous=synchronous)
    b = Ledger.open(root / f"seq-{synchronous}-b", Identity.generate(), synchronous=synchronous)

    def run() -> None:
        for i in range(n):
            worker, requester = (a, b) if i % 2 == 0 else (b, a)
            p = worker.propose(
                requester=requester.public_key,
                job_id=f"job-{i}",
                cpu_ms=1000 + i,
                gpu_ms=0,
                limits=LIMITS,
                result_hash=bytes(32),
            )
            got = decode_message(encode_message(p))
            assert isinstance(got, Propose)
            g = decode_message(encode_message(requester.agree(got, LIMITS)))
            assert isinstance(g, Agree)
            assert worker.accept_agreement(g).may_release

    rate = n / timed(run)
    assert a.verify().ok and b.verify().ok
    a.close()
    b.close()
    return rate


def settle_batched(root: Path, n: int, batch: int) -> float:
    """Exchanges/s when each party settles `batch` exchanges per transaction (group commit)."""
    a = Ledger.open(root / "batch-a", Identity.generate())
    b = Ledger.open(root / "batch-b", Identity.generate())

    def run() -> None:
        for start in range(0, n, batch):
            claims = [
                Claim(b.public_key, f"job-{i}", 1000 + i, 0, LIMITS, bytes(32))
                for i in range(start, min(n, start + batch))
            ]
            proposals = [p for p in a.propose_many(claims) if isinstance(p, Propose)]
            agreements = [g for g in b.agree_many([(p, LIMITS) for p in proposals])]
            accepted = a.accept_agreements([g for g in agreements if isinstance(g, Agree)])
            assert len(accepted) == len(claims)

    rate = n / timed(run)
    assert a.balance().exchanges == n and a.verify().ok
    a.close()
    b.close()
    return rate


def settle_pipelined(root: Path, n: int, batch: int) -> float:
    """Exchanges/s with the two parties in two threads, as two nodes would run: while the
    requester countersigns one batch, the worker proposes the next and accepts the last."""
    a = Ledger.open(root / "pipe-a", Identity.generate())
    b = Ledger.open(root / "pipe-b", Identity.generate())
    to_requester: queue.Queue[list[Propose] | None] = queue.Queue(maxsize=2)
    to_worker: queue.Queue[list[Agree]] = queue.Queue(maxsize=2)

    def requester() -> None:
        while (proposals := to_requester.get()) is not None:
            agreed = b.agree_many([(p, LIMITS) for p in proposals])
            to_worker.put([g for g in agreed if isinstance(g, Agree)])

    def run() -> None:
        thread = threading.Thread(target=requester)
        thread.start()
        in_flight = 0
        for start in range(0, n, batch):
            claims = [
                Claim(b.public_key, f"job-{i}", 1000 + i, 0, LIMITS, bytes(32))
                for i in range(start, min(n, start + batch))
            ]
            to_requester.put([p for p in a.propose_many(claims) if isinstance(p, Propose)])
            in_flight += 1
            if in_flight == 2:  # keep one batch in flight while the next is proposed
                a.accept_agreements(to_worker.get())
                in_flight -= 1
        to_requester.put(None)
        while in_flight:
            a.accept_agreements(to_worker.get())
            in_flight -= 1
        thread.join()

    rate = n / timed(run)
    assert a.balance().exchanges == n and a.verify().ok and b.verify().ok
    a.close()
    b.close()
    return rate


def build_chain(root: Path, blocks: int, peers: int = 16) -> tuple[Path, bytes, bytes]:
    """A database holding a `blocks`-long chain of one key, half proposals and half agreements
    with `peers` counterparties, plus the counterparty halves, as a node accumulates them.
    Made with the real signing code, stored in one transaction (building it through the
    exchange API would take as long as settling that many exchanges)."""
    me = Identity.generate()
    others = [Identity.generate() for _ in range(peers)]
    other_keys = [o.public_raw for o in others]
    heads: dict[bytes, HalfBlock | None] = {k: None for k in other_keys}
    my_head: HalfBlock | None = None
    home = root / "chain"
    Ledger.open(home, me).close()  # creates the database and records the owner
    store = Store(home / LEDGER_FILE)
    pk = me.public_raw
    with store.write() as txn:
        for i in range(blocks):
            peer, peer_key = others[i % peers], other_keys[i % peers]
            if i % 2 == 0:  # we worked for peer
                mine = make_proposal(
                    me,
                    my_head,
                    requester=peer_key,
                    job_id=f"job-{i}",
                    cpu_ms=1000 + i % 1000,
                    gpu_ms=0,
                    limits=LIMITS,
                    result_hash=bytes(32),
                    time_ms=1_700_000_000_000 + i,
                    public_key=pk,
                )
                theirs = make_agreement(peer, heads[peer_key], mine, public_key=peer_key)
            else:  # peer worked for us
                theirs = make_proposal(
                    peer,
                    heads[peer_key],
                    requester=pk,
                    job_id=f"job-{i}",
                    cpu_ms=900 + i % 1000,
                    gpu_ms=0,
                    limits=LIMITS,
                    result_hash=bytes(32),
                    time_ms=1_700_000_000_000 + i,
                    public_key=peer_key,
                )
                mine = make_agreement(me, my_head, theirs, public_key=pk)
            txn.insert(mine)
            txn.insert(theirs)
            my_head, heads[peer_key] = mine, theirs
    store.close()
    return home, pk, me.seed()


def db_bytes(path: Path) -> int:
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    db.close()
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--exchanges", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--dir", help="where to put the databases (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"machine: {os.cpu_count()} CPUs, SQLite {sqlite3.sqlite_version}, {root}")
        floor = crypto_floor()
        print(
            f"signatures alone (2 signs + 2 verifications per exchange): {floor * 1e6:.0f} us "
            f"-> at most {1 / floor:,.0f} exchanges/s on one core"
        )
        n = args.exchanges
        for sync in ("FULL", "NORMAL"):
            rate = settle_one_by_one(root, n, sync)
            print(
                f"settled exchanges/s, one per transaction, synchronous={sync}: {rate:,.0f} "
                f"({n} exchanges)"
            )
        rate = settle_batched(root, max(n, args.batch * 4), args.batch)
        print(
            f"settled exchanges/s, {args.batch} per transaction (group commit), "
            f"synchronous=FULL: {rate:,.0f}"
        )
        rate = settle_pipelined(root, max(n, args.batch * 8), args.batch)
        print(f"settled exchanges/s, same, worker and requester in two threads: {rate:,.0f}")

        t0 = time.perf_counter()
        home, pk, _seed = build_chain(root, args.blocks)
        print(f"built a {args.blocks:,}-block chain in {time.perf_counter() - t0:.1f} s")
        path = home / LEDGER_FILE
        store = Store(path)
        report = None

        def audit() -> None:
            nonlocal report
            report = verify_store(store, pk, pk)

        t_audit = timed(audit)
        assert report is not None and report.ok and report.blocks == args.blocks, report
        print(
            f"verify the {args.blocks:,}-block chain (rain credit verify: hash links, head "
            f"signatures, {args.blocks // 2:,} countersignatures; "
            f"{min(4, os.cpu_count() or 1)} processes): {t_audit:.2f} s"
        )
        t_one = timed(lambda: verify_store(store, pk, pk, processes=1))
        print(f"  the same in one process (signature threads only): {t_one:.2f} s")
        with store.read() as txn:
            own = [block_from_row(r) for r in txn.chain_rows(pk, 1, args.blocks)]
        t_strict = timed(lambda: signatures_ok(own))
        print(
            f"  + every one of its {args.blocks:,} own signatures checked on its own too: "
            f"{t_strict:.2f} s more"
        )
        store.close()

        # A peer fetching and verifying the whole chain page by page, as over the network.
        peer = Ledger.open(root / "peer", Identity.generate())
        holder = Ledger.open(home, Identity.from_seed(_seed))

        def fetch() -> None:
            while True:
                page = holder.serve_chain(peer.chain_request(pk))
                got = decode_message(encode_message(page))
                assert not isinstance(got, Propose | Agree)
                if not peer.ingest_page(got).more:  # type: ignore[arg-type]
                    return

        t_fetch = timed(fetch)
        assert peer.verified_balance(pk) == report.balance
        print(f"a peer fetches and verifies it in 256-block pages: {t_fetch:.1f} s")
        holder.close()
        peer.close()

        size = db_bytes(path)
        rows = 2 * args.blocks  # our blocks and the counterparty halves
        print(
            f"database: {size / 1e6:.1f} MB for {args.blocks:,} blocks of the chain + "
            f"{args.blocks:,} counterparty halves = {size / rows:.0f} bytes per stored block, "
            f"{size * 100_000 / rows / 1e6:.1f} MB per 100,000 blocks"
        )


if __name__ == "__main__":
    main()
