"""`rain demo`: a whole network of rain-nodes on this one machine, narrated (the trainer).

The project this grew from called its small cluster a "Supercomputer Trainer": the architecture
of a large machine, for learning to write parallel programs. `rain demo` is that on one laptop:
N nodes on 127.0.0.1, each with a home of its own under one demo folder, lending always, in a
private pool of their own (so a demo never mixes with a real network, or with another demo).
It waits until they see each other, prints the panel's URL, then runs and narrates a job array,
an MPI pi across the other nodes (`-l`), `rain peers`, `rain jobs` and each node's credit; and
stays up, panel live, until Ctrl-C, which stops every node and waits for each to be gone.

The homes stay: the next `rain demo` starts the same identities with their credit history
(`--fresh` starts anew). Every node is a real `rain-node` process (this module only starts them
and runs `rain` commands against them, as a user would).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from node import pools
from node.cli import CliError
from node.control import channel as control
from node.home import CONTROL_SOCKET, NODE_INFO_FILE
from rainnet.pool import PoolSecret

POOL = "demo"
READY_TIMEOUT = 60.0  # for the nodes to start and see each other
STOP_TIMEOUT = 10.0  # for each node to stop after SIGTERM (then SIGKILL)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # in a checkout of the repository


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="a network of N rain-nodes on this machine, narrated (the trainer)",
        description="Start N rain-nodes on 127.0.0.1 (a private pool of their own), run a job "
        "array and an MPI program across them, and stay up with the panel live until Ctrl-C.",
    )
    p.add_argument("--nodes", type=int, default=4, help="how many nodes (default 4, at least 2)")
    p.add_argument("--dir", type=Path, help="the demo's folder (default: next to this home)")
    p.add_argument("--fresh", action="store_true", help="new identities and credit")
    p.add_argument(
        "--keep", action="store_true", help="leave the nodes running when the narration ends"
    )
    p.add_argument("--stop", action="store_true", help="stop a demo left running (--keep)")
    p.set_defaults(func=cmd_demo)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


class Demo:
    def __init__(self, folder: Path, n: int) -> None:
        self.folder = folder
        self.homes = [folder / f"node{i}" for i in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []

    # ----- the nodes ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Homes in the demo's pool (made once; the homes keep it)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret_file = self.folder / "demo.pool"
        if not secret_file.exists():
            pools.write_secret_file(secret_file, PoolSecret.create(POOL))
        secret = pools.read_secret_file(secret_file)
        for home in self.homes:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not pools.pool_path(home, POOL).exists():
                pools.join(home, secret)

    def start(self) -> None:
        first = self._start(0, [])
        addr = first["addrs"][0]
        for i in range(1, len(self.homes)):
            self._start(i, ["--bootstrap", addr, "--panel", "0"])

    def _start(self, i: int, extra: list[str]) -> dict[str, Any]:
        home = self.homes[i]
        (home / NODE_INFO_FILE).unlink(missing_ok=True)
        args = ["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--lend", "always"]
        args += ["--pool", POOL, "--name", f"demo-{i}", *extra]
        log = open(home / "node.log", "ab")  # noqa: SIM115 - the node's for its life
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.main", "--home", str(home), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the nodes in order
        )
        log.close()
        self.procs.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CliError(f"node {i} exited with {proc.returncode}: see {home / 'node.log'}")
            with contextlib.suppress(OSError, ValueError):
                info: dict[str, Any] = json.loads((home / NODE_INFO_FILE).read_text())
                if info.get("pid") == proc.pid:
                    return info
            time.sleep(0.1)
        raise CliError(f"node {i} did not start within {READY_TIMEOUT:.0f} s")

    def wait_meeting(self) -> None:
        """Until the first node sees every other one, each with its sandbox."""
        want = len(self.homes) - 1
        deadline = time.monotonic() + READY_TIMEOUT
        seen = 0
        while time.monotonic() < deadline:
            peers = self.ask(0, "peers")["peers"]
            seen = sum(bool(p.get("backends")) for p in peers)
            if seen >= want:
                return
            time.sleep(0.25)
        raise CliError(f"the nodes did not meet within {READY_TIMEOUT:.0f} s ({seen} of {want})")

    def ask(self, i: int, op: str, **params: Any) -> dict[str, Any]:
        try:
            return control.request(self.homes[i] / CONTROL_SOCKET, op, **params)
        except control.ControlError as exc:
            raise CliError(f"node {i}: {exc}") from None

    def stop(self) -> None:
        """SIGTERM every node, and wait for each to be gone (SIGKILL after STOP_TIMEOUT)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    # ----- the narration -----------------------------------------------------------------------

    def rain(self, i: int, *args: str, timeout: float = 300) -> int:
        """Run `rain ARGS` on node i, its output shown as is."""
        cmd = [sys.executable, "-m", "node.cli", "--home", str(self.homes[i]), *args]
        print(f"$ rain {' '.join(args)}", flush=True)
        return subprocess.run(cmd, timeout=timeout, check=False).returncode

    def narrate(self) -> None:
        n = len(self.homes)
        _say(
            f"an array of {2 * n} jobs from node 0: each task runs on an idle peer, paid in credit"
        )
        self.rain(
            0, "submit", "--array", f"0-{2 * n - 1}", "--wait", "--",
            "sh", "-c", "echo task $RAIN_ARRAY_TASK_ID ran as job $RAIN_JOB_ID",
        )  # fmt: skip
        pi = EXAMPLES / "mpi" / "pi.py"
        if pi.exists():
            _say(
                f"an MPI program across the {n - 1} other nodes, one rank each (-l: rank prefixes)"
            )
            self.rain(
                0, "mpi", "run", "-n", str(n - 1), "--per-node", "1", "-l",
                "--input", str(pi), "--", "python3", "pi.py",
            )  # fmt: skip
        else:
            _say(f"(no {pi} here: the MPI example comes with a checkout of rainnet)")
        _say("who is in the network (rain peers), and the jobs node 0 ran (rain jobs)")
        self.rain(0, "peers")
        self.rain(0, "jobs")
        _say("credit: what each node earned running the others' jobs, and spent on its own")
        for i in range(n):
            credit = self.ask(i, "status")["credit"]
            print(
                f"node {i}: balance {credit['balance']:g}, earned {credit['earned']:g}, "
                f"spent {credit['spent']:g}",
                flush=True,
            )

    def panel_url(self) -> str:
        from node.panel import access

        deadline = time.monotonic() + 10  # (the panel starts beside the node)
        while (info := access.read_info(self.homes[0])) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if info is None:
            return "(node 0 serves no panel: see its node.log)"
        return info.login_url((self.homes[0] / access.TOKEN_FILE).read_text().strip())


def _default_folder() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser().absolute() / "rainnet-demo"


def running_nodes(folder: Path) -> list[int]:
    """The pids of the demo's nodes still running: a home's node.json names its pid, and that
    process is a rain-node of that home (not another process that got the pid since)."""
    pids = []
    for info_file in sorted(folder.glob(f"node*/{NODE_INFO_FILE}")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pid = int(json.loads(info_file.read_text())["pid"])
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"node.main" in words and str(info_file.parent).encode() in words:
                pids.append(pid)
    return pids


def stop_running(folder: Path) -> int:
    """SIGTERM the demo's running nodes and wait for each to be gone (SIGKILL after
    STOP_TIMEOUT); how many there were."""
    pids = running_nodes(folder)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def cmd_demo(args: argparse.Namespace) -> int:
    if not 2 <= args.nodes <= 16:
        raise CliError("--nodes must be between 2 and 16")
    folder = (args.dir or _default_folder()).expanduser().absolute()
    if args.stop:
        stopped = stop_running(folder)
        print(f"stopped {stopped} nodes" if stopped else f"no demo node runs in {folder}")
        return 0
    if running_nodes(folder):
        raise CliError(f"the demo in {folder} is running already (rain demo --stop stops it)")
    if args.fresh and folder.exists():
        shutil.rmtree(folder)
    demo = Demo(folder, args.nodes)
    demo.prepare()
    try:
        _say(f"starting {args.nodes} rain-nodes on 127.0.0.1 (homes in {folder})")
        demo.start()
        demo.wait_meeting()
        print(f"ready: {args.nodes} nodes see each other", flush=True)
        print(f"panel: {demo.panel_url()}", flush=True)
        demo.narrate()
        if args.keep:
            _say("the nodes keep running: rain demo --stop stops them")
            demo.procs.clear()
            return 0
        _say("the network stays up, the panel live; Ctrl-C stops every node")
        while all(p.poll() is None for p in demo.procs):
            time.sleep(0.5)
        raise CliError("a node stopped by itself: see its node.log")
    except KeyboardInterrupt:
        print("\nstopping the nodes...", flush=True)
        return 0
    finally:
        demo.stop()
        if demo.procs:
            print(f"stopped {len(demo.procs)} nodes", flush=True)
