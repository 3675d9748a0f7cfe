"""`rain submit`, `rain jobs`, `rain logs`, `rain get`, `rain cancel`: jobs run on other peers.

All of them ask the local node over its control socket; the node finds a worker, pays it in
credit and keeps the result in its home (`HOME/jobs/<job id>/`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from node.cli import CliError
from node.cli_node import ask
from node.units import parse_duration, parse_size

POLL = 0.2
MAX_WAIT_POLLS = 10_000_000  # bounded, though --wait follows a job as long as it runs


def register(sub: Any) -> None:
    p = sub.add_parser("submit", help="run a command on an idle peer, paid in credit")
    p.add_argument("--cpus", type=float, default=1.0, help="CPUs (default 1)")
    p.add_argument("--mem", type=_size, default="512M", help="memory, like 512M or 2G")
    # 10 minutes: a worker admits a job only if its worst case (CPUs x time) keeps the requester
    # above its credit floor, so a long default would lock new identities out after one job.
    p.add_argument("--time", type=_duration, default="10m", help="wall time limit (default 10m)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs (default 0)")
    p.add_argument("--image", help="a Docker image on the worker (default: the host's /usr)")
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="K",
        help="run on K distinct workers and compare results; outvoted ones are not paid",
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH[:NAME]",
        help="a local file placed in the job's directory (repeatable)",
    )
    p.add_argument(
        "--output", action="append", default=[], metavar="PATH", help="a file to bring back"
    )
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument(
        "--wait", action="store_true", help="stream the output; exit with the job's code"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="this node's jobs, like squeue")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("logs", help="a job's stdout and stderr")
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("get", help="copy a finished job's outputs, hash-checked")
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("--to", default=".", metavar="DIR", help="where to put them (default .)")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("cancel", help="cancel a job (the worker stops it and is freed)")
    p.add_argument("job_id", metavar="JOB")
    p.set_defaults(func=cmd_cancel)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_submit(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise CliError("give the command after --, e.g. rain submit -- echo hello")
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--env {item!r}: use NAME=VALUE")
        env[name] = value
    inputs = []
    for item in args.input:
        src, _, name = item.partition(":")
        inputs.append([str(Path(src).absolute()), name or Path(src).name])
    req = {
        "argv": argv,
        "cpus": args.cpus,
        "memory": args.mem,
        "wall_seconds": args.time,
        "gpus": args.gpus,
        "replicas": args.replicas,
        "image": args.image,
        "inputs": inputs,
        "outputs": args.output,
        "env": env,
    }
    job_id = ask(args, "submit", **req)["job_id"]
    if not args.wait:
        print(json.dumps({"job_id": job_id}) if args.json else job_id)
        return 0
    final = _follow(args, job_id, echo=not args.json)
    if args.json:
        print(json.dumps(final, indent=2))
    if final["state"] != "done":
        print(f"rain: job {job_id} {final['state']}: {final.get('error') or ''}", file=sys.stderr)
        return 1
    code = final.get("exit_code")
    return int(code) if isinstance(code, int) else 1


def _follow(args: argparse.Namespace, job_id: str, echo: bool) -> dict[str, Any]:
    """Poll the job, printing new output, until it ends; its final state."""
    offsets = {"stdout_from": 0, "stderr_from": 0}
    for _ in range(MAX_WAIT_POLLS):
        st = ask(args, "job", job_id=job_id, **offsets)
        if echo:
            sys.stdout.write(st["stdout"])
            sys.stderr.write(st["stderr"])
            sys.stdout.flush()
        offsets = {"stdout_from": st["stdout_next"], "stderr_from": st["stderr_next"]}
        if st["finished"]:
            return st
        time.sleep(POLL)
    raise CliError(f"stopped following job {job_id}")


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = ask(args, "jobs")["jobs"]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    rows = [("JOB", "STATE", "WORKER", "ELAPSED", "CPU-S", "CREDIT", "COMMAND")]
    for j in jobs:
        rows.append(
            (
                j["job_id"],
                j["state"],
                (j["worker"] or "-")[-12:],
                f"{j['elapsed']:.1f}s",
                f"{j['cpu_seconds']:.3f}",
                f"{j['credit']:.3f}",
                " ".join(j["argv"])[:40],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    if args.follow:
        _follow(args, args.job_id, echo=True)
        return 0
    st = ask(args, "job", job_id=args.job_id)
    sys.stdout.write(st["stdout"])
    sys.stderr.write(st["stderr"])
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    st = ask(args, "job", job_id=args.job_id)
    if st["state"] != "done":
        raise CliError(f"job {args.job_id} is {st['state']}: no outputs yet")
    src = Path(st["result_dir"])
    dest = Path(args.to)
    dest.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((src / "manifest.json").read_text())
    for entry in manifest["files"]:
        origin = src / entry["stored_as"]
        target = dest / entry["name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            raise CliError(f"{target}: sha256 {digest} differs from the signed {entry['sha256']}")
        print(target)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    st = ask(args, "cancel", job_id=args.job_id)
    print(f"{st['job_id']}: cancel sent ({st['state']})")
    return 0
