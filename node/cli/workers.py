"""`rain workers` and `rain forgive`: the workers this node will not offer jobs to, and why.

A worker is distrusted when it was caught out on one of our jobs (outvoted by the other
replicas, overcharging, withholding a result it was paid for); for a while it is offered
nothing, which shapes where jobs run, so it is shown here and can be forgiven.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from node.cli.status import ask


def register(sub: Any) -> None:
    p = sub.add_parser("workers", help="workers this node offers no jobs to, and why")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_workers)

    p = sub.add_parser("forgive", help="trust a distrusted worker again")
    p.add_argument("peer_id", metavar="PEER", help="its id, or a unique start or end of it")
    p.set_defaults(func=cmd_forgive)


def cmd_workers(args: argparse.Namespace) -> int:
    rows = ask(args, "distrusted")["untrusted"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no worker is distrusted: jobs may go to every worker")
        return 0
    now = time.time()
    table = [("WORKER", "JOB", "FOR", "REASON")]
    for r in rows:
        left = max(0.0, r["until"] - now)
        table.append((r["peer_id"][-12:], r["job_id"], f"{left / 3600:.0f}h more", r["reason"]))
    widths = [max(len(t[i]) for t in table) for i in range(3)]
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t[:3], widths, strict=True)) + "  " + t[3])
    print(f"\nthese {len(rows)} are offered no jobs; `rain forgive PEER` trusts one again")
    return 0


def cmd_forgive(args: argparse.Namespace) -> int:
    peer_id = ask(args, "forgive", peer_id=args.peer_id)["peer_id"]
    print(f"{peer_id}: trusted again")
    return 0
