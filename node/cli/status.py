"""`rain status` and `rain peers`: what the running node knows, asked over its control socket."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from node.cli import CliError
from node.control import channel as control
from node.home import CONTROL_SOCKET, resolve_home
from node.units import format_size


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="this node: peer id, addresses, state, peers, backends")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "peers",
        help="the live peers this node sees, like sinfo",
        description="The live peers: CPUS and MEMORY are what each lends (its guests' share).",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--full", action="store_true", help="whole peer ids (default: their end)")
    p.set_defaults(func=cmd_peers)


def ask(args: argparse.Namespace, op: str, **params: Any) -> dict[str, Any]:
    sock = resolve_home(args.home) / CONTROL_SOCKET
    try:
        return control.request(sock, op, **params)
    except control.ControlError as exc:
        raise CliError(str(exc)) from None


def cmd_status(args: argparse.Namespace) -> int:
    st = ask(args, "status")
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    rows = [
        ("peer id", st["peer_id"]),
        ("state", st["state"]),
        ("peers", str(st["peers"])),
        ("network", f"private pool {st['pool']}" if st.get("pool") else "open"),
        ("sandbox", ", ".join(st["backends"]) or "none (cannot run others' jobs)"),
        ("resources", f"{st['cpus']} CPUs, {format_size(st['memory'])} memory, {st['gpus']} GPUs"),
        ("lend", st["lend"]),
        ("version", st["version"]),
    ]
    rows += [("address", a) for a in st["addrs"]]
    rows += [("bootstrap", f"{a}: unreachable") for a in st.get("unreachable_bootstrap", [])]
    for key, value in rows:
        print(f"{key + ':':<11}{value}")
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    peers = ask(args, "peers")["peers"]
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    now = time.time()
    header = ("PEER", "NAME", "STATE", "CPUS", "MEMORY", "GPUS", "SANDBOX", "LAST SEEN")
    table = [header]
    for p in peers:
        seen = p.get("last_seen")
        lends = p.get("lends")
        table.append(
            (
                p["peer_id"] if args.full else f"…{p['peer_id'][-12:]}",
                (p.get("name") or "-")[:24],
                "never lends" if lends is False else p["state"],
                _or_dash(p.get("cpus")),
                format_size(p["memory"]) if p.get("memory") else "-",
                _or_dash(p.get("gpus")),
                ",".join(p.get("backends") or []) or "-",
                f"{max(0.0, now - seen):.1f}s ago" if seen else "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())
    return 0


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
