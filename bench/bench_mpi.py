"""MPI groups: what rainnet adds to a launch, and to the ranks once they run.

    sudo .venv/bin/python bench/bench_mpi.py [-n 5]            # 127.0.0.1
    sudo .venv/bin/python bench/bench_mpi.py --netns [-n 5]    # 4 network namespaces

Loopback (the default): a requester and 2 member nodes on 127.0.0.1 (as tests/e2e/test_mpi.py).
--netns: a routed LAN of 5 network namespaces the bench makes (tests/e2e/netns.py, as
tests/e2e/test_mpi_netns.py): the requester in one, a member node in each of the 4 others.
Namespaces and nodes are removed at the end, whatever happens. Each figure is the median of N
runs after one warm-up, against its baseline measured in the same run:
- launch: `rain mpi run -n 4` of a trivial program (MPI_Init, a barrier), from the command to
  its end (assembly, the reservations, the agents, the member jobs and their sandboxes, the
  proxies, the ranks, the jobs' results), against plain `mpiexec -n 4` of the same program on
  one host (the requester's). Goal: at most 1.5x. Loopback: 2 ranks a member; --netns: one
  rank on each of the 4 members; each rank --cpus-per-rank C (1, as `rain mpi run`'s default:
  a CFS quota of half a CPU slows a rank's Python start and MPI_Init, plain mpiexec's ranks
  have no quota). --netns also prints plain mpiexec across
  the same 4 namespaces (hydra's ssh launcher, an `nsenter` script as its ssh): what a launch
  across hosts costs hydra itself.
- ping-pong between 2 ranks on 2 members (a whole CPU each): 8-byte round trips (latency) and
  4 MiB messages (bandwidth), against plain `mpiexec -n 2`: on loopback, both ranks on this host
  with `MPIR_CVAR_NOLOCAL=1`; --netns, one rank in each of 2 member namespaces (the nsenter
  launcher). Goal: about 1.0x (rainnet must add nothing once the ranks run).
- --netns: `rain mpi bench -n 4` (node/mpi/hpl.py, order --hpl-size): the group's Gflops against
  one process of rank 0's member solving the same system alone (rank 0's sandbox: its CPU
  share), and against that system solved by one plain process on this host.
- where the launch's time goes (--breakdown-runs R, medians of R; --breakdown-only for just
  this): `rain mpi run`'s steps replayed as node/cli/mpi.py does them (the same control
  requests, the same mpiexec command line) with clocks around them, the agent behind a tracing
  wrapper, the program printing its own clocks, the nodes' logs giving the rest: the CLI's
  start; the `mpi-assemble` round trip; mpiexec's start to its first agent; the agents' Python
  start, imports and `mpi-launch`; each member's taking of the offer ("running job" in its
  log), then its inputs, sandbox and proxy up to the rank's process; the rank's Python start,
  MPI_Init, barrier, MPI_Finalize; then the end: the rank's, proxy's and sandbox's exit (the
  member says so before it claims), the agents' exits, mpiexec's, `mpi-end`; and, off the
  command's path since the member says its proxy exited, its claim settled and the result's
  files. A step of several members is the slowest
  member's. Beside it, the same clocks under plain `mpiexec -n 4` on one host.
The load average is printed at the start, before the breakdown and at the end: on a machine
shared with other work, read the figures beside it.
Transport: MPICH's OFI tcp netmod on every side (`MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp`, as
`rain mpi run` sets): real TCP between namespaces, never shared memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from node.cli.mpi import TRANSPORT as RAIN_TRANSPORT
from node.cli.mpi import mpiexec_argv
from node.control import channel as control
from node.home import CONTROL_SOCKET
from node.mpi import agent
from node.mpi.agent import GROUP_ENV, HOME_ENV, SECRET_ENV
from tests.e2e.netns import Topology
from tests.e2e.nodes import (
    Cluster,
    NodeProcess,
    all_see_each_other,
    requester_and_workers,
    wait_until,
)

BIN = Path(sys.executable).parent
TRIVIAL = "from mpi4py import MPI\nMPI.COMM_WORLD.Barrier()\n"
PINGPONG = """
import time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
def pingpong(size, reps):
    buf = np.zeros(size, dtype=np.uint8)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(reps):
        if rank == 0:
            comm.Send(buf, dest=1); comm.Recv(buf, source=1)
        elif rank == 1:
            comm.Recv(buf, source=0); comm.Send(buf, dest=0)
    return (time.perf_counter() - start) / reps
pingpong(8, 100)
lat = pingpong(8, 2000) / 2
bw = 2 * (4 << 20) / pingpong(4 << 20, 40)
if rank == 0:
    print(f"{lat * 1e6:.3f} {bw / 1e9:.4f}")
"""
# The trivial program with clocks: its process's start (from /proc: 10 ms ticks), its first
# line, MPI_Init done (mpi4py's import), the barrier passed, MPI_Finalize done (called here
# rather than by mpi4py at exit, so that it is timed).
TRACED = """
import os, time
first = time.time()
def started():
    ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
    ago = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - ago
from mpi4py import MPI
init = time.time()
MPI.COMM_WORLD.Barrier()
barrier = time.time()
rank = MPI.COMM_WORLD.Get_rank()
MPI.Finalize()
print(f"T {rank} {started():.6f} {first:.6f} {init:.6f} {barrier:.6f} {time.time():.6f}",
      flush=True)
"""
# hydra's ssh for plain mpiexec across namespaces: `SCRIPT [options] HOST COMMAND`, HOST a
# namespace's address (an IP literal: hydra resolves nothing; a namespace's name took it 15 s).
NSENTER_SSH = """#!/bin/sh
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
case "$host" in
{cases}
esac
exec nsenter --net=/var/run/netns/$ns sh -c "$*"
"""
# The agent with clocks: the shell notes when hydra ran it, then the driver notes its imports,
# each control request (op, sent, answered, the job's state) and its exit.
TRACE_SH = """#!/bin/sh
host=""
for a in "$@"; do case "$a" in -*) ;; *) host=$a; break;; esac; done
echo "$(date +%s.%N) $host spawn" >> "$RAIN_BENCH_TRACE"
exec {python} -S -I {driver} "$@"
"""
TRACE_DRIVER = """
import os, sys, time
def mark(*what):
    with open(os.environ["RAIN_BENCH_TRACE"], "a") as f:
        f.write(" ".join([f"{time.time():.6f}", host, *map(str, what)]) + "\\n")
host = next(a for a in sys.argv[1:] if not a.startswith("-"))
mark("python")
sys.path.insert(0, os.environ["RAIN_BENCH_ROOT"])  # (run as rain mpi run runs it: -S -I)
from node.mpi import agent
mark("imported")
def traced(real):
    def ask(to, op, **params):
        sent = time.time()
        answer = real(to, op, **params)
        output = bool(answer.get("stdout") or answer.get("stderr"))
        mark(op, f"{sent:.6f}", answer.get("state", "-"), output)
        return answer
    return ask
agent.ask = traced(agent.ask)
code = agent.main()
mark("exit", code)
sys.exit(code)
"""
# The same transport as `rain mpi run`'s (-genv NAME VALUE for each pair).
TRANSPORT = [
    w for i in range(0, len(RAIN_TRANSPORT), 2) for w in ("-genv", *RAIN_TRANSPORT[i : i + 2])
]
GROUP = ["--mem", "128M"]


def in_netns(ns: str | None) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{ns}", "--"] if ns else []


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd[:8])} ... failed: {res.stdout[-1000:]}{res.stderr[-2000:]}"
        )
    return elapsed, res.stdout


def median_of(n: int, run: Callable[[], float]) -> float:
    run()  # warm-up
    return statistics.median(run() for _ in range(n))


@dataclass
class Setup:
    """The nodes of one mode, and how to run a command beside the requester."""

    root: Path
    req: NodeProcess
    members: list[NodeProcess]
    req_ns: str | None = None  # the requester's namespace (--netns)
    launcher: str = ""  # the requester's address the members' proxies connect to
    hosts: dict[str, str] = field(default_factory=dict)  # a member's address -> its namespace

    def at_req(self, cmd: list[str]) -> list[str]:
        return [*in_netns(self.req_ns), *cmd]

    def rain(self, *args: str) -> list[str]:
        return self.at_req([sys.executable, "-m", "node.cli", "--home", str(self.req.home), *args])


@contextlib.contextmanager
def loopback(root: Path) -> Iterator[Setup]:
    cluster = Cluster(root / "nodes")
    try:
        req, members = requester_and_workers(cluster, 2)
        wait_until(lambda: all(p.get("mpi") for p in req.peers()), 30, "members take MPI")
        yield Setup(root, req, members, launcher="127.0.0.1")
    finally:
        cluster.stop_all()


@contextlib.contextmanager
def namespaces(root: Path) -> Iterator[Setup]:
    topo = Topology()
    cluster = Cluster(root / "nodes")
    try:
        lan = topo.add_lan("m", hosts=5)
        req_ns, member_ns = lan.hosts[0], lan.hosts[1:]
        listen = "/ip4/{}/tcp/4001"
        req = cluster.start(
            "--listen", listen.format(lan.ip(10)), "--lend", "never", netns=req_ns, name=req_ns
        )
        members = [
            cluster.start(
                "--listen", listen.format(lan.ip(11 + i)), "--lend", "always", netns=ns, name=ns
            )
            for i, ns in enumerate(member_ns)
        ]
        for node in [req, *members]:
            node.wait_ready()
        nodes = [req, *members]
        wait_until(lambda: all_see_each_other(nodes), 30, "the LAN's nodes find each other")
        wait_until(lambda: sum(bool(p.get("mpi")) for p in req.peers()) == 4, 30, "MPI members")
        hosts = {lan.ip(11 + i): ns for i, ns in enumerate(member_ns)}
        yield Setup(root, req, members, req_ns, lan.ip(10), hosts)
    finally:
        cluster.stop_all()
        topo.destroy()


def rain_run(s: Setup, prog: str, ranks: int, per_node: int, cpus: float) -> list[str]:
    shape = ["--per-node", str(per_node), "--cpus-per-rank", f"{cpus:g}"]
    argv = ["mpi", "run", "-n", str(ranks), *GROUP, *shape, "--input", prog, "--"]
    return s.rain(*argv, "python3", prog)


def plain_local(s: Setup, prog: str, ranks: int) -> list[str]:
    """mpiexec on the requester's host alone, ranks talking TCP (never shared memory)."""
    mpiexec = ["env", "MPIR_CVAR_NOLOCAL=1", str(BIN / "mpiexec"), *TRANSPORT]
    return s.at_req([*mpiexec, "-n", str(ranks), sys.executable, prog])


def plain_across(s: Setup, prog: str, hosts: Sequence[str]) -> list[str]:
    """mpiexec from the requester's namespace, one rank in each of `hosts` (namespaces)."""
    ssh = s.root / "nsenter-ssh"
    argv = [str(BIN / "mpiexec"), "-launcher", "ssh", "-launcher-exec", str(ssh)]
    argv += ["-localhost", s.launcher, "-hosts", ",".join(f"{h}:1" for h in hosts)]
    argv += [*TRANSPORT, "-wdir", str(s.root), "-n", str(len(hosts)), sys.executable, prog]
    return s.at_req(argv)


# ----- where a launch's time goes ---------------------------------------------------------------


def log_times(node: NodeProcess, needle: str) -> list[float]:
    """The times of the node's log lines that contain `needle` (its log's clock: ms)."""
    out = []
    for line in node.log_path.read_text(errors="replace").splitlines():
        if needle in line:
            with contextlib.suppress(ValueError):
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                out.append(stamp.timestamp())
    return out


def breakdown_once(s: Setup, ranks: int, per_node: int, cpus: float) -> dict[str, float]:
    """One `rain mpi run` of the traced program, replayed step by step as node/cli/mpi.py's
    cmd_run does it (the same requests, the same mpiexec command line), with the agent behind
    a tracing wrapper. Seconds per step; steps of several members: the slowest member's."""
    trace = s.root / "trace"
    trace.write_text("")
    sock = s.req.home / CONTROL_SOCKET
    request = {
        "ranks": ranks,
        "per_node": per_node,
        "cpus_per_rank": cpus,
        "memory_per_rank": 128 << 20,
        "wall_seconds": 600.0,
    }
    inputs = [[str(s.root / "traced.py"), "traced.py"]]
    t0 = time.time()
    group = control.request(sock, "mpi-assemble", **request, inputs=inputs)
    t1 = time.time()
    argv = mpiexec_argv(
        BIN / "mpiexec", s.root / "trace-agent", group, ["python3", "traced.py"], False
    )
    env = {
        **os.environ,
        "HYDRA_LAUNCHER_AUTOFORK": "0",
        HOME_ENV: str(s.req.home),
        GROUP_ENV: group["group_id"],
        SECRET_ENV: group["secret"],
        "RAIN_BENCH_TRACE": str(trace),
        "RAIN_BENCH_ROOT": str(Path(agent.__file__).resolve().parents[2]),
    }
    try:
        res = subprocess.run(s.at_req(argv), env=env, capture_output=True, text=True, timeout=120)
        t2 = time.time()
    finally:
        ended = control.request(sock, "mpi-end", group_id=group["group_id"])
    t3 = time.time()
    if res.returncode != 0:
        raise SystemExit(f"traced launch failed: {res.stderr[-2000:]}")
    pstart, first, init, barrier, final = ranks_times(res.stdout)
    marks: dict[tuple[str, str], float] = {}
    sent: dict[str, float] = {}
    for line in trace.read_text().splitlines():
        w = line.split()
        at, host, what = float(w[0]), w[1], w[2]
        if what in ("mpi-launch",):
            sent[host] = float(w[3])
        marks.setdefault((host, what), at)
        if what == "job":
            marks[(host, "last job")] = at  # the poll that saw the job end
    hosts = sorted({h for h, _ in marks})
    by_job = {m["job_id"]: m["host"] for m in ended["members"] if m.get("job_id")}
    # A member's log says when it took the offer; the requester's when the result was in.
    member_of = {m["host"]: m["peer_id"] for m in ended["members"]}
    nodes = {n.peer_id: n for n in s.members}
    running, done, settled = {}, {}, {}
    # (After the run: mpiexec waits for the proxies to end, not for the members' claims.)
    wait_until(
        lambda: all(
            log_times(nodes[member_of[by_job[j]]], f"job {j} settled")
            and log_times(s.req, f"job {j} done")
            for j in by_job
        ),
        30,
        "the members' jobs settle",
        interval=0.05,
    )
    for job_id, host in by_job.items():
        member = nodes[member_of[host]]
        running[host] = log_times(member, f"running job {job_id}")[0]
        settled[host] = log_times(member, f"job {job_id} settled")[0]
        done[host] = log_times(s.req, f"job {job_id} done")[0]

    def slowest(step: Callable[[str], float]) -> float:
        return max(step(h) for h in hosts)

    spawn = {h: marks[(h, "spawn")] for h in hosts}
    launched = {h: marks[(h, "mpi-launch")] for h in hosts}
    agent_end = {h: marks[(h, "exit")] for h in hosts}
    return {
        "mpi-assemble round trip": t1 - t0,
        "mpiexec start to its first agent": min(spawn.values()) - t1,
        "  agents spawned: first to last": max(spawn.values()) - min(spawn.values()),
        "agent: Python start (to its first line)": slowest(
            lambda h: marks[(h, "python")] - spawn[h]
        ),
        "agent: imports": slowest(lambda h: marks[(h, "imported")] - marks[(h, "python")]),
        "agent: imports to mpi-launch sent": slowest(lambda h: sent[h] - marks[(h, "imported")]),
        "agent: mpi-launch round trip": slowest(lambda h: launched[h] - sent[h]),
        "member: offer to 'running job' (its log, ms)": slowest(lambda h: running[h] - launched[h]),
        "member: inputs, sandbox, proxy to the rank's process (10 ms ticks)": max(pstart)
        - min(running.values()),
        "rank: Python start (to its first line)": max(
            f - p for f, p in zip(first, pstart, strict=True)
        ),
        "rank: MPI_Init (mpi4py's import)": max(i - f for i, f in zip(init, first, strict=True)),
        "rank: barrier (the last rank's init to the barrier's end)": max(barrier) - max(init),
        "rank: MPI_Finalize": max(f - b for f, b in zip(final, barrier, strict=True)),
        "end: finalized to the last agent's exit (rank, proxy, sandbox; the member's word)": (
            max(agent_end.values()) - max(final)
        ),
        "end: last agent's exit to mpiexec's": t2 - max(agent_end.values()),
        "  (off the path) finalized to the member's claim settled": max(settled.values())
        - max(final),
        "  (off the path) claim settled to the requester's 'job done'": max(
            done[h] - settled[h] for h in hosts
        ),
        "mpi-end round trip": t3 - t2,
        "whole replay (without the CLI's start)": t3 - t0,
    }


def breakdown(s: Setup, runs: int, ranks: int, per_node: int, cpus: float) -> None:
    trace_sh = s.root / "trace-agent"
    trace_sh.write_text(TRACE_SH.format(python=sys.executable, driver=s.root / "trace-driver.py"))
    trace_sh.chmod(0o755)
    (s.root / "trace-driver.py").write_text(TRACE_DRIVER)
    (s.root / "traced.py").write_text(TRACED)
    root = s.root
    bare = median_of(runs, lambda: timed(s.at_req([sys.executable, "-c", "pass"]), root)[0])
    cli = median_of(
        runs, lambda: timed(s.at_req([sys.executable, "-c", "import node.cli.mpi"]), root)[0]
    )
    breakdown_once(s, ranks, per_node, cpus)  # warm-up
    plain_once(s, ranks)
    steps, plain = [], []
    for _ in range(runs):  # (interleaved)
        steps.append(breakdown_once(s, ranks, per_node, cpus))
        plain.append(plain_once(s, ranks))
    print(f"where the launch's time goes ({ranks} ranks, {per_node} a member; medians of {runs}):")
    print(f"  {'CLI: Python start':<76} {bare:6.3f} s")
    print(f"  {'CLI: to node.cli.mpi imported (with the start)':<76} {cli:6.3f} s")
    for key in steps[0]:
        print(f"  {key:<76} {statistics.median(st[key] for st in steps):6.3f} s")
    print(f"the same program under plain mpiexec -n {ranks} on one host, for comparison:")
    for key in plain[0]:
        print(f"  {key:<76} {statistics.median(st[key] for st in plain):6.3f} s")


def ranks_times(stdout: str) -> list[list[float]]:
    """The traced program's clocks, per kind (process start, first line, init, barrier,
    finalized), each a list over the ranks."""
    # (hydra may join one rank's line to another's: found by shape, not by line)
    rows = re.findall(r"T \d+" + r" (\d+\.\d{6})" * 5, stdout)
    return [[float(r[i]) for r in rows] for i in range(5)]


def plain_once(s: Setup, ranks: int) -> dict[str, float]:
    t0 = time.time()
    out = timed(plain_local(s, "traced.py", ranks), s.root)[1]
    t1 = time.time()
    pstart, first, init, barrier, final = ranks_times(out)
    return {
        "mpiexec start to the last rank's process (10 ms ticks)": max(pstart) - t0,
        "rank: Python start (to its first line)": max(
            f - p for f, p in zip(first, pstart, strict=True)
        ),
        "rank: MPI_Init (mpi4py's import)": max(i - f for i, f in zip(init, first, strict=True)),
        "rank: MPI_Finalize": max(f - b for f, b in zip(final, barrier, strict=True)),
        "end: finalized to mpiexec's exit": t1 - max(final),
        "whole": t1 - t0,
    }


# ----- the measurements -----------------------------------------------------------------------


def measure(
    s: Setup,
    n: int,
    netns: bool,
    hpl_size: int,
    breakdown_runs: int,
    figures_too: bool,
    cpus: float,
) -> None:
    root = s.root
    (root / "trivial.py").write_text(TRIVIAL)
    (root / "pingpong.py").write_text(PINGPONG)
    ssh = root / "nsenter-ssh"
    cases = "".join(f"{ip}) ns={ns} ;;\n" for ip, ns in s.hosts.items())
    ssh.write_text(NSENTER_SSH.format(cases=cases))
    ssh.chmod(0o755)
    per_node = 1 if netns else 2
    if figures_too:
        print("\n".join(figures(s, n, netns, hpl_size, per_node, cpus)), flush=True)
    if breakdown_runs:
        print(f"(load average before the breakdown: {load()})")
        breakdown(s, breakdown_runs, 4, per_node, cpus)


def figures(s: Setup, n: int, netns: bool, hpl_size: int, per_node: int, cpus: float) -> list[str]:
    root = s.root
    out: list[str] = []
    # Launch: 4 ranks; interleaved, so a change of load meets both sides alike.
    sides: dict[str, list[str]] = {
        "rain mpi run": rain_run(s, "trivial.py", 4, per_node, cpus),
        "mpiexec, one host": plain_local(s, "trivial.py", 4),
    }
    if netns:
        sides["mpiexec across the 4 namespaces"] = plain_across(s, "trivial.py", list(s.hosts))
    for cmd in sides.values():
        timed(cmd, root)  # warm-up
    runs: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(n):
        for name, cmd in sides.items():
            runs[name].append(timed(cmd, root)[0])
    launch = {k: statistics.median(v) for k, v in runs.items()}
    r, p = launch["rain mpi run"], launch["mpiexec, one host"]
    where = "4 members in 4 namespaces" if netns else "2 members on 127.0.0.1"
    where += f", {cpus:g} CPU a rank"
    out.append(f"launch, 4 ranks, trivial program ({where}):")
    for name, t in launch.items():
        out.append(f"  {name:<34} {t:.3f} s")
    out.append(f"  ratio rain mpi run / mpiexec on one host: {r / p:.2f}x (goal at most 1.5x)")
    if netns:
        a = launch["mpiexec across the 4 namespaces"]
        out.append(f"  ratio rain mpi run / mpiexec across the namespaces: {r / a:.2f}x")
    # Ping-pong: 2 ranks on 2 members, a whole CPU each (a CFS quota of half a CPU stalls a
    # busy-polling rank).
    pp_sides = {
        "in a group": rain_run(s, "pingpong.py", 2, 1, 1),
        "mpiexec": plain_across(s, "pingpong.py", list(s.hosts)[:2])
        if netns
        else plain_local(s, "pingpong.py", 2),
    }
    pp_runs: dict[str, list[list[str]]] = {k: [] for k in pp_sides}
    for _ in range(n):
        for name, cmd in pp_sides.items():
            pp_runs[name].append(timed(cmd, root)[1].split()[-2:])
    pp = {
        k: (statistics.median(float(r[0]) for r in v), statistics.median(float(r[1]) for r in v))
        for k, v in pp_runs.items()
    }
    (rl, rb), (pl, pb) = pp["in a group"], pp["mpiexec"]
    across = "one rank in each of 2 namespaces" if netns else "127.0.0.1, MPIR_CVAR_NOLOCAL=1"
    out.append(f"ping-pong, 2 ranks ({across}; plain mpiexec the same way):")
    out.append(f"  latency: in a group {rl:.2f} us, mpiexec {pl:.2f} us: {rl / pl:.2f}x")
    out.append(f"  bandwidth: in a group {rb:.3f} GB/s, mpiexec {pb:.3f} GB/s: {rb / pb:.2f}x")
    out.append("  (goal about 1.0x)")
    if netns and hpl_size:
        out += hpl(s, hpl_size)
    out.append("transport: MPICH OFI tcp (MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp) on every side")
    return out


def hpl(s: Setup, size: int) -> list[str]:
    """`rain mpi bench -n 4` once, and the same system solved by one plain process here."""
    args = ["mpi", "bench", "-n", "4", "--per-node", "1", "--cpus-per-rank", "0.5"]
    out = timed(s.rain(*args, "--mem", "1G", "--size", str(size)), s.root)[1]
    found = {}
    for line in out.splitlines():
        key, _, rest = line.partition(":")
        if key in ("group", "one process", "residual check"):
            found[key] = rest.split()[0] if key != "residual check" else rest.strip()
    program = Path(__file__).resolve().parent.parent / "node" / "mpi" / "hpl.py"
    single = timed(
        s.at_req([str(BIN / "mpiexec"), "-n", "1", sys.executable, str(program), str(size)]), s.root
    )[1]
    here = float(next(ln for ln in single.splitlines() if ln.startswith("one process:")).split()[2])
    g, one = float(found["group"]), float(found["one process"])
    return [
        f"rain mpi bench -n 4 (one rank a member, half a CPU each), N={size}:",
        f"  group {g:.3f} Gflops; one process in rank 0's sandbox {one:.3f} Gflops: {g / one:.2f}x",
        f"  one plain process on this host (no CPU quota): {here:.3f} Gflops: {g / here:.2f}x",
        f"  residual check: {found.get('residual check', '?')}",
    ]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=5, help="runs per figure (after a warm-up)")
    parser.add_argument("--netns", action="store_true", help="4 members in 4 namespaces")
    parser.add_argument(
        "--hpl-size", type=int, default=2000, help="--netns: rain mpi bench's N (0: none)"
    )
    parser.add_argument(
        "--breakdown-runs", type=int, default=3, help="runs of the launch's breakdown (0: none)"
    )
    parser.add_argument(
        "--cpus-per-rank",
        type=float,
        default=1.0,
        help="the launch's ranks' CPU share (1, rain mpi run's default; plain mpiexec's have "
        "no quota)",
    )
    parser.add_argument(
        "--breakdown-only", action="store_true", help="only where the launch's time goes"
    )
    args = parser.parse_args()
    print(f"load average at the start: {load()} ({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        setup = namespaces if args.netns else loopback
        with setup(Path(tmp)) as s:
            measure(
                s,
                args.n,
                args.netns,
                args.hpl_size,
                args.breakdown_runs,
                not args.breakdown_only,
                args.cpus_per_rank,
            )
    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("needs root (the members' sandboxes; --netns: the namespaces)")
    main()
