"""The audit of a stored chain, from #1 to its end: what `rain credit verify [PEER]` runs.

It reads the blocks back from SQLite and checks them with ledger.validate's ChainVerifier, run
by run, naming the first bad block; a row altered by hand shows up as a bad signature, a broken
hash link, a missing block or a row that is no block at all.

A long chain is cut into segments checked by worker processes, one per CPU (up to 4): the walk
itself is Python, so threads could share only the signature checks. The workers are plain
`python -m ledger.audit` subprocesses rather than multiprocessing, whose spawn method re-imports
the caller's __main__ (unsafe for a caller without a main guard, such as a trio node's script).
Each segment starts from the block before it, which the previous segment checks; job uniqueness
across segments is left to the database's unique index.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ledger import validate
from ledger.balance import Balance
from ledger.block import HalfBlock
from ledger.codec import pack, unpack
from ledger.fork import ForkProof
from ledger.store import RowError, Store, Txn, block_from_row
from ledger.validate import ChainVerifier, Problem, block_problem, shape_problem

# Blocks read from SQLite per verification run: big enough that per-query costs vanish, small
# enough that a 100,000-block chain never sits in memory whole.
VERIFY_CHUNK = 4096
# Below this many blocks, starting worker processes costs more than it saves.
PARALLEL_AUDIT_MIN = 20_000


@dataclass(frozen=True, slots=True)
class VerifyReport:
    public_key: bytes
    blocks: int  # blocks of the chain found good (before the first bad one, if any)
    balance: Balance
    problem: Problem | None  # the first bad block, if any
    forks: tuple[ForkProof, ...]  # fork proofs held against this key

    @property
    def ok(self) -> bool:
        return self.problem is None and not self.forks


def verify_store(
    store: Store, public_key: bytes, owner: bytes, *, processes: int | None = None
) -> VerifyReport:
    """Check the chain of `public_key` held in `store`, from #1, and name the first bad block.

    For our own chain (`owner`) that is every block; for a peer's, the prefix we verified when it
    was fetched (blocks we hold beyond it, such as heads, are checked on their own). `processes`:
    worker processes for a long chain (default one per CPU, up to 4; 1 checks in this process).
    """
    with store.read() as txn:
        if public_key == owner:
            last = txn.max_sequence(public_key)
        else:
            state = txn.chain_state(public_key)
            last = 0 if state is None else state.verified
        forks = tuple(txn.fork_proofs(public_key))
    workers = min(4, os.cpu_count() or 1) if processes is None else processes
    results = None
    if workers > 1 and last >= PARALLEL_AUDIT_MIN:
        step = -(-last // workers)
        segments = [(a, min(last, a + step - 1)) for a in range(1, last + 1, step)]
        results = _in_subprocesses(store.path, public_key, segments)
    if results is None:  # a short chain, or a worker failed: check it all here
        with store.read() as txn:
            results = [verify_segment(txn, public_key, 1, last, VERIFY_CHUNK)]
    problem = next((p for p, _ in results if p is not None), None)
    totals = [sum(_fields(b)[i] for _, b in results) for i in range(5)]
    balance = Balance(*totals)
    if problem is None and public_key != owner:
        with store.read() as txn:
            problem = _check_beyond(txn, public_key, last)
    good = balance.blocks if problem is None else problem.sequence - 1
    return VerifyReport(public_key, good, balance, problem, forks)


def verify_segment(
    txn: Txn, public_key: bytes, first: int, last: int, chunk: int = VERIFY_CHUNK
) -> tuple[Problem | None, Balance]:
    """Check blocks first..last of `public_key` from the block before them: (first problem,
    balance of these blocks alone)."""
    tip = None
    if first > 1:
        try:
            tip = txn.block(public_key, first - 1)
        except RowError as exc:
            return Problem(public_key, first - 1, str(exc)), Balance()
        if tip is None:
            return Problem(public_key, first - 1, "missing"), Balance()
    # Proposals this chain agreed to are bound by its own signed link_hash, and were checked
    # when they came in: their own signatures are not checked again (see ChainVerifier).
    verifier = ChainVerifier(public_key, tip, check_proposal_signatures=False)
    # Each run's signatures are checked on worker threads while this thread reads and walks the
    # next run (ChainVerifier.begin); the runs are then finished in order.
    previous: tuple[Callable[[], Problem | None], Problem | None] | None = None
    for start in range(first, last + 1, chunk):
        end = min(last, start + chunk - 1)
        blocks, bad_row = _blocks(txn.chain_rows(public_key, start, end))
        halves, bad_half = _blocks(
            txn.agreement_rows(public_key, start, end) + txn.proposal_rows(public_key, start, end)
        )
        agreements = {h.link_sequence: h for h in halves if not h.is_proposal}
        proposals = {h.position: h for h in halves if h.is_proposal}
        begun = verifier.begin(blocks, proposals, agreements)
        if previous is not None:
            problem = previous[0]() or previous[1]
            if problem is not None:
                return problem, verifier.balance
        # Blocks before a row that is no block are checked first: one of them may be the first
        # bad block. A damaged counterparty half shows up as a missing or bad half of our block,
        # or else is reported itself.
        previous = (begun, bad_row or bad_half)
    problem = None if previous is None else previous[0]() or previous[1]
    if problem is None and verifier.next_sequence <= last:
        problem = Problem(public_key, verifier.next_sequence, "missing")
    return problem, verifier.balance


def _fields(b: Balance) -> tuple[int, int, int, int, int]:
    return (b.earned_milli, b.spent_milli, b.pending_milli, b.exchanges, b.blocks)


def _in_subprocesses(
    path: Path, public_key: bytes, segments: Sequence[tuple[int, int]]
) -> list[tuple[Problem | None, Balance]] | None:
    """Each segment checked by a `python -m ledger.audit` worker; None if any worker failed."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledger.audit",
                str(path),
                public_key.hex(),
                str(a),
                str(b),
                str(VERIFY_CHUNK),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for a, b in segments
    ]
    results: list[tuple[Problem | None, Balance]] = []
    failed = False
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0 or failed:
            failed = True
            continue
        try:
            m = unpack(out, "audit result")
            where = m["problem"]
            problem = None if where is None else Problem(public_key, where[0], where[1])
            results.append((problem, Balance(*m["balance"])))
        except Exception:  # a worker that printed garbage: check here instead
            failed = True
    return None if failed else results


def _check_beyond(txn: Txn, public_key: bytes, last: int) -> Problem | None:
    """Blocks of a peer we hold past its verified prefix (heads, halves), each on its own."""
    for row in txn.chain_rows(public_key, last + 1, txn.max_sequence(public_key)):
        try:
            block = block_from_row(row)
        except RowError as exc:
            return Problem(public_key, int(row[1]), str(exc))
        why = block_problem(block) or shape_problem(block)
        if why is not None:
            return Problem(public_key, block.sequence, why)
    return None


def _blocks(rows: list[tuple[object, ...]]) -> tuple[list[HalfBlock], Problem | None]:
    """The blocks of `rows`, up to the first row that is no block (returned as a Problem)."""
    out = []
    for row in rows:
        try:
            out.append(block_from_row(row))
        except RowError as exc:
            pk = (
                exc.public_key
                if isinstance(exc.public_key, bytes) and len(exc.public_key) == 32
                else bytes(32)
            )
            seq = exc.sequence if isinstance(exc.sequence, int) else 0
            return out, Problem(pk, seq, str(exc))
    return out, None


def main(argv: Sequence[str]) -> int:
    """Worker: `python -m ledger.audit DB KEYHEX FIRST LAST CHUNK`; prints the msgpack result."""
    path, key_hex, first, last, chunk = argv
    # The processes already use every CPU: no signature threads inside them.
    validate._PARALLEL_MIN = 1 << 62
    store = Store(Path(path), create=False)
    try:
        with store.read() as txn:
            problem, balance = verify_segment(
                txn, bytes.fromhex(key_hex), int(first), int(last), int(chunk)
            )
    finally:
        store.close()
    where = None if problem is None else [problem.sequence, problem.reason]
    sys.stdout.buffer.write(pack({"problem": where, "balance": list(_fields(balance))}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
