"""SQLite storage of blocks, peers' verified chains and fork proofs: the ledger's only I/O edge.

One database per node, `HOME/ledger.sqlite3`, in WAL mode so `rain credit` can read while the node
writes. The rows are the blocks' own fields (no opaque blob), so a row altered by hand is a block
whose signature or hash link no longer holds, which `rain credit verify` reports.

Crash safety (kill -9 at any instant, and power loss with synchronous=FULL):
  - every change is one transaction (`Store.write`), BEGIN IMMEDIATE ... COMMIT, so a block and
    whatever goes with it (the proposal an agreement links to) are recorded together or not at all;
  - callers (ledger.service) sign a block inside the transaction that stores it and let the block
    leave the process only after COMMIT, so no signature we gave away can be missing after a
    crash, which would make us sign a different block at that sequence: a fork, by an honest node;
  - PRIMARY KEY (public_key, sequence) records a block once; UNIQUE (public_key, link_public_key,
    job_id, is-proposal) records one proposal and one agreement per job and counterparty, and
    UNIQUE (link_public_key, link_sequence) one agreement per proposal, so a retried exchange can
    only find what it already did.

Thread safety: one connection guarded by a lock; each `read`/`write` block holds it, so the node
may call from trio's worker threads (`trio.to_thread.run_sync`), one short call at a time.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.balance import Balance
from ledger.block import HalfBlock, JobLimits, Transaction
from ledger.codec import pack, unpack
from ledger.errors import LedgerMisuse
from ledger.fork import ForkProof
from ledger.units import GPU_SECOND_WEIGHT

SCHEMA_VERSION = 1
LEDGER_FILE = "ledger.sqlite3"
FRESH_FORK_PROOFS = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value ANY
) STRICT;
CREATE TABLE IF NOT EXISTS blocks (
    public_key      BLOB    NOT NULL,
    sequence        INTEGER NOT NULL,
    previous_hash   BLOB    NOT NULL,
    link_public_key BLOB    NOT NULL,
    link_sequence   INTEGER NOT NULL,
    link_hash       BLOB    NOT NULL,
    job_id          TEXT    NOT NULL,
    cpu_ms          INTEGER NOT NULL,
    gpu_ms          INTEGER NOT NULL,
    cpus_milli      INTEGER NOT NULL,
    gpus            INTEGER NOT NULL,
    wall_ms         INTEGER NOT NULL,
    result_hash     BLOB    NOT NULL,
    time_ms         INTEGER NOT NULL,
    signature       BLOB    NOT NULL,
    PRIMARY KEY (public_key, sequence)
) STRICT;
-- A job is paid once between two parties: one proposal and one agreement per (key, peer, job).
CREATE UNIQUE INDEX IF NOT EXISTS blocks_job
    ON blocks (public_key, link_public_key, job_id, link_sequence = 0);
-- One agreement per proposal; also how a proposal finds its agreement.
CREATE UNIQUE INDEX IF NOT EXISTS blocks_link
    ON blocks (link_public_key, link_sequence) WHERE link_sequence > 0;
-- Peers' chains we fetched and verified: blocks 1..verified, and their tallied balance.
CREATE TABLE IF NOT EXISTS chains (
    public_key    BLOB    NOT NULL UNIQUE,
    verified      INTEGER NOT NULL,
    earned_milli  INTEGER NOT NULL,
    spent_milli   INTEGER NOT NULL,
    pending_milli INTEGER NOT NULL,
    exchanges     INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS fork_proofs (
    public_key BLOB    NOT NULL,
    sequence   INTEGER NOT NULL,
    proof      BLOB    NOT NULL,
    PRIMARY KEY (public_key, sequence)
) STRICT, WITHOUT ROWID;
"""

_COLUMNS = (
    "public_key, sequence, previous_hash, link_public_key, link_sequence, link_hash, job_id, "
    "cpu_ms, gpu_ms, cpus_milli, gpus, wall_ms, result_hash, time_ms, signature"
)
_B_COLUMNS = ", ".join(f"b.{c.strip()}" for c in _COLUMNS.split(","))
_INSERT = f"INSERT INTO blocks ({_COLUMNS}) VALUES ({', '.join('?' * 15)})"
_AMOUNT = f"(cpu_ms + {GPU_SECOND_WEIGHT} * gpu_ms)"
_P_AMOUNT = f"(p.cpu_ms + {GPU_SECOND_WEIGHT} * p.gpu_ms)"

Row = tuple[Any, ...]


class RowError(ValueError):
    """A row that is no valid block (altered by hand, or a bug); carries its position if known."""

    def __init__(self, public_key: object, sequence: object, reason: str) -> None:
        super().__init__(reason)
        self.public_key = public_key
        self.sequence = sequence


def block_from_row(row: Row) -> HalfBlock:
    """The block a row holds; RowError if the row's values cannot be a block."""
    try:
        return HalfBlock(
            public_key=row[0],
            sequence=row[1],
            previous_hash=row[2],
            link_public_key=row[3],
            link_sequence=row[4],
            link_hash=row[5],
            transaction=Transaction(
                job_id=row[6],
                cpu_ms=row[7],
                gpu_ms=row[8],
                limits=JobLimits(cpus_milli=row[9], gpus=row[10], wall_ms=row[11]),
                result_hash=row[12],
                time_ms=row[13],
            ),
            signature=row[14],
        )
    except (ValueError, TypeError) as exc:
        raise RowError(row[0], row[1], f"row is not a valid block ({exc})") from None


def _row(b: HalfBlock) -> Row:
    tx = b.transaction
    return (
        b.public_key,
        b.sequence,
        b.previous_hash,
        b.link_public_key,
        b.link_sequence,
        b.link_hash,
        tx.job_id,
        tx.cpu_ms,
        tx.gpu_ms,
        tx.limits.cpus_milli,
        tx.limits.gpus,
        tx.limits.wall_ms,
        tx.result_hash,
        tx.time_ms,
        b.signature,
    )


@dataclass(frozen=True, slots=True)
class ChainState:
    """How much of a peer's chain we hold verified, and what it was worth at that point."""

    verified: int
    balance: Balance


@dataclass(frozen=True, slots=True)
class HistoryRow:
    sequence: int
    time_ms: int
    peer: bytes
    job_id: str
    amount_milli: int
    role: str  # "earned" (our proposal, agreed), "pending" (not agreed yet), "spent"


class Txn:
    """Queries inside one transaction (only valid within `Store.read()` / `Store.write()`)."""

    def __init__(self, conn: sqlite3.Connection, fresh: deque[ForkProof] | None = None) -> None:
        self._c = conn
        self._fresh = fresh

    # --- blocks -----------------------------------------------------------------------------

    def block(self, public_key: bytes, sequence: int) -> HalfBlock | None:
        row = self._c.execute(
            f"SELECT {_COLUMNS} FROM blocks WHERE public_key = ? AND sequence = ?",
            (public_key, sequence),
        ).fetchone()
        return None if row is None else block_from_row(row)

    def head(self, public_key: bytes) -> HalfBlock | None:
        """The block of `public_key` with the highest sequence we hold."""
        row = self._c.execute(
            f"SELECT {_COLUMNS} FROM blocks WHERE public_key = ? ORDER BY sequence DESC LIMIT 1",
            (public_key,),
        ).fetchone()
        return None if row is None else block_from_row(row)

    def max_sequence(self, public_key: bytes) -> int:
        row = self._c.execute(
            "SELECT MAX(sequence) FROM blocks WHERE public_key = ?", (public_key,)
        ).fetchone()
        return int(row[0] or 0)

    def block_for_job(
        self, public_key: bytes, peer: bytes, job_id: str, proposal: bool
    ) -> HalfBlock | None:
        """`public_key`'s proposal (or agreement) with `peer` for `job_id`."""
        row = self._c.execute(
            f"SELECT {_COLUMNS} FROM blocks WHERE public_key = ? AND link_public_key = ? "
            "AND job_id = ? AND (link_sequence = 0) = ?",
            (public_key, peer, job_id, proposal),
        ).fetchone()
        return None if row is None else block_from_row(row)

    def payees_for_job(self, public_key: bytes, job_id: str) -> set[bytes]:
        """The workers `public_key` agreed to pay for `job_id`."""
        rows = self._c.execute(
            "SELECT link_public_key FROM blocks WHERE public_key = ? AND job_id = ? "
            "AND link_sequence > 0",
            (public_key, job_id),
        ).fetchall()
        return {row[0] for row in rows}

    def agreement_for(self, public_key: bytes, sequence: int) -> HalfBlock | None:
        """The agreement we hold that links to proposal (`public_key`, `sequence`)."""
        row = self._c.execute(
            f"SELECT {_COLUMNS} FROM blocks WHERE link_public_key = ? AND link_sequence = ? "
            "AND link_sequence > 0",
            (public_key, sequence),
        ).fetchone()
        return None if row is None else block_from_row(row)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: undone alone if its block raises, or on request."""
        self._c.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            self._c.execute("ROLLBACK TO part")
            self._c.execute("RELEASE part")
            raise
        self._c.execute("RELEASE part")

    def insert(self, block: HalfBlock) -> None:
        """Record `block` (sqlite3.IntegrityError if its position or job is taken)."""
        self._c.execute(_INSERT, _row(block))

    def chain_rows(self, public_key: bytes, first: int, last: int) -> list[Row]:
        """Rows of `public_key`'s blocks with first <= sequence <= last, in order."""
        return self._c.execute(
            f"SELECT {_COLUMNS} FROM blocks WHERE public_key = ? AND sequence BETWEEN ? AND ? "
            "ORDER BY sequence",
            (public_key, first, last),
        ).fetchall()

    def agreement_rows(self, public_key: bytes, first: int, last: int) -> list[Row]:
        """Agreements we hold for `public_key`'s proposals first..last."""
        return self._c.execute(
            f"SELECT {_COLUMNS} FROM blocks WHERE link_public_key = ? "
            "AND link_sequence BETWEEN ? AND ? AND link_sequence > 0",
            (public_key, first, last),
        ).fetchall()

    def proposal_rows(self, public_key: bytes, first: int, last: int) -> list[Row]:
        """Proposals that `public_key`'s agreements first..last link to."""
        return self._c.execute(
            f"SELECT {_B_COLUMNS} FROM blocks a JOIN blocks b "
            "ON b.public_key = a.link_public_key AND b.sequence = a.link_sequence "
            "WHERE a.public_key = ? AND a.sequence BETWEEN ? AND ? AND a.link_sequence > 0",
            (public_key, first, last),
        ).fetchall()

    def pending_proposals(self, public_key: bytes, last: int, limit: int) -> list[int]:
        """Sequences (latest first) of `public_key`'s proposals up to `last` without agreement."""
        rows = self._c.execute(
            "SELECT p.sequence FROM blocks p LEFT JOIN blocks a "
            "ON a.link_public_key = p.public_key AND a.link_sequence = p.sequence "
            "AND a.link_sequence > 0 "
            "WHERE p.public_key = ? AND p.link_sequence = 0 AND p.sequence <= ? "
            "AND a.sequence IS NULL ORDER BY p.sequence DESC LIMIT ?",
            (public_key, last, limit),
        ).fetchall()
        return [r[0] for r in rows]

    _UNPAID = (
        "FROM blocks p LEFT JOIN blocks a "
        "ON a.link_public_key = p.public_key AND a.link_sequence = p.sequence "
        "AND a.link_sequence > 0 "
        "WHERE p.public_key = ? AND p.link_sequence = 0 AND a.sequence IS NULL AND p.time_ms >= ?"
    )

    def unpaid_claims(
        self, public_key: bytes, requester: bytes, since_ms: int, limit: int
    ) -> list[tuple[str, int, int]]:
        """`public_key`'s proposals to `requester` since `since_ms` without its agreement,
        newest first: (job id, amount in milli-credits, time in ms)."""
        rows = self._c.execute(
            f"SELECT p.job_id, p.cpu_ms + {GPU_SECOND_WEIGHT} * p.gpu_ms, p.time_ms "
            f"{self._UNPAID} AND p.link_public_key = ? ORDER BY p.time_ms DESC LIMIT ?",
            (public_key, since_ms, requester, limit),
        ).fetchall()
        return [(str(j), int(a), int(t)) for j, a, t in rows]

    def unpaid_by_newcomers(self, public_key: bytes, since_ms: int) -> int:
        """What requesters that never earned credit (as far as we verified their chains) owe
        `public_key` for its proposals since `since_ms`, in milli-credits."""
        (amount,) = self._c.execute(
            f"SELECT COALESCE(SUM(p.cpu_ms + {GPU_SECOND_WEIGHT} * p.gpu_ms), 0) {self._UNPAID} "
            "AND NOT EXISTS (SELECT 1 FROM chains c WHERE c.public_key = p.link_public_key "
            "AND c.earned_milli > 0)",
            (public_key, since_ms),
        ).fetchone()
        return int(amount)

    def own_balance(self, public_key: bytes) -> Balance:
        """The balance of `public_key`'s chain as recorded (verify checks the records)."""
        spent, agreements = self._c.execute(
            f"SELECT COALESCE(SUM({_AMOUNT}), 0), COUNT(*) FROM blocks "
            "WHERE public_key = ? AND link_sequence > 0",
            (public_key,),
        ).fetchone()
        earned, pending, agreed, blocks = self._c.execute(
            f"SELECT COALESCE(SUM(CASE WHEN a.sequence IS NOT NULL THEN {_P_AMOUNT} END), 0), "
            f"COALESCE(SUM(CASE WHEN a.sequence IS NULL THEN {_P_AMOUNT} END), 0), "
            "COUNT(a.sequence), COUNT(*) FROM blocks p LEFT JOIN blocks a "
            "ON a.link_public_key = p.public_key AND a.link_sequence = p.sequence "
            "AND a.link_sequence > 0 "
            "WHERE p.public_key = ? AND p.link_sequence = 0",
            (public_key,),
        ).fetchone()
        return Balance(
            earned_milli=earned,
            spent_milli=spent,
            pending_milli=pending,
            exchanges=agreed + agreements,
            blocks=blocks + agreements,
        )

    def history(self, public_key: bytes, limit: int) -> list[HistoryRow]:
        rows = self._c.execute(
            f"SELECT b.sequence, b.time_ms, b.link_public_key, b.job_id, "
            f"b.cpu_ms + {GPU_SECOND_WEIGHT} * b.gpu_ms, b.link_sequence, a.sequence "
            "FROM blocks b LEFT JOIN blocks a ON b.link_sequence = 0 "
            "AND a.link_public_key = b.public_key AND a.link_sequence = b.sequence "
            "AND a.link_sequence > 0 "
            "WHERE b.public_key = ? ORDER BY b.sequence DESC LIMIT ?",
            (public_key, limit),
        ).fetchall()
        out = []
        for seq, time_ms, peer, job, amount, link_seq, agreed in rows:
            if link_seq > 0:
                role, signed = "spent", -amount
            else:
                role, signed = ("earned" if agreed is not None else "pending"), amount
            out.append(HistoryRow(seq, time_ms, peer, job, signed, role))
        return out

    # --- peers' chains and fork proofs -------------------------------------------------------

    def chain_state(self, public_key: bytes) -> ChainState | None:
        row = self._c.execute(
            "SELECT verified, earned_milli, spent_milli, pending_milli, exchanges FROM chains "
            "WHERE public_key = ?",
            (public_key,),
        ).fetchone()
        if row is None:
            return None
        verified, earned, spent, pending, exchanges = row
        return ChainState(verified, Balance(earned, spent, pending, exchanges, verified))

    def set_chain_state(self, public_key: bytes, state: ChainState) -> None:
        b = state.balance
        self._c.execute(
            # REPLACE deletes and re-inserts, so the rowid orders chains by last update.
            "INSERT OR REPLACE INTO chains (public_key, verified, earned_milli, spent_milli, "
            "pending_milli, exchanges) VALUES (?, ?, ?, ?, ?, ?)",
            (
                public_key,
                state.verified,
                b.earned_milli,
                b.spent_milli,
                b.pending_milli,
                b.exchanges,
            ),
        )

    def known_keys(self, limit: int) -> list[bytes]:
        """Keys of the chains we verified, most recently extended first (for head gossip)."""
        rows = self._c.execute(
            "SELECT public_key FROM chains ORDER BY rowid DESC LIMIT ?", (limit,)
        ).fetchall()
        return [r[0] for r in rows]

    def holds_key(self, public_key: bytes) -> bool:
        """Whether we deal with `public_key`: we hold a block of it or have fetched its chain."""
        row = self._c.execute(
            "SELECT 1 FROM blocks WHERE public_key = ? UNION ALL "
            "SELECT 1 FROM chains WHERE public_key = ? LIMIT 1",
            (public_key, public_key),
        ).fetchone()
        return row is not None

    def put_fork_proof(self, proof: ForkProof) -> bool:
        """Keep `proof` (the first one per offender and sequence); True if it is new."""
        cur = self._c.execute(
            "INSERT OR IGNORE INTO fork_proofs VALUES (?, ?, ?)",
            (proof.offender, proof.sequence, pack(proof.to_wire())),
        )
        new: bool = cur.rowcount == 1
        if new and self._fresh is not None:
            # Noted for sharing at once (Store.take_fresh_fork_proofs) even if this transaction
            # is rolled back: a proof is two signed blocks, true wherever it is kept.
            self._fresh.append(proof)
        return new

    def has_fork_proof(self, public_key: bytes) -> bool:
        row = self._c.execute(
            "SELECT 1 FROM fork_proofs WHERE public_key = ? LIMIT 1", (public_key,)
        ).fetchone()
        return row is not None

    def fork_proofs(self, public_key: bytes | None = None, limit: int = 1000) -> list[ForkProof]:
        if public_key is None:
            rows = self._c.execute("SELECT proof FROM fork_proofs LIMIT ?", (limit,)).fetchall()
        else:
            rows = self._c.execute(
                "SELECT proof FROM fork_proofs WHERE public_key = ? LIMIT ?", (public_key, limit)
            ).fetchall()
        # Proofs were checked before they were kept; decoding re-checks them, so one altered in
        # the database is dropped here rather than used against an innocent peer.
        out = []
        for (data,) in rows:
            try:
                out.append(ForkProof.from_wire(unpack(data, "stored fork proof")))
            except Exception:  # any damage means "not a proof"
                continue
        return out

    # --- meta -----------------------------------------------------------------------------

    def meta(self, key: str) -> Any:
        row = self._c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: Any) -> None:
        self._c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


class Store:
    """The ledger database; `read()` and `write()` give a `Txn` inside one transaction."""

    def __init__(self, path: Path, *, synchronous: str = "FULL", create: bool = True) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = path
        if create:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            uri = f"file:{path}?mode=rwc"
        else:
            uri = f"file:{path}?mode=rw"  # the CLI must not create a ledger by looking at it
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly
        # what a `with` block covers. check_same_thread=False: the lock below serializes use.
        self._conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._lock = threading.RLock()
        # Fork proofs new to this store since they were last taken (bounded: more would wait
        # for the next gossip, which sends every proof held).
        self._fresh: deque[ForkProof] = deque(maxlen=FRESH_FORK_PROOFS)
        c = self._conn
        c.execute("PRAGMA journal_mode = WAL")
        # FULL: each COMMIT is fsynced, so a committed block survives power loss, not just kill -9
        # (NORMAL survives kill -9 only). Our signature leaves the process after COMMIT, and losing
        # a block it covers would make this node sign a second block at that sequence: a fork.
        c.execute(f"PRAGMA synchronous = {synchronous}")
        if create:
            self._create_schema()
            with self.write() as txn:
                if txn.meta("schema") is None:
                    txn.set_meta("schema", SCHEMA_VERSION)
        with self.read() as txn:
            version = txn.meta("schema")
        if version != SCHEMA_VERSION:
            self.close()
            raise LedgerMisuse(
                f"{path} has ledger schema {version!r}; this rainnet reads {SCHEMA_VERSION}"
            )

    def _create_schema(self) -> None:
        with self._lock:
            # executescript commits first; it runs alone, before any transaction of ours.
            self._conn.executescript(_SCHEMA)

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """One write transaction: committed if the block ends normally, rolled back otherwise."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Txn(self._conn, self._fresh)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Txn]:
        """One read transaction: a consistent snapshot while the node keeps writing."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield Txn(self._conn)
            finally:
                self._conn.execute("COMMIT")

    def take_fresh_fork_proofs(self) -> tuple[ForkProof, ...]:
        """The fork proofs kept since the last call, once each (oldest first)."""
        with self._lock:
            if not self._fresh:
                return ()
            out = {p.first.position: p for p in self._fresh}
            self._fresh.clear()
        return tuple(out.values())

    @property
    def has_fresh_fork_proofs(self) -> bool:
        return bool(self._fresh)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
