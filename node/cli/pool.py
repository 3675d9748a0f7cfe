"""`rain pool`: private pools. `create NAME --out FILE` makes a pool's secret, writes it to FILE
(to copy to the user's other machines) and joins this home; `join FILE` joins this home; `list`
and `leave NAME`. A node is in a pool when started with `rain-node --pool NAME`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from node import pools
from node.cli import CliError
from node.home import resolve_home
from rainnet.pool import PoolError, PoolSecret


def register(sub: Any) -> None:
    p = sub.add_parser("pool", help="private pools: only your machines, with a shared secret")
    cmds = p.add_subparsers(dest="pool_command", metavar="ACTION", required=True)
    c = cmds.add_parser("create", help="make a pool's secret, write it to FILE, join this home")
    c.add_argument("name")
    c.add_argument("--out", required=True, metavar="FILE", help="where to write the secret")
    c.set_defaults(func=cmd_create)
    j = cmds.add_parser("join", help="join this home to the pool whose secret FILE holds")
    j.add_argument("file")
    j.set_defaults(func=cmd_join)
    ls = cmds.add_parser("list", help="the pools this home has joined")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_list)
    lv = cmds.add_parser("leave", help="forget a pool's secret in this home")
    lv.add_argument("name")
    lv.set_defaults(func=cmd_leave)


def cmd_create(args: argparse.Namespace) -> int:
    home = resolve_home(args.home)
    out = Path(args.out).expanduser()
    try:
        secret = PoolSecret.create(args.name)
        if pools.pool_path(home, secret.name).exists():
            raise CliError(f"this home has joined a pool named {secret.name!r} already")
        if out.exists():
            raise CliError(f"{out} exists: give a new file to write the secret to")
        pools.write_secret_file(out, secret)
        pools.join(home, secret)
    except PoolError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror}") from None
    print(f"pool {secret.name!r} created; its secret is in {out} (keep it private).")
    print(f"On each of your other machines: rain pool join {out.name}")
    print(f"Then start every node with: rain-node --pool {secret.name}")
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    home = resolve_home(args.home)
    try:
        secret = pools.read_secret_file(Path(args.file).expanduser())
        pools.join(home, secret)
    except PoolError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    print(f"joined pool {secret.name!r} (fingerprint {secret.fingerprint()}).")
    print(f"Start the node with: rain-node --pool {secret.name}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    held = pools.joined(resolve_home(args.home))
    if args.json:
        rows = [{"name": s.name, "fingerprint": s.fingerprint()} for s in held]
        print(json.dumps(rows, indent=2))
    elif not held:
        print("no pools: this home's node is in the open network (rain pool create NAME ...)")
    else:
        for s in held:
            print(f"{s.name}  {s.fingerprint()}")
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    try:
        if not pools.leave(resolve_home(args.home), args.name):
            raise CliError(f"this home has not joined pool {args.name!r}")
    except PoolError as exc:
        raise CliError(str(exc)) from None
    print(f"left pool {args.name!r} (restart the node without --pool to join the open network)")
    return 0
