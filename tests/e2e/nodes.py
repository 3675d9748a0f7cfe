"""Test helpers: start real rain-node processes, wait for them, ask them through the real CLI.

Every wait is bounded; every process started is killed at the end of its test (the `cluster`
fixture in conftest.py), so a failing test never leaves nodes behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node import cli, pools
from rainnet.pool import PoolSecret
from sandbox import netwall
from sandbox.config import SandboxConfig

PYTHON = sys.executable
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
# Nodes on loopback found through a bootstrap address (no mDNS): one that only asks for work,
# one that lends whatever the owner does.
REQUESTER = ("--listen", LOOPBACK, "--no-mdns", "--lend", "never")
WORKER = ("--listen", LOOPBACK, "--no-mdns", "--lend", "always")


def _in_netns(name: str) -> list[str]:
    """Run in network namespace `name`. nsenter, not `ip netns exec`: the latter remounts /sys
    for the namespace, which hides the cgroup hierarchies the sandbox needs."""
    return ["nsenter", f"--net=/var/run/netns/{name}", "--"]


class NodeProcess:
    """One rain-node process with its own home."""

    def __init__(
        self,
        home: Path,
        args: Sequence[str],
        netns: str | None = None,
        module: str = "node.main",
    ) -> None:
        self.home = home
        self.module = module
        self.args = list(args)
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "node.log"

    def start(self) -> NodeProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "node.json").unlink(missing_ok=True)
        cmd = [PYTHON, "-m", self.module, "--home", str(self.home), *self.args]
        if self.netns:
            cmd = [*_in_netns(self.netns), *cmd]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """The node's node.json once it is written (the node is serving by then)."""
        path = self.home / "node.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"rain-node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                info: dict[str, Any] = json.loads(path.read_text())
                if self.proc is None or info.get("pid") == self.proc.pid:
                    return info
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"rain-node not ready within {timeout} s:\n{self.log()}")

    @property
    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.home / "node.json").read_text())
        return data

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def addr(self) -> str:
        return str(self.info["addrs"][0])

    def rain(
        self, *args: str, timeout: float = 15.0, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [PYTHON, "-m", "node.cli", "--home", str(self.home), *args]
        if self.netns:
            cmd = [*_in_netns(self.netns), *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and res.returncode != 0:
            raise AssertionError(f"rain {' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res

    def rain_here(self, *args: str) -> str:
        """`rain ARGS` run in this process (its stdout): the same CLI code, without a Python
        start-up per call, for a test that asks a node hundreds of times."""
        assert not self.netns, "in-process calls reach only a node on this host's network"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["--home", str(self.home), *args])
        if code != 0:
            raise AssertionError(f"rain {' '.join(args)} failed ({code})")
        return out.getvalue()

    def rain_json(self, *args: str) -> Any:
        """The JSON output of `rain ARGS --json`."""
        return json.loads(self.rain(*args, "--json").stdout)

    def peers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = json.loads(self.rain("peers", "--json").stdout)
        return out

    def peer_ids(self) -> set[str]:
        return {p["peer_id"] for p in self.peers()}

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Under nsenter the node is the exec'd process itself (no wrapper stays).
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@dataclass
class Cluster:
    """Nodes started for one test. They are in a private pool of the cluster's own (a fresh
    secret, in each node's home), so a test never sees, nor is seen by, a node it did not
    start, whatever else runs on this machine; `open_network=True` for tests about the open
    network. Raw py-libp2p peers of a test join with `build_host(identity, cluster.pool)`."""

    root: Path
    nodes: list[NodeProcess] = field(default_factory=list)
    open_network: bool = False
    pool: PoolSecret | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.open_network:
            self.pool = PoolSecret.create(f"test-{secrets.token_hex(4)}")

    def start(
        self,
        *args: str,
        name: str | None = None,
        netns: str | None = None,
        module: str = "node.main",
    ) -> NodeProcess:
        home = self.root / (name or f"node{len(self.nodes)}")
        if self.pool is not None and "--pool" not in args:
            pools.join(home, self.pool)
            args = (*args, "--pool", self.pool.name)
        node = NodeProcess(home, args, netns=netns, module=module).start()
        self.nodes.append(node)
        return node

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
        for node in self.nodes:
            if node.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(timeout=10)
        _sweep_walls(self.nodes)


def _sweep_walls(nodes: Sequence[NodeProcess]) -> None:
    """Delete the MPI ranks' firewall tables of nodes killed while ranks ran (a node sweeps
    its own at its next start, which the homes of a test never see)."""
    nft = netwall.nft_path()
    if nft is None:
        return
    prefixes: dict[str | None, set[str]] = {}
    for node in nodes:
        name = SandboxConfig.for_home(node.home).cgroup_name
        prefixes.setdefault(node.netns, set()).add(netwall.table_prefix(name))
    for ns, mine in prefixes.items():
        enter = _in_netns(ns) if ns else []
        listed = subprocess.run(
            [*enter, nft, "list", "tables", "inet"], capture_output=True, text=True, timeout=10
        )
        for line in listed.stdout.splitlines():
            table = line.split()[-1] if line.startswith("table inet ") else ""
            if any(table.startswith(p) for p in mine):
                subprocess.run([*enter, nft, "delete", "table", "inet", table], timeout=10)


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.25
) -> float:
    """Poll `predicate` until true; return seconds taken; AssertionError naming `what` if not."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"{what}: not true within {timeout} s")


def all_see_each_other(nodes: Sequence[NodeProcess]) -> bool:
    ids = {n.peer_id for n in nodes}
    return all(n.peer_ids() >= ids - {n.peer_id} for n in nodes)


def requester_and_workers(
    cluster: Cluster, workers: int, timeout: float = 30.0
) -> tuple[NodeProcess, list[NodeProcess]]:
    """A requester ("req") and `workers` workers that join through it, once all see each other
    and the requester sees every worker's sandbox."""
    requester = cluster.start(*REQUESTER, name="req")
    requester.wait_ready()
    nodes = [cluster.start(*WORKER, "--bootstrap", requester.addr) for _ in range(workers)]
    for node in nodes:
        node.wait_ready()
    wait_until(lambda: all_see_each_other([requester, *nodes]), timeout, "the network forms")
    wait_until(
        lambda: all(p["backends"] for p in requester.peers()), timeout, "workers show a sandbox"
    )
    return requester, nodes


def credit(node: NodeProcess) -> dict[str, float]:
    """`rain credit --json` of the node: its balance, earned, spent, exchanges."""
    data: dict[str, float] = json.loads(node.rain("credit", "--json").stdout)
    return data


def paid_claims(node: NodeProcess) -> list[str]:
    """The job ids of the node's ledger history: one per exchange (a job's own id, or the claim
    of a task session's group)."""
    rows = json.loads(node.rain("credit", "history", "--json", "-n", "100000").stdout)
    return [r["job"] for r in rows]
