"""`rain submit`, `rain jobs`, `rain logs`, `rain get`, `rain cancel`: jobs run on other peers.

All of them ask the local node over its control socket; the node finds a worker, pays it in
credit and keeps the result in its home (`HOME/jobs/<job id>/`).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.cli import CliError, duration_arg, size_arg
from node.cli.status import ask
from node.control import channel as control
from node.home import CONTROL_SOCKET, MPI_LOGS_DIR, resolve_home
from node.jobs.core import holds
from node.units import format_size, parse_duration, parse_size

LONG_POLL = 4.0  # the node answers as soon as there is output or the job ends
MAX_WAIT_POLLS = 10_000_000  # bounded, though --wait follows a job as long as it runs


def register(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="run a command on an idle peer, paid in credit",
        description="Run a command on an idle peer, paid in credit. With --wait, Ctrl-C "
        "cancels the job (as srun does).",
        epilog=JOB_FILE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--file", type=Path, metavar="JOB.toml", help="job file; flags override it")
    p.add_argument("--cpus", type=float, help="CPUs (default 1)")
    p.add_argument("--mem", type=size_arg, help="memory, like 512M or 2G (default 512M)")
    p.add_argument("--time", type=duration_arg, help="wall time limit (default 10m)")
    p.add_argument("--gpus", type=int, help="GPUs (default 0)")
    p.add_argument(
        "--log-cap",
        type=size_arg,
        metavar="SIZE",
        help="stdout and stderr are each kept up to SIZE (default 1M, at most 64M; both count "
        "against --mem)",
    )
    p.add_argument(
        "--array",
        metavar="RANGE",
        help="one job per index, like 0-9 or 1,3,5-7; each sees RAIN_ARRAY_TASK_ID",
    )
    p.add_argument("--image", help="a Docker image on the worker (default: the host's /usr)")
    p.add_argument("--name", help="a name for the job, shown by rain jobs")
    p.add_argument(
        "--queue-limit",
        type=duration_arg,
        metavar="DURATION",
        help="how long it may wait for a worker before it fails (default 1d); one no known "
        "worker could ever run fails at once",
    )
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

    p = sub.add_parser(
        "jobs",
        help="this node's jobs, like squeue",
        description="This node's jobs: those not ended, and those of the last day (--all: "
        "every one kept). An array is one row with its progress (--expand: a row per task).",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="every job kept, not just recent ones")
    p.add_argument("--expand", action="store_true", help="a row per task of an array")
    p.add_argument(
        "--state", action="append", metavar="STATE", help="only jobs in STATE (repeatable)"
    )
    p.add_argument("--name", help="only jobs of this name")
    p.add_argument("--since", type=duration_arg, metavar="DURATION", help="submitted since, ago")
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


JOB_FILE_HELP = """\
a job file (--file JOB.toml) holds the same as the flags:
  command = ["python3", "sim.py", "--steps", "100"]   # or one string, split as a shell
                                                     # would (no shell runs it)
  cpus = 2
  mem = "2G"
  time = "30m"
  gpus = 0
  log_cap = "4M"
  name = "sweep"
  queue_limit = "2h"             # how long it may wait for a worker
  image = "python:3.12"          # a Docker image on the worker
  replicas = 2
  array = "0-9"
  inputs = ["data.csv", "local/path:name-in-job"]
  outputs = ["result.json"]
  [env]
  SEED = "42"
"""

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
    "log_cap": None,
    "name": None,
    "queue_limit": None,
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


JOB_FILE_FIELDS = frozenset(
    {"command", "cpus", "mem", "time", "gpus", "log_cap", "image", "replicas", "array", "name"}
    | {"queue_limit", "inputs", "outputs", "env"}
)


def _job_file(path: Path) -> dict[str, Any]:
    """The fields of a TOML job file: command = [...], cpus, mem = "2G", time = "10m", gpus,
    image, replicas, array = "0-9", inputs = ["path[:name]", ...], outputs = [...], [env]."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"{path}: {exc}") from None
    unknown = set(doc) - JOB_FILE_FIELDS
    if unknown:
        raise CliError(
            f"{path}: unknown field(s) {', '.join(sorted(unknown))}; a job file may have "
            f"{', '.join(sorted(JOB_FILE_FIELDS))} (see rain submit --help)"
        )
    command = doc.get("command")
    if isinstance(command, str):
        try:
            doc["command"] = shlex.split(command)  # as a shell splits it; no shell runs it
        except ValueError as exc:
            raise CliError(f"{path}: command {command!r}: {exc}") from None
    elif command is not None and not (
        isinstance(command, list) and all(isinstance(a, str) for a in command)
    ):
        raise CliError(f"{path}: command: a string, or a list of strings")
    try:
        if "mem" in doc:
            doc["mem"] = parse_size(str(doc["mem"]))
        if "time" in doc:
            doc["time"] = parse_duration(str(doc["time"]))
        if "log_cap" in doc:
            doc["log_cap"] = parse_size(str(doc["log_cap"]))
        if "queue_limit" in doc:
            doc["queue_limit"] = parse_duration(str(doc["queue_limit"]))
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
        "output_bytes": fields["log_cap"],
        "name": fields["name"],
        "queue_limit": fields["queue_limit"],
        "replicas": fields["replicas"],
        "image": fields["image"],
        "inputs": inputs,
        "outputs": [*(from_file.get("outputs") or []), *args.output],
    }
    array_of: str | None = None  # the array's id, once it has one
    if fields["array"] is None:
        job_ids = [ask(args, "submit", **req, env=env)["job_id"]]
    else:
        tasks = parse_array(str(fields["array"]))
        job_ids = []
        for i in range(0, len(tasks), BATCH):  # (one request per BATCH tasks, one array)
            part = tasks[i : i + BATCH]
            got = ask(args, "submit", **req, env=env, array=part, array_of=array_of)
            job_ids += got["job_ids"]
            array_of = got["array_id"]
    if not args.wait:
        if args.json:
            array = {"array_id": array_of, "job_ids": job_ids}
            print(json.dumps(array if fields["array"] else {"job_id": job_ids[0]}))
        else:
            print(array_of if fields["array"] else job_ids[0])
        return 0
    what = f"array {array_of} of {len(job_ids)} tasks" if fields["array"] else f"job {job_ids[0]}"
    print(f"rain: submitted {what}", file=sys.stderr)
    try:
        return _wait_for(args, job_ids, bool(fields["array"]))
    except KeyboardInterrupt:
        # As srun: interrupting the wait cancels what it waited for (and says so).
        named = [array_of] if array_of else job_ids  # (an array's id: all its tasks at once)
        if all(_cancel_quietly(args, j) for j in named):
            print(f"\nrain: cancelled {what} (Ctrl-C)", file=sys.stderr)
        else:
            print(f"\nrain: could not cancel {what}: see rain jobs", file=sys.stderr)
        return 130


def _cancel_quietly(args: argparse.Namespace, job_id: str) -> bool:
    try:
        st = ask(args, "cancel", job_id=job_id)
    except (CliError, OSError, KeyboardInterrupt):
        return False
    return "job_id" in st


def _wait_for(args: argparse.Namespace, job_ids: list[str], array: bool) -> int:
    """Follow the jobs to their ends, printing their output; the exit code (the first failed
    job's)."""
    code = 0
    finals = []
    for final in _follow_all(args, job_ids, echo=not args.json):
        job_id = final["job_id"]
        finals.append(final)
        if final["how"] != "done":  # one line when the end was not plain success
            print(f"rain: job {job_id}: {final['how']}", file=sys.stderr)
        if final["state"] != "done":
            code = code or 1
        elif final.get("exit_code"):
            code = code or int(final["exit_code"])
    if args.json:
        print(json.dumps(finals if array else finals[0], indent=2))
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
                _print_output(st, echo)
                yield _read_rest(args, st, echo)
            del pending[: len(ended)]


def follow(args: argparse.Namespace, job_id: str, echo: bool) -> dict[str, Any]:
    """Poll the job, printing new output, until it ends; its final state (with all its output
    printed: what came live, then the rest from its stored files)."""
    offsets = {"stdout_from": 0, "stderr_from": 0}
    said = None
    worker_said = "running"
    for _ in range(MAX_WAIT_POLLS):
        st = ask(args, "job", job_id=job_id, wait=LONG_POLL, **offsets)
        _print_output(st, echo)
        waiting = st.get("pending_reason")
        if echo and waiting and waiting != said:  # as squeue's REASON, when it changes
            print(f"rain: job {job_id} waiting: {waiting}", file=sys.stderr)
        said = waiting
        line, worker_said = holds.news(st.get("worker_state"), worker_said)
        if echo and line and not st["finished"]:
            print(f"rain: job {job_id} {line}", file=sys.stderr)
        offsets = {"stdout_from": st["stdout_next"], "stderr_from": st["stderr_next"]}
        if st["finished"]:
            return _read_rest(args, st, echo)
    raise CliError(f"stopped following job {job_id}")


def _read_rest(args: argparse.Namespace, st: dict[str, Any], echo: bool) -> dict[str, Any]:
    """Print what an ended job's output has past the part `st` carried (an answer carries a
    chunk of each stream); then say where a stream was cut by the job's cap."""
    for _ in range(MAX_WAIT_POLLS):
        if st["stdout_next"] >= st["stdout_size"] and st["stderr_next"] >= st["stderr_size"]:
            break
        st = ask(
            args,
            "job",
            job_id=st["job_id"],
            stdout_from=st["stdout_next"],
            stderr_from=st["stderr_next"],
        )
        _print_output(st, echo)
    for name in ("stdout", "stderr"):
        if echo and st.get(f"{name}_cap"):
            print(
                f"rain: job {st['job_id']}: {name} was cut at {format_size(st[f'{name}_cap'])}, "
                "the job's cap (submit with --log-cap SIZE, at most 64M)",
                file=sys.stderr,
            )
    return st


def _print_output(st: dict[str, Any], echo: bool) -> None:
    if echo:
        sys.stdout.write(st["stdout"])
        sys.stderr.write(st["stderr"])
        sys.stdout.flush()


RECENT = 86400.0  # `rain jobs` shows ended jobs this recent (and every one not ended)


def _selected(args: argparse.Namespace, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    now = time.time()
    since = now - args.since if args.since is not None else None
    if since is None and not args.all:
        since = now - RECENT
    out = []
    for j in jobs:
        ended = j["state"] in ENDED
        if since is not None and j["submitted"] < since and (ended or args.since is not None):
            continue
        if args.state and j["state"] not in args.state:
            continue
        if args.name is not None and j["name"] != args.name:
            continue
        out.append(j)
    return out


ENDED = ("done", "failed", "cancelled")


def _fold(jobs: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Table rows: a job's, or an array's (its tasks folded, with their progress)."""
    rows: list[tuple[str, ...]] = []
    arrays: dict[str, list[dict[str, Any]]] = {}
    order: list[str | dict[str, Any]] = []
    for j in jobs:
        array = j["array_id"]
        if array is None:
            order.append(j)
        else:
            if array not in arrays:
                arrays[array] = []
                order.append(array)
            arrays[array].append(j)
    for item in order:
        if isinstance(item, dict):
            rows.append(_row(item))
            continue
        tasks = arrays[item]
        states = [t["state"] for t in tasks]
        done, failed = states.count("done"), states.count("failed")
        progress = f"{done}/{len(tasks)} done" + (f", {failed} failed" if failed else "")
        running = sum(s in ("running", "settling") for s in states)
        if running:
            progress += f", {running} running"
        state = "ended" if all(s in ENDED for s in states) else "running" if running else "queued"
        first = tasks[0]
        rows.append(
            (
                f"{item}[{len(tasks)}]",
                (first["name"] or " ".join(first["argv"]))[:24],
                state,
                "-",
                f"{len({t['worker'] for t in tasks if t['worker']})} workers",
                f"{max(t['elapsed'] for t in tasks):.1f}s",
                f"{sum(t['cpu_seconds'] for t in tasks):.3f}",
                f"{sum(t['credit'] for t in tasks):.3f}",
                progress,
            )
        )
    return rows


def _row(j: dict[str, Any]) -> tuple[str, ...]:
    exit_code = j["exit_code"]
    return (
        j["job_id"],
        (j["name"] or " ".join(j["argv"]))[:24],
        j["state"],
        "-" if exit_code is None else str(exit_code),
        (j["worker"] or "-")[-12:],
        f"{j['elapsed']:.1f}s",
        f"{j['cpu_seconds']:.3f}",
        f"{j['credit']:.3f}",
        j["pending_reason"] or j["how"] or "",
    )


def _all_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The node's jobs; while it is down, as its store kept them (said on stderr)."""
    home = resolve_home(args.home)
    try:
        return list(control.request(home / CONTROL_SOCKET, "jobs")["jobs"])
    except control.NodeNotRunning:
        # (Imported only now: the store costs an import of trio and the job modules, 0.8-1.2 s
        # a call here, which a running node's answer does not need.)
        from node.jobs.requester.store import JOBS_FILE, JobStore  # the store alone: test_layers

        if not (home / JOBS_FILE).exists():
            raise CliError(
                f"no rain-node is running with home {home}, and it has no jobs"
            ) from None
    except control.ControlError as exc:
        raise CliError(str(exc)) from None
    print("rain: the node is not running: its jobs as stored", file=sys.stderr)
    store = JobStore(home / JOBS_FILE)
    try:
        return [j.as_dict() for j in store.load()]
    finally:
        store.close()


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = _selected(args, _all_jobs(args))
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    head = ("JOB", "NAME", "STATE", "EXIT", "WORKER", "ELAPSED", "CPU-S", "CREDIT", "REASON")
    rows = [head, *([_row(j) for j in jobs] if args.expand else _fold(jobs))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    for row in rows:
        cells = zip(row[:-1], widths, strict=True)
        print(("  ".join(c.ljust(w) for c, w in cells) + "  " + row[-1]).rstrip())
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    group = _group_log(args)
    if group is not None:
        _print_group_log(args, group)
        return 0
    if args.follow:
        follow(args, args.job_id, echo=True)
        return 0
    st = ask(args, "job", job_id=args.job_id)
    _print_output(st, True)
    _read_rest(args, st, True)
    return 0


def _group_log(args: argparse.Namespace) -> Path | None:
    """An MPI group's kept output (HOME/mpi-logs/ID.stdout), for its id or a unique start."""
    folder = resolve_home(args.home) / MPI_LOGS_DIR
    if "/" in args.job_id or not args.job_id:
        return None
    found = sorted(folder.glob(f"{glob.escape(args.job_id)}*.stdout"))
    return found[0] if len(found) == 1 else None


def _print_group_log(args: argparse.Namespace, stdout: Path) -> None:
    """The group's output as `rain mpi run` printed it (its ranks', through mpiexec); with
    --follow, until no member of the group runs."""
    group_id = stdout.name.removesuffix(".stdout")
    offsets = [0, 0]
    members = ask(args, "resolve", job_id=group_id)["job_ids"] if args.follow else []
    for _ in range(MAX_WAIT_POLLS):
        ended = not members or len(ask(args, "finished", job_ids=members)["jobs"]) == len(members)
        for i, (path, out) in enumerate(
            ((stdout, sys.stdout), (stdout.with_suffix(".stderr"), sys.stderr))
        ):
            with contextlib.suppress(OSError), path.open("rb") as f:
                f.seek(offsets[i])
                data = f.read()
                offsets[i] += len(data)
                out.buffer.write(data)
                out.flush()
        if ended:  # (read once more after the end: the last lines)
            return
        time.sleep(0.5)


def cmd_get(args: argparse.Namespace) -> int:
    job_ids = ask(args, "resolve", job_id=args.job_id)["job_ids"]
    dest = Path(args.to)
    if len(job_ids) == 1:
        _get_one(args, job_ids[0], dest)
        return 0
    missing = []
    for job_id in job_ids:  # an array: a folder per task
        try:
            _get_one(args, job_id, dest / job_id)
        except CliError as exc:
            missing.append(str(exc))
    if missing:
        raise CliError(f"{len(missing)} of {len(job_ids)} tasks have no outputs: {missing[0]}")
    return 0


def _get_one(args: argparse.Namespace, job_id: str, dest: Path) -> None:
    st = ask(args, "job", job_id=job_id)
    if st["state"] != "done":
        raise CliError(f"job {job_id} is {st['state']}: no outputs yet")
    for entry in result_files(st):
        print(copy_result_file(st, entry, dest / entry["name"]))


def result_files(st: dict[str, Any]) -> list[dict[str, Any]]:
    """The files a done job brought back (its signed manifest's entries)."""
    files: list[dict[str, Any]] = json.loads(
        (Path(st["result_dir"]) / "manifest.json").read_text()
    )["files"]
    return files


def copy_result_file(st: dict[str, Any], entry: dict[str, Any], target: Path) -> Path:
    """One of a done job's files copied to `target`, checked against its signed hash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(st["result_dir"]) / entry["stored_as"], target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise CliError(f"{target}: sha256 {digest} differs from the signed {entry['sha256']}")
    return target


def cmd_cancel(args: argparse.Namespace) -> int:
    st = ask(args, "cancel", job_id=args.job_id)
    print(f"{st['job_id']}: cancel sent ({st['state']})")
    return 0
