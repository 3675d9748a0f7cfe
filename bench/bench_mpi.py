"""MPI groups on 127.0.0.1: what rainnet adds to a launch, and to the ranks once they run.

    sudo .venv/bin/python bench/bench_mpi.py [-n 5]

Starts a requester and 2 member nodes on loopback (as the e2e tests do), then measures, in one
run each:
- launch: `rain mpi run -n 4 --per-node 2` of a trivial program (MPI_Init, a barrier) from the
  command to its end (assembly, reservations, the agent, the member jobs, the sandboxes, the
  claims' settlement while the command waits for nothing), against plain `mpiexec -n 4` of the
  same program on this host. Goal: at most 1.5x.
- ping-pong between 2 ranks on 2 members: 8-byte round trips (latency) and 4 MiB messages
  (bandwidth), against plain `mpiexec -n 2` on this host. Both use MPICH's OFI tcp netmod (no
  shared memory between the two ranks on either side: hydra puts them on two hosts in the
  group, and plain mpiexec is told `MPIR_CVAR_NOLOCAL=1`). Goal: about 1.0x.
Medians of N runs after one warm-up. Loopback only: the 4-namespace figures of the issue are
not measured here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from tests.e2e.nodes import Cluster, requester_and_workers, wait_until

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
TRANSPORT = ["-genv", "MPIR_CVAR_CH4_NETMOD", "ofi", "-genv", "FI_PROVIDER", "tcp"]


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed: {res.stderr[-2000:]}")
    return elapsed, res.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5)
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "trivial.py").write_text(TRIVIAL)
        (root / "pingpong.py").write_text(PINGPONG)
        cluster = Cluster(root / "nodes")
        try:
            req, _ = requester_and_workers(cluster, 2)
            wait_until(lambda: all(p.get("mpi") for p in req.peers()), 30, "members take MPI")
            rain = [sys.executable, "-m", "node.cli", "--home", str(req.home), "mpi", "run"]
            group = ["--mem", "128M"]
            env_plain = ["env", "MPIR_CVAR_NOLOCAL=1", str(BIN / "mpiexec"), *TRANSPORT]

            def ours(prog: str, ranks: int) -> tuple[float, str]:
                # 4 ranks: 2 a member, half a CPU each; 2 ranks (ping-pong): one a member,
                # a whole CPU each (a CFS quota of half a CPU stalls a busy-polling rank).
                shape = ["--per-node", "2", "--cpus-per-rank", "0.5"] if ranks == 4 else []
                shape = shape or ["--per-node", "1", "--cpus-per-rank", "1"]
                argv = [*rain, "-n", str(ranks), *group, *shape, "--input", prog, "--"]
                return timed([*argv, "python3", prog], root)

            def plain(prog: str, ranks: int) -> tuple[float, str]:
                return timed([*env_plain, "-n", str(ranks), sys.executable, prog], root)

            launch = {}
            for name, fn in (("rain mpi run", ours), ("mpiexec", plain)):
                fn("trivial.py", 4)
                launch[name] = statistics.median(fn("trivial.py", 4)[0] for _ in range(n))
            pp: dict[str, tuple[float, float]] = {}
            for name, fn in (("rain mpi run", ours), ("mpiexec", plain)):
                runs = [fn("pingpong.py", 2)[1].split()[-2:] for _ in range(n)]
                pp[name] = (
                    statistics.median(float(r[0]) for r in runs),
                    statistics.median(float(r[1]) for r in runs),
                )
        finally:
            cluster.stop_all()
    r, p = launch["rain mpi run"], launch["mpiexec"]
    print(f"launch, 4 ranks, trivial program: rain mpi run {r:.3f} s, mpiexec {p:.3f} s")
    print(f"  ratio {r / p:.2f}x (goal at most 1.5x)")
    (rl, rb), (pl, pb) = pp["rain mpi run"], pp["mpiexec"]
    print(f"ping-pong latency: in a group {rl:.2f} us, mpiexec {pl:.2f} us: {rl / pl:.2f}x")
    print(f"ping-pong bandwidth: in a group {rb:.3f} GB/s, mpiexec {pb:.3f} GB/s: {rb / pb:.2f}x")
    print("(loopback, MPICH OFI tcp on both sides; goal about 1.0x)")


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("needs root (the members' sandboxes)")
    main()
