"""`rain`, the command-line interface: a thin client of the node's home and control socket.

It never imports libp2p (that costs ~1 s); commands that need the running node ask it over the
user-only Unix socket in the node's home, and commands about local state (credit, sandbox) read it
directly. Each group of commands lives in its own module with a `register(subparsers)` function.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that add subcommands; each defines register(subparsers) and sets `func` on its parsers.
COMMAND_MODULES: tuple[str, ...] = ("node.cli_node",)


class CliError(Exception):
    """A failure to report to the user as one line (exit status 1), without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rain", description="rainnet: pooled idle computers.")
    parser.add_argument("--home", help="the node's home (default: $RAIN_HOME or the XDG data dir)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except CliError as exc:
        print(f"rain: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
