"""`rain sandbox check` and `rain sandbox run`: the local sandbox, without a running node.

`check` says which backends can isolate jobs on this machine (and why not, for the others), then
runs the self-test of every wall of each one that can. `run` runs one local job as the owner would
(owner's policy: the network only if asked) and prints its result; its output streams to the
terminal while it runs. Sizes read like `512M`, durations like `30s` (see `node.units`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import trio

from node.cli import CliError, duration_arg, size_arg
from node.home import resolve_home
from node.units import format_size, parse_size
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxError
from sandbox.output import Stream
from sandbox.policy import OWNER_POLICY
from sandbox.result import JobResult
from sandbox.spec import JobSpec, Limits, Network


def register(sub: Any) -> None:
    p = sub.add_parser("sandbox", help="run jobs behind walls; which backends work here")
    cmds = p.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND", required=True)

    check = cmds.add_parser(
        "check", help="which backends work on this machine, and a self-test of each wall"
    )
    check.add_argument("--backend", choices=("all", "docker", "native"), default="all")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=cmd_check)

    run = cmds.add_parser("run", help="run a local job and print its result")
    run.add_argument("--backend", choices=("auto", "docker", "native"), default="auto")
    run.add_argument("--cpus", type=_cpus, default=1.0, help="CPU cores (default 1)")
    run.add_argument("--mem", type=size_arg, default=parse_size("512M"), help="memory (512M)")
    run.add_argument("--time", type=duration_arg, default=600.0, help="wall time (default 10m)")
    run.add_argument("--cpu-time", type=duration_arg, help="CPU time limit (default none)")
    run.add_argument("--pids", type=int, default=256, help="processes (default 256)")
    run.add_argument("--disk", type=size_arg, default=parse_size("1G"), help="largest file (1G)")
    run.add_argument("--image", help="a local Docker image to run in (docker backend)")
    run.add_argument("--net", action="store_true", help="give the job network access")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="PATH",
        help="a file or directory under /job to hash after the run (repeatable)",
    )
    run.add_argument("--result-dir", help="copy the output files here")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")
    run.set_defaults(func=cmd_run)


# -- argument types --------------------------------------------------------------------------


def _cpus(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of CPUs: {text!r}") from None


def _config(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig.for_home(resolve_home(args.home), policy=OWNER_POLICY)


# -- run -------------------------------------------------------------------------------------


def build_spec(args: argparse.Namespace) -> JobSpec:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("give the command to run after --, e.g. rain sandbox run -- echo hi")
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--env {item!r}: use NAME=VALUE")
        env[name] = value
    try:
        limits = Limits(
            cpus=args.cpus,
            memory=args.mem,
            wall_seconds=args.time,
            cpu_seconds=args.cpu_time,
            disk=args.disk,
            pids=args.pids,
            network=Network.INTERNET if args.net else Network.NONE,
        )
        return JobSpec.create(
            command, image=args.image, env=env, outputs=args.output, limits=limits
        )
    except SandboxError as exc:
        raise CliError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    config = _config(args)
    result_dir = Path(args.result_dir).absolute() if args.result_dir else None
    try:
        result = trio.run(_run, config, args.backend, spec, result_dir, not args.json)
    except SandboxError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(summary(result), file=sys.stderr)
    if result.ok:
        return 0
    return result.exit_code if result.exit_code and 0 < result.exit_code < 256 else 1


async def _run(
    config: SandboxConfig, backend_name: str, spec: JobSpec, result_dir: Path | None, stream: bool
) -> JobResult:
    from sandbox.select import open_backend

    backend = await open_backend(config, backend_name, for_spec=spec)
    async with backend.open_job(spec, result_dir=result_dir) as job:
        if stream:
            async for chunk in job.output():
                out = sys.stdout if chunk.stream is Stream.STDOUT else sys.stderr
                out.buffer.write(chunk.data)
                out.flush()
        return await job.wait()


def summary(result: JobResult) -> str:
    code = "" if result.exit_code is None else f" (exit {result.exit_code})"
    parts = [
        f"rain: {result.reason}{code} on {result.backend}",
        f"cpu {result.cpu_seconds:.3f}s",
        f"peak memory {format_size(result.peak_memory)}",
        f"wall {result.wall_seconds:.3f}s",
    ]
    if result.suspended_seconds:
        parts.append(f"suspended {result.suspended_seconds:.3f}s")
    lines = [", ".join(parts)]
    for out in result.outputs:
        lines.append(f"  {out.sha256}  {out.path} ({format_size(out.size)})")
    for missing in result.missing_outputs:
        lines.append(f"  missing: {missing}")
    if result.stdout_truncated or result.stderr_truncated:
        lines.append("  (output beyond the cap was dropped)")
    return "\n".join(lines)


# -- check -----------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args)
    # Checked as for a node that takes MPI ranks: how narrow their network wall is here.
    config = dataclasses.replace(
        config, policy=dataclasses.replace(config.policy, allow_group=True)
    )
    report = trio.run(_check, config, args.backend)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_check(report))
    return 0 if report["can_host_guests"] else 1


async def _check(config: SandboxConfig, which: str) -> dict[str, Any]:
    from sandbox import cgroups, select, selftest

    names = select.BACKENDS if which == "all" else (which,)
    opened, availability = await select.probe(config, names)
    backends: dict[str, Any] = {}
    for a in availability:
        entry: dict[str, Any] = {"available": a.available, "reason": a.reason, "walls": []}
        if a.available:
            checks = await selftest.run_all(opened[a.name])
            entry["walls"] = [
                {"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks
            ]
            entry["all_walls_hold"] = all(c.passed is not False for c in checks)
        backends[a.name] = entry
    try:
        layout = cgroups.detect_layout().describe()
    except OSError as exc:
        layout = {"error": str(exc)}
    good = [n for n, e in backends.items() if e["available"] and e.get("all_walls_hold")]
    from sandbox.native import NativeBackend

    native = opened.get("native")
    return {
        "mpi_ranks": native.wall.describe()
        if isinstance(native, NativeBackend)
        else "not here (needs the native backend)",
        "backends": backends,
        "cgroups": layout,
        "can_host_guests": bool(good),
        "usable": good,
        "message": "" if good else select.no_isolation_message(availability),
    }


def render_check(report: dict[str, Any]) -> str:
    lines = []
    for name, entry in report["backends"].items():
        if not entry["available"]:
            lines.append(f"{name}: unavailable: {entry['reason']}")
            continue
        verdict = "all walls hold" if entry.get("all_walls_hold") else "A WALL FAILED"
        lines.append(f"{name}: available, {verdict}")
        for wall in entry["walls"]:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[wall["passed"]]
            lines.append(f"  {mark} {wall['name']:<15} {wall['detail']}")
    lines.append("cgroups: " + ", ".join(f"{k} {v}" for k, v in report["cgroups"].items()))
    lines.append(f"MPI ranks: {report['mpi_ranks']}")
    if report["can_host_guests"]:
        lines.append(f"guest jobs: yes ({', '.join(report['usable'])})")
    else:
        lines.append(f"guest jobs: NO. {report['message']}")
    return "\n".join(lines)
