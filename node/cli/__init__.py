"""`rain`, the command-line interface: a thin client of the node's home and control socket.

It never imports libp2p (that costs ~1 s); commands that need the running node ask it over the
user-only Unix socket in the node's home, and commands about local state (credit, sandbox) read it
directly. Each group of commands lives in its own module with a `register(subparsers)` function,
and only the module of the command being run is imported, so `rain status` does not pay for the
ledger's or the sandbox's imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Which module registers (and runs) each top-level command.
COMMANDS: dict[str, str] = {
    "status": "node.cli.status",
    "peers": "node.cli.status",
    "credit": "node.cli.credit",
    "sandbox": "node.cli.sandbox",
    "policy": "node.cli.policy",
    "submit": "node.cli.jobs",
    "jobs": "node.cli.jobs",
    "logs": "node.cli.jobs",
    "get": "node.cli.jobs",
    "cancel": "node.cli.jobs",
    "workers": "node.cli.workers",
    "forgive": "node.cli.workers",
    "panel": "node.cli.panel",
    "light": "node.cli.light",
    "top": "node.cli.top",
    "demo": "node.cli.demo",
    "pool": "node.cli.pool",
    "mpi": "node.cli.mpi",
}


class CliError(Exception):
    """A failure to report to the user as one line (exit status 1), without a traceback."""


def size_arg(text: str) -> int:
    """argparse type for sizes (`512M`), so every command reads them alike."""
    from node.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_arg(text: str) -> float:
    """argparse type for durations (`30s`, `10m`)."""
    from node.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with a known `command`, only that command's module is imported."""
    parser = argparse.ArgumentParser(prog="rain", description="rainnet: pooled idle computers.")
    parser.add_argument("--home", help="the node's home (default: $RAIN_HOME or the XDG data dir)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The first positional argument (the command), skipping the global options."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--home":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._subparsers._actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            found: argparse.ArgumentParser = action.choices[command]
            return found
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(args_list))
    args, unknown = parser.parse_known_args(args_list)
    if unknown:  # the command's own usage, not rain's: that is where the option was wrong
        _command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code = args.func(args)
    except CliError as exc:
        print(f"rain: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    return int(code or 0)
