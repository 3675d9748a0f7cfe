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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.cli import CliError, duration_arg, size_arg
from node.cli.status import ask
from node.units import parse_duration, parse_size

LONG_POLL = 4.0  # the node answers as soon as there is output or the job ends
MAX_WAIT_POLLS = 10_000_000  # bounded, though --wait follows a job as long as it runs


def register(sub: Any) -> None:
    p = sub.add_parser("submit", help="run a command on an idle peer, paid in credit")
    p.add_argument("--file", type=Path, metavar="JOB.toml", help="job file; flags override it")
    p.add_argument("--cpus", type=float, help="CPUs (default 1)")
    p.add_argument("--mem", type=size_arg, help="memory, like 512M or 2G (default 512M)")
    p.add_argument("--time", type=duration_arg, help="wall time limit (default 10m)")
    p.add_argument("--gpus", type=int, help="GPUs (default 0)")
    p.add_argument(
        "--array",
        metavar="RANGE",
        help="one job per index, like 0-9 or 1,3,5-7; each sees RAIN_ARRAY_TASK_ID",
    )
    p.add_argument("--image", help="a Docker image on the worker (default: the host's /usr)")
    p.add_argument(
        "--replicas",
        type=int,
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


# 10 minutes by default: a worker admits a job only if its worst case (CPUs x time) keeps the
# requester above its credit floor, so a long default would lock new identities out after a job.
SUBMIT_DEFAULTS: dict[str, Any] = {
    "cpus": 1.0,
    "mem": 512 << 20,
    "time": 600.0,
    "gpus": 0,
    "replicas": 1,
    "image": None,
    "array": None,
}
MAX_ARRAY = 10_000
BATCH = 1000  # array tasks per submit request, and jobs per `finished` request (job_control)


def parse_array(text: str) -> list[int]:
    """Indices of `0-9`, `1,3,5-7` (at most MAX_ARRAY of them)."""
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise CliError(f"--array {text!r}: use indices and ranges like 0-9 or 1,3,5-7")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise CliError(f"--array {text!r}: {part} runs backwards")
        out.extend(range(first, last + 1))
        if len(out) > MAX_ARRAY:
            raise CliError(f"--array {text!r}: more than {MAX_ARRAY} jobs")
    return sorted(set(out))


def _job_file(path: Path) -> dict[str, Any]:
    """The fields of a TOML job file: command = [...], cpus, mem = "2G", time = "10m", gpus,
    image, replicas, array = "0-9", inputs = ["path[:name]", ...], outputs = [...], [env]."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"{path}: {exc}") from None
    known = {"command", "cpus", "mem", "time", "gpus", "image", "replicas", "array"}
    known |= {"inputs", "outputs", "env"}
    unknown = set(doc) - known
    if unknown:
        raise CliError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        if "mem" in doc:
            doc["mem"] = parse_size(str(doc["mem"]))
        if "time" in doc:
            doc["time"] = parse_duration(str(doc["time"]))
    except ValueError as exc:
        raise CliError(f"{path}: {exc}") from None
    return doc


def cmd_submit(args: argparse.Namespace) -> int:
    fields = dict(SUBMIT_DEFAULTS)
    from_file = _job_file(args.file) if args.file else {}
    fields.update({k: v for k, v in from_file.items() if k in SUBMIT_DEFAULTS})
    fields.update({k: getattr(args, k) for k in SUBMIT_DEFAULTS if getattr(args, k) is not None})
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    argv = argv or list(from_file.get("command") or [])
    if not argv or not all(isinstance(a, str) for a in argv):
        raise CliError("give the command after --, e.g. rain submit -- echo hello")
    env = {str(k): str(v) for k, v in (from_file.get("env") or {}).items()}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--env {item!r}: use NAME=VALUE")
        env[name] = value
    inputs = []
    for item in [*(from_file.get("inputs") or []), *args.input]:
        src, _, name = str(item).partition(":")
        inputs.append([str(Path(src).absolute()), name or Path(src).name])
    req = {
        "argv": argv,
        "cpus": fields["cpus"],
        "memory": fields["mem"],
        "wall_seconds": fields["time"],
        "gpus": fields["gpus"],
        "replicas": fields["replicas"],
        "image": fields["image"],
        "inputs": inputs,
        "outputs": [*(from_file.get("outputs") or []), *args.output],
    }
    if fields["array"] is None:
        job_ids = [ask(args, "submit", **req, env=env)["job_id"]]
    else:
        tasks = parse_array(str(fields["array"]))
        job_ids = []
        for i in range(0, len(tasks), BATCH):  # (one request per BATCH tasks)
            part = tasks[i : i + BATCH]
            job_ids += ask(args, "submit", **req, env=env, array=part)["job_ids"]
    if not args.wait:
        if args.json:
            print(json.dumps({"job_ids": job_ids} if fields["array"] else {"job_id": job_ids[0]}))
        else:
            print("\n".join(job_ids))
        return 0
    code = 0
    finals = []
    for final in _follow_all(args, job_ids, echo=not args.json):
        job_id = final["job_id"]
        finals.append(final)
        if final["state"] != "done":
            print(
                f"rain: job {job_id} {final['state']}: {final.get('error') or ''}", file=sys.stderr
            )
            code = code or 1
        elif final.get("exit_code"):
            code = code or int(final["exit_code"])
    if args.json:
        print(json.dumps(finals if fields["array"] else finals[0], indent=2))
    return code


def _follow_all(
    args: argparse.Namespace, job_ids: list[str], echo: bool
) -> Iterator[dict[str, Any]]:
    """The final states of the jobs, in order: the first one still running is followed live
    (its output printed as it comes), and those that have ended by then are fetched at once."""
    pending = list(job_ids)
    while pending:
        yield follow(args, pending.pop(0), echo)
        while pending:
            ended = ask(args, "finished", job_ids=pending[:BATCH])["jobs"]
            if not ended:
                break
            for st in ended:
                if echo:
                    sys.stdout.write(st["stdout"])
                    sys.stderr.write(st["stderr"])
                    sys.stdout.flush()
                yield st
            del pending[: len(ended)]


def follow(args: argparse.Namespace, job_id: str, echo: bool) -> dict[str, Any]:
    """Poll the job, printing new output, until it ends; its final state."""
    offsets = {"stdout_from": 0, "stderr_from": 0}
    for _ in range(MAX_WAIT_POLLS):
        st = ask(args, "job", job_id=job_id, wait=LONG_POLL, **offsets)
        if echo:
            sys.stdout.write(st["stdout"])
            sys.stderr.write(st["stderr"])
            sys.stdout.flush()
        offsets = {"stdout_from": st["stdout_next"], "stderr_from": st["stderr_next"]}
        if st["finished"]:
            return st
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
        follow(args, args.job_id, echo=True)
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
