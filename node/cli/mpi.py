"""`rain mpi run` and `rain mpi hosts`: MPI groups across idle peers, as mpirun/srun.

`rain mpi run -n N [--per-node K] [--cpus-per-rank C] [--mem SIZE] [--time D] [-l]
[--input PATH]... [--output PATH]... [--json] -- CMD ARGS` asks the node to assemble a group
(every member's slots reserved at once), then runs hydra's own mpiexec from this
environment's MPICH with rainnet's agent (node.mpi.agent) as its ssh, one pseudo host per
member. The ranks' output streams back through mpiexec; `-l` prefixes each line with its
rank, as `srun -l`. The exit code is mpiexec's: non-zero if any rank failed or a member was
lost. Each member's part is a job of its own (`rain jobs`), paid for its CPU-seconds; the
`--output` files each member's ranks left come back to the current directory.

`rain mpi bench -n N [--size N]` runs an HPL-style LU solve (node/mpi/hpl.py) across a group.

`rain mpi hosts -n N [--per-node K] [--format mpich|openmpi|json]` prints the group it would
pick as a hostfile, reserving nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from node.cli import CliError, duration_arg, size_arg
from node.cli.jobs import copy_result_file, result_files
from node.cli.status import ask
from node.control import channel as control
from node.home import CONTROL_SOCKET, MPI_LOGS_DIR, resolve_home
from node.mpi import agent
from node.mpi.agent import GROUP_ENV, HOME_ENV, SECRET_ENV

# MPICH's transport between members: TCP through libfabric. Its default (UCX) took shared
# memory between network namespaces of one kernel, which is not what a group of machines has.
TRANSPORT = ("MPIR_CVAR_CH4_NETMOD", "ofi", "FI_PROVIDER", "tcp")
# Each rank runs under this: a rank that fails is reported with its exit code and killed by
# signal, which is what makes hydra end the whole group at once (a plain non-zero exit left
# the other ranks waiting in their next collective forever).
RANK_WRAPPER = (
    '"$@"; c=$?; [ "$c" -eq 0 ] && exit 0; '
    'echo "rain: rank ${PMI_RANK:-?} exited with $c" >&2; kill -KILL $$'
)
SETTLE_WAIT = 30.0  # after the run, how long the members' claims may take to settle
SETTLE_POLL = 0.2
NAME_CHARS = 64  # a job's name, at most (node.control.jobs.MAX_NAME)
LOGS_KEPT = 200
LOG_CAP = 16 << 20  # bytes of each of a group's stdout and stderr kept
LOST_WAIT = 8.0  # after a failed run, how long to wait to learn which member was lost (a
# silent one is known lost when its job's lease, GROUP_LEASE, lapses)


def register(sub: Any) -> None:
    p = sub.add_parser("mpi", help="MPI groups across idle peers (mpirun/srun)")
    mpi = p.add_subparsers(dest="mpi_command", metavar="SUBCOMMAND", required=True)
    run = mpi.add_parser("run", help="run an MPI program across a group of idle peers")
    _group_args(run)
    run.add_argument("--time", type=duration_arg, default=600.0, help="wall time (default 10m)")
    run.add_argument("-l", dest="label", action="store_true", help="prefix lines with the rank")
    run.add_argument("--name", help="the group's name in rain jobs (default: its command)")
    run.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH[:NAME]",
        help="a local file placed in every member's job directory (repeatable)",
    )
    run.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="PATH",
        help="a file (or directory) the ranks leave in their job directory, brought back here "
        "(from each member that left it: from several, into member-I/ folders) (repeatable)",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="the ranks' output to stderr; the group and its members' jobs as JSON",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    run.set_defaults(func=cmd_run)
    bench = mpi.add_parser("bench", help="an HPL-style benchmark of a group (Gflops)")
    _group_args(bench)
    bench.add_argument("--size", type=int, default=4000, metavar="N", help="order of A (4000)")
    bench.add_argument("--nb", type=int, default=64, help="panel width (64)")
    # (10 minutes: N=4000 takes seconds, and a newcomer's credit floor covers 4 ranks for 10
    # minutes, not for 30: the group's cost at its limits is checked before it starts.)
    bench.add_argument("--time", type=duration_arg, default=600.0, help="wall time (10m)")
    bench.set_defaults(func=cmd_bench)
    hosts = mpi.add_parser("hosts", help="print the group `rain mpi run` would pick")
    _group_args(hosts)
    hosts.add_argument("--format", choices=("mpich", "openmpi", "json"), default="mpich")
    hosts.set_defaults(func=cmd_hosts)


def _group_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", dest="ranks", type=int, required=True, help="number of ranks")
    p.add_argument("--per-node", type=int, metavar="K", help="at most K ranks on one member")
    p.add_argument("--cpus-per-rank", type=float, default=1.0, metavar="C")
    p.add_argument("--mem", type=size_arg, default=256 << 20, help="memory per rank (256M)")


def _request(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "ranks": args.ranks,
        "per_node": args.per_node,
        "cpus_per_rank": args.cpus_per_rank,
        "memory_per_rank": args.mem,
        "wall_seconds": getattr(args, "time", None),
    }


def cmd_bench(args: argparse.Namespace) -> int:
    """node/mpi/hpl.py as the group's program: its Gflops beside one process's."""
    program = Path(__file__).resolve().parent.parent / "mpi" / "hpl.py"
    args.input, args.output, args.name = [str(program)], [], None
    args.label, args.json = False, False
    args.argv = ["python3", program.name, str(args.size), str(args.nb)]
    return cmd_run(args)


def cmd_hosts(args: argparse.Namespace) -> int:
    sys.stdout.write(ask(args, "mpi-plan", **_request(args), format=args.format)["hostfile"])
    return 0


def agent_launcher(home: Path) -> Path:
    """hydra's ssh for our groups: a shell script in the node's home that runs the agent
    (node.mpi.agent, the standard library alone) as `python -S -I`. One agent
    starts per member, all at once on the launch's path; the `rain-mpi-agent` entry point
    starts Python's site (this environment's .pth files) first: 4 agents at once took ~70
    ms here, ~40 ms this way. Named by its content: a home shared by several installations
    keeps one for each, and none is ever rewritten under a running mpiexec."""
    root = str(Path(agent.__file__).resolve().parents[2])  # (where the node package is)
    start = f"import sys; sys.path.insert(0, {root!r}); from node.mpi.agent import main; "
    start += "sys.exit(main())"
    script = (
        "#!/bin/sh\n# rain mpi run's ssh for hydra (node.cli.mpi.agent_launcher)\n"
        f'exec {shlex.quote(sys.executable)} -S -I -c {shlex.quote(start)} "$@"\n'
    )
    path = home / f"mpi-agent-{hashlib.sha256(script.encode()).hexdigest()[:12]}"
    if not path.exists():
        part = path.with_name(f"{path.name}.{os.getpid()}.part")
        part.write_text(script)
        part.chmod(0o700)
        part.replace(path)
    return path


def mpiexec_argv(
    mpiexec: Path, agent_exec: Path, group: dict[str, Any], command: list[str], label: bool
) -> list[str]:
    """hydra's command line for an assembled group (pure)."""
    hosts = ",".join(f"{m['host']}:{m['ranks']}" for m in group["members"])
    argv = [
        str(mpiexec),
        "-launcher",
        "ssh",
        "-launcher-exec",
        str(agent_exec),
        "-localhost",
        group["launcher"],
        "-hosts",
        hosts,
        "-genvnone",  # the ranks get their member's environment, not ours
        "-wdir",
        "/job",  # each member's job directory (its inputs), not our working directory
    ]
    for i in range(0, len(TRANSPORT), 2):
        argv += ["-genv", TRANSPORT[i], TRANSPORT[i + 1]]
    if label:
        argv += ["-prepend-pattern", "%r: "]
    ranks = ["-n", str(group["ranks"]), "sh", "-c", RANK_WRAPPER, "rank", *under_mpi4py(command)]
    return [*argv, *ranks]


def under_mpi4py(command: list[str]) -> list[str]:
    """A Python program run as `python3 -m mpi4py PROG` (pure), as mpi4py advises: a rank's
    unhandled exception or `sys.exit(N)` then aborts the whole group at once. Run plainly,
    such a rank hangs in MPI_Finalize at exit while the others wait for it in their next
    collective (measured: plain mpiexec hung 8 times in 8; under mpi4py's runner, 0.15 s).
    Commands that are not Python, or give the interpreter options of its own, run as given."""
    if not command or not re.fullmatch(r"python(3(\.\d+)?)?", os.path.basename(command[0])):
        return command
    rest = command[1:]
    if rest and (rest[0] in ("-m", "-c") or not rest[0].startswith("-")):
        if rest[:2] == ["-m", "mpi4py"]:
            return command
        return [command[0], "-m", "mpi4py", *rest]
    return command


def cmd_run(args: argparse.Namespace) -> int:
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise CliError("give the program after --, e.g. rain mpi run -n 4 -- python3 prog.py")
    inputs = []
    for item in args.input:
        src, _, name = str(item).partition(":")
        inputs.append([str(Path(src).absolute()), name or Path(src).name])
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "mpiexec").exists():
        raise CliError(f"no mpiexec beside {sys.executable} (pip install mpich)")
    outputs = args.output
    name = args.name or f"mpi {shlex.join(command)}"[:NAME_CHARS]
    group = ask(args, "mpi-assemble", **_request(args), inputs=inputs, outputs=outputs, name=name)
    members_line = f"{group['ranks']} ranks on {len(group['members'])} members"
    # As `rain submit` does: the id first (`rain jobs`, `rain cancel ID` from elsewhere).
    print(f"rain: MPI group {group['job_id']}: {members_line}", file=sys.stderr, flush=True)
    env = {
        **os.environ,
        "HYDRA_LAUNCHER_AUTOFORK": "0",  # never run a "local" host's proxy outside a sandbox
        HOME_ENV: str(resolve_home(args.home)),
        GROUP_ENV: group["group_id"],
        SECRET_ENV: group["secret"],
    }
    home = resolve_home(args.home)
    argv = mpiexec_argv(bin_dir / "mpiexec", agent_launcher(home), group, command, args.label)
    logs = group_logs(home, group["job_id"])
    try:
        code = run_teed(argv, env, args.time + 60, sys.stderr if args.json else sys.stdout, logs)
        if code is None:
            print(f"rain: the group ran past its time ({args.time:g} s)", file=sys.stderr)
            code = 124
        if code != 0:
            # Before the group's end: its cancel would hide why a member's part ended (given
            # up by its owner, lost), and the other parts end by themselves now.
            _report_lost(args, group)
    finally:
        ended = ask(args, "mpi-end", group_id=group["group_id"])
    members = [m for m in ended.get("members", []) if m.get("job_id")]
    if outputs:
        code = _bring_outputs(args, ended.get("members", []), outputs, Path.cwd()) or code
    if args.json:
        jobs = _settled([m["job_id"] for m in members], args)
        print(json.dumps({**ended, "exit_code": code, "jobs": jobs}, indent=2))
    return code


def group_logs(home: Path, job_id: str) -> tuple[Path, Path]:
    """Where `rain mpi run` keeps a group's output (its stdout, its stderr) for `rain logs`:
    the ranks' output reaches us through mpiexec, not through the members' jobs. The oldest
    beyond LOGS_KEPT groups go."""
    folder = home / MPI_LOGS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    kept = sorted(folder.glob("*.stdout"), key=lambda p: p.stat().st_mtime)
    for old in kept[: max(0, len(kept) - LOGS_KEPT + 1)]:
        old.unlink(missing_ok=True)
        old.with_suffix(".stderr").unlink(missing_ok=True)
    return folder / f"{job_id}.stdout", folder / f"{job_id}.stderr"


def run_teed(
    argv: list[str], env: dict[str, str], timeout: float, out: Any, logs: tuple[Path, Path]
) -> int | None:
    """Run mpiexec, its stdout to `out` and its stderr to ours, each also kept in its log
    file (up to LOG_CAP); its exit code (128 + N for a signal), None past `timeout`."""
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_tee, args=(proc.stdout, out, logs[0]), daemon=True),
        threading.Thread(target=_tee, args=(proc.stderr, sys.stderr, logs[1]), daemon=True),
    ]
    for t in pumps:
        t.start()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    # A timer, not `proc.wait(timeout)`: that polls in sleeps of up to 50 ms, which came
    # after the end of every group (a blocking wait returns as mpiexec exits).
    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        code = proc.wait()
    except BaseException:  # Ctrl-C: the group ends with us (mpi-end cancels its members)
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
        for t in pumps:
            t.join(timeout=5)
    if expired.is_set():
        return None
    return code if code >= 0 else 128 - code


def _tee(source: Any, out: Any, log_path: Path) -> None:
    kept = 0
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while chunk := source.read1(1 << 16):
            out.buffer.write(chunk)
            out.flush()
            if kept < LOG_CAP:
                os.write(fd, chunk[: LOG_CAP - kept])
                kept += len(chunk)
    finally:
        os.close(fd)


def _report_lost(args: argparse.Namespace, group: dict[str, Any]) -> None:
    """Which members failed, and why (a lost member's job says so once its end is known)."""
    places = {f"{group['job_id']}_{i}": m["host"] for i, m in enumerate(group["members"])}
    sock = resolve_home(args.home) / CONTROL_SOCKET
    try:
        launched = control.request(sock, "resolve", job_id=group["job_id"])["job_ids"]  # ID_I
    except control.ControlError as exc:  # (none launched, or the node slow: each in turn)
        if exc.refusal is control.Refusal.NOT_FOUND:
            return
        launched = list(places)
    hosts = {j: places.get(j, "?") for j in launched}
    for st in _settled(list(hosts), args, LOST_WAIT):
        if st["state"] == "failed":
            worker = (st.get("worker") or "?")[-8:]
            print(
                f"rain: member {worker} ({hosts[st['job_id']]}) failed: {st.get('error')}",
                file=sys.stderr,
            )


def _asked(name: str, paths: list[str]) -> bool:
    """Whether a result file is one of the paths asked for (or inside one, a directory)."""
    return any(name == p or name.startswith(p.rstrip("/") + "/") for p in paths)


def _bring_outputs(
    args: argparse.Namespace, members: list[dict[str, Any]], outputs: list[str], dest: Path
) -> int:
    """The members' output files, here: a file left by one member as DEST/NAME, by several
    as DEST/member-I/NAME (I: the member's place in the group; its ranks are in `rain mpi run
    --json`). 1 if a path asked for was left by no member."""
    found: dict[str, list[tuple[int, dict[str, Any], dict[str, Any]]]] = {}
    place = {m["job_id"]: i for i, m in enumerate(members) if m.get("job_id")}
    for st in _settled(list(place), args):
        if st["state"] != "done":
            continue
        index = place[st["job_id"]]
        full = ask(args, "job", job_id=st["job_id"])
        for entry in result_files(full):
            if _asked(entry["name"], outputs):  # (not the proxy's own stdout and stderr)
                found.setdefault(entry["name"], []).append((index, full, entry))
    for name, copies in sorted(found.items()):
        for index, st, entry in copies:
            target = dest / name if len(copies) == 1 else dest / f"member-{index}" / name
            print(f"rain: output {copy_result_file(st, entry, target)}", file=sys.stderr)
    missing = [p for p in outputs if not any(_asked(n, [p]) for n in found)]
    for path in missing:
        print(f"rain: no member left {path}", file=sys.stderr)
    return 1 if missing else 0


def _settled(
    job_ids: list[str], args: argparse.Namespace, wait: float = SETTLE_WAIT
) -> list[dict[str, Any]]:
    """The members' jobs once they have ended (their claims settled), within `wait`."""
    deadline = time.monotonic() + wait
    while True:
        done = ask(args, "finished", job_ids=job_ids)["jobs"]
        if len(done) == len(job_ids) or time.monotonic() > deadline:
            break
        time.sleep(SETTLE_POLL)
    keep = ("job_id", "worker", "state", "exit_code", "cpu_seconds", "credit", "error")
    return [{k: st.get(k) for k in keep} for st in done]
