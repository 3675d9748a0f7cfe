"""`rain status` and `rain peers`: what the running node knows, asked over its control socket."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from node.cli import CliError
from node.control import channel as control
from node.home import CONTROL_SOCKET, resolve_home
from node.units import format_size, parse_size


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="this node: peer id, addresses, state, peers, backends")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "peers",
        help="this node's neighbourhood (the live peers it is connected to), like sinfo",
        description="The live peers this node keeps connections to, and how it knows each "
        "(LAN: mDNS; DHT; bootstrap; hint: named by a peer; inbound: it dialed us; job: work in "
        "progress with it). CPUS and MEMORY are what each lends (its guests' share). With "
        "--find: the workers found in the DHT, beyond the neighbourhood.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--full", action="store_true", help="whole peer ids (default: their end)")
    p.add_argument("--find", action="store_true", help="look workers up in the DHT")
    p.add_argument("--cpus", type=int, default=0, help="with --find: at least N CPUs")
    p.add_argument("--gpus", type=int, default=0, help="with --find: at least N GPUs")
    p.add_argument("--mem", default=None, help="with --find: at least SIZE memory (e.g. 4G)")
    p.add_argument("--mpi", action="store_true", help="with --find: only those taking MPI ranks")
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
    if st.get("max_connections"):
        rows.append(
            (
                "neighbours",
                f"{st['connections']} connections (at most {st['max_connections']}; "
                f"{st['trimmed']} trimmed since the start)",
            )
        )
    if st.get("network_size"):
        rows.append(("network", f"about {st['network_size']} nodes (the DHT's estimate)"))
    rows += [("address", a) for a in st["addrs"]]
    rows += [("bootstrap", f"{a}: unreachable") for a in st.get("unreachable_bootstrap", [])]
    for key, value in rows:
        print(f"{key + ':':<11}{value}")
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    filters = (args.cpus, args.gpus, args.mem, args.mpi) != (0, 0, None, False)
    if filters and not args.find:
        raise CliError("--cpus, --gpus, --mem and --mpi choose among workers found: add --find")
    if args.find:
        return _find(args)
    peers = ask(args, "peers")["peers"]
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    now = time.time()
    header = ("PEER", "NAME", "KNOWN", "STATE", "CPUS", "MEMORY", "GPUS", "SANDBOX", "LAST SEEN")
    table = [header]
    for p in peers:
        seen = p.get("last_seen")
        lends = p.get("lends")
        table.append(
            (
                p["peer_id"] if args.full else f"…{p['peer_id'][-12:]}",
                (p.get("name") or "-")[:24],
                p.get("known") or "-",
                "never lends" if lends is False else p["state"],
                _or_dash(p.get("cpus")),
                format_size(p["memory"]) if p.get("memory") else "-",
                _or_dash(p.get("gpus")),
                ",".join(p.get("backends") or []) or "-",
                f"{max(0.0, now - seen):.1f}s ago" if seen else "-",
            )
        )
    _print_table(table)
    st = ask(args, "status")
    size = st.get("network_size")
    print(
        f"\nneighbours: {len(peers)}; connections: {st.get('connections', 0)} "
        f"(at most {st.get('max_connections', '?')})"
        + (f"; network: about {size} nodes (the DHT's estimate)" if size else "")
    )
    return 0


def _find(args: argparse.Namespace) -> int:
    """`rain peers --find`: workers looked up in the DHT (provider records, then each one's
    signed record), those with what was asked for."""
    try:
        memory = parse_size(args.mem) if args.mem else 0
    except ValueError as exc:
        raise CliError(f"--mem: {exc}") from None
    found = [
        w
        for w in ask(args, "workers")["workers"]
        if w["cpus"] >= args.cpus
        and w["gpus"] >= args.gpus
        and w["memory"] >= memory
        and (w.get("mpi") or not args.mpi)
    ]
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no worker found in the DHT with that (it may be small, or still filling)")
        return 0
    table = [("PEER", "NAME", "STATE", "CPUS", "MEMORY", "GPUS", "MPI", "SANDBOX")]
    for w in found:
        table.append(
            (
                w["peer_id"] if args.full else f"…{w['peer_id'][-12:]}",
                (w.get("name") or "-")[:24],
                w["state"],
                str(w["cpus"]),
                format_size(w["memory"]),
                str(w["gpus"]),
                "yes" if w.get("mpi") else "no",
                ",".join(w.get("backends") or []) or "-",
            )
        )
    _print_table(table)
    print(f"\n{len(found)} workers found in the DHT")
    return 0


def _print_table(table: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
