"""`rain credit`, `rain credit history`, `rain credit verify [PEER]`: the node's ledger, read from
`HOME/ledger.sqlite3` directly (no running node needed; WAL lets it read while the node writes).

These commands never write: the database is opened without creating it, and a missing one reads
as a new identity's empty ledger.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ledger.audit import verify_store
from ledger.balance import Balance
from ledger.store import LEDGER_FILE, HistoryRow, Store
from ledger.units import DEFAULT_FLOOR_MILLI, credits, format_credits
from node.cli import CliError
from node.home import resolve_home
from rainnet.identity import (
    IdentityError,
    load,
    peer_id_from_public_bytes,
    public_bytes_from_peer_id,
)


def register(sub: Any) -> None:
    p = sub.add_parser("credit", help="this node's credit: balance, earned, spent, floor")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_balance)
    credit = p.add_subparsers(dest="credit_command", metavar="SUBCOMMAND")
    h = credit.add_parser("history", help="one line per exchange: time, peer, job, amount")
    h.add_argument("-n", "--limit", type=int, default=50, help="most recent N (default 50)")
    h.add_argument("--json", action="store_true", help="print JSON")
    h.set_defaults(func=cmd_history)
    v = credit.add_parser(
        "verify", help="check the whole chain (ours, or the copy we hold of PEER's)"
    )
    v.add_argument("peer", nargs="?", metavar="PEER", help="a peer id (default: this node)")
    v.add_argument("--json", action="store_true", help="print JSON")
    v.set_defaults(func=cmd_verify)


def _own_key(home: Path) -> bytes:
    try:
        return load(home).public_raw
    except IdentityError as exc:
        raise CliError(str(exc)) from None


@contextmanager
def _store(home: Path) -> Iterator[Store | None]:
    path = home / LEDGER_FILE
    if not path.exists():
        yield None  # nothing recorded yet: a new identity's ledger is empty
        return
    try:
        store = Store(path, create=False)
    except Exception as exc:  # unreadable file, not SQLite, another schema: say so in one line
        raise CliError(f"cannot read {path}: {exc}") from None
    try:
        yield store
    finally:
        store.close()


def cmd_balance(args: argparse.Namespace) -> int:
    home = resolve_home(args.home)
    me = _own_key(home)
    floor = DEFAULT_FLOOR_MILLI
    balance = Balance()
    with _store(home) as store:
        if store is not None:
            with store.read() as txn:
                balance = txn.own_balance(me)
                recorded = txn.meta("floor_milli")
            floor = floor if recorded is None else int(recorded)
    if args.json:
        out = {
            "peer_id": peer_id_from_public_bytes(me),
            "balance": credits(balance.balance_milli),
            "earned": credits(balance.earned_milli),
            "spent": credits(balance.spent_milli),
            "limit": credits(floor),
            "pending": credits(balance.pending_milli),
            "exchanges": balance.exchanges,
            "balance_milli": balance.balance_milli,
            "earned_milli": balance.earned_milli,
            "spent_milli": balance.spent_milli,
            "limit_milli": floor,
        }
        print(json.dumps(out, indent=2))
        return 0
    rows = [
        ("balance", f"{format_credits(balance.balance_milli)} credits"),
        ("earned", format_credits(balance.earned_milli)),
        ("spent", format_credits(balance.spent_milli)),
        ("floor", f"{format_credits(floor)} (jobs that could take you below it are refused)"),
        ("exchanges", str(balance.exchanges)),
    ]
    if balance.pending_milli:
        rows.append(("pending", f"{format_credits(balance.pending_milli)} (awaiting countersign)"))
    for key, value in rows:
        print(f"{key + ':':<11}{value}")
    return 0


def _line(h: HistoryRow) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.time_ms / 1000)),
        "peer": peer_id_from_public_bytes(h.peer),
        "job": h.job_id,
        "amount": credits(h.amount_milli),
        "state": h.role,
        "sequence": h.sequence,
    }


def cmd_history(args: argparse.Namespace) -> int:
    home = resolve_home(args.home)
    me = _own_key(home)
    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    rows: list[HistoryRow] = []
    with _store(home) as store:
        if store is not None:
            with store.read() as txn:
                rows = txn.history(me, args.limit)
    lines = [_line(h) for h in rows]
    if args.json:
        print(json.dumps(lines, indent=2))
        return 0
    if not lines:
        print("no exchanges yet: run rain-node to serve others' jobs and earn credit")
    for h, line in zip(rows, lines, strict=True):
        amount = ("+" if h.amount_milli > 0 else "") + format_credits(h.amount_milli)
        note = "  (pending: not countersigned yet)" if h.role == "pending" else ""
        print(f"{line['time']}  {line['peer']}  {h.job_id}  {amount}{note}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    home = resolve_home(args.home)
    me = _own_key(home)
    key = me
    if args.peer:
        try:
            key = public_bytes_from_peer_id(args.peer)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    name = peer_id_from_public_bytes(key)
    with _store(home) as store:
        if store is None:
            if key != me:
                raise CliError(f"we hold no chain of {name}")
            print(f"ok: no blocks yet ({name})")
            return 0
        if key != me:
            with store.read() as txn:
                state = txn.chain_state(key)
                forks = bool(tuple(txn.fork_proofs(key)))
            if (state is None or state.verified == 0) and not forks:
                # (Blocks of it we hold from our own exchanges are no copy of its chain:
                # "ok, 0 blocks" would say it was checked.)
                raise CliError(
                    f"we hold no copy of {name}'s chain: it is fetched and checked when that "
                    "peer next offers us a job"
                )
        try:
            report = verify_store(store, key, me)
        except sqlite3.DatabaseError as exc:  # the file itself is damaged
            raise CliError(f"cannot read {home / LEDGER_FILE}: {exc}") from None
    if args.json:
        out = {
            "peer_id": name,
            "ok": report.ok,
            "blocks": report.blocks,
            "balance": credits(report.balance.balance_milli),
            "first_bad_block": None if report.problem is None else report.problem.sequence,
            "problem": None if report.problem is None else report.problem.describe(),
            "forks": [p.describe() for p in report.forks],
        }
        print(json.dumps(out, indent=2))
        return 0 if report.ok else 1
    if report.problem is not None:
        raise CliError(f"verify failed: {report.problem.describe()}")
    if report.forks:
        raise CliError(f"verify failed: {report.forks[0].describe()}")
    print(
        f"ok: {report.blocks} blocks of {name} verified; balance "
        f"{format_credits(report.balance.balance_milli)} credits"
    )
    return 0
