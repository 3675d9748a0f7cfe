"""MPI groups across network namespaces the test makes (one topology for the module):

    LAN m (10.231.1.0/24): the requester, 4 members, and an outsider host (no node; a listener)
    router: a relay node, and NAT (MASQUERADE) for
    LAN n (10.231.2.0/24): one more member, behind NAT (it holds a relay reservation)

A group of the 4 members on LAN m computes (MPICH's OFI tcp between namespaces) and each member
is paid for its own ranks; its ranks cannot reach their nodes' own ports, a listener on their
own host or on the other members' hosts, the requester's node, nor the outsider (the network
wall, sandbox.netwall); a group
that would need the member behind NAT is refused, saying so; and a member whose link goes down
silently (no FIN, no RST) ends the group, named, with no rank left anywhere. The partition is
the last test: it leaves that member cut off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rainnet.identity import load_or_create
from tests.e2e.netns import Lan, Topology, require_netns
from tests.e2e.nodes import PYTHON, Cluster, NodeProcess, all_see_each_other, credit, wait_until
from tests.e2e.test_mpi import LOOP, RING, program, running

pytestmark = pytest.mark.netns

MEMBERS = 4
NODE_PORT = 4001
LISTEN_PORT = 5001  # a listener of the test's own on each member's host, and on the outsider's


@dataclass
class Net:
    topology: Topology
    lan: Lan
    req: NodeProcess
    members: list[NodeProcess]
    natted: NodeProcess
    outsider: str  # the outsider host's IP


def _listener(ns: str) -> subprocess.Popen[bytes]:
    """A TCP listener on every address of namespace `ns` that accepts whoever comes."""
    code = (
        "import socket\n"
        f"s = socket.create_server(('0.0.0.0', {LISTEN_PORT}), backlog=64)\n"
        "while True:\n"
        "    s.accept()[0].close()\n"
    )
    return subprocess.Popen(["nsenter", f"--net=/var/run/netns/{ns}", "--", PYTHON, "-c", code])


def _connects(ns: str, ip: str, port: int) -> bool:
    """Whether a plain process (no sandbox) in `ns` reaches ip:port (the control of a refusal)."""
    code = f"import socket; socket.create_connection(({ip!r}, {port}), 3)"
    cmd = ["nsenter", f"--net=/var/run/netns/{ns}", "--", PYTHON, "-c", code]
    return subprocess.run(cmd, capture_output=True, timeout=15).returncode == 0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    require_netns()
    topology = Topology(prefix=f"rw{os.getpid() % 100000}")
    cluster = Cluster(tmp_path_factory.mktemp("mpi-netns"))
    listeners: list[subprocess.Popen[bytes]] = []
    try:
        lan = topology.add_lan("m", hosts=MEMBERS + 2)
        natted_lan = topology.add_lan("n", hosts=1)
        topology.masquerade(natted_lan)
        req_ns, member_ns, outsider_ns = lan.hosts[0], lan.hosts[1:-1], lan.hosts[-1]
        router_id = load_or_create(cluster.root / "router").peer_id
        relay = f"/ip4/{lan.ip(1)}/tcp/{NODE_PORT}/p2p/{router_id}"
        router = cluster.start(
            "--listen", f"/ip4/{lan.ip(1)}/tcp/{NODE_PORT}",
            "--listen", f"/ip4/{natted_lan.ip(1)}/tcp/{NODE_PORT}",
            "--no-mdns", "--relay", "--lend", "never", "--no-mpi",
            netns=topology.router, name="router",
        )  # fmt: skip
        router.wait_ready()
        req = cluster.start(
            "--listen", f"/ip4/{lan.ip(10)}/tcp/{NODE_PORT}", "--lend", "never",
            "--bootstrap", relay, netns=req_ns, name=req_ns,
        )  # fmt: skip
        members = [
            cluster.start(
                "--listen",
                f"/ip4/{lan.ip(11 + i)}/tcp/{NODE_PORT}",
                "--lend",
                "always",
                netns=ns,
                name=ns,
            )
            for i, ns in enumerate(member_ns)
        ]
        inside = f"/ip4/{natted_lan.ip(1)}/tcp/{NODE_PORT}/p2p/{router_id}"
        natted = cluster.start(
            "--listen", f"/ip4/{natted_lan.ip(10)}/tcp/{NODE_PORT}", "--no-mdns",
            "--lend", "always", "--bootstrap", inside, "--relay-via", relay,
            netns=natted_lan.hosts[0], name="natted",
        )  # fmt: skip
        for node in [req, *members, natted]:
            node.wait_ready()
        listeners = [_listener(ns) for ns in [*member_ns, outsider_ns]]
        wait_until(lambda: all_see_each_other([req, *members]), 30, "the LAN's nodes meet")
        wait_until(
            lambda: (
                {p["peer_id"] for p in req.peers() if p.get("mpi")}
                >= {m.peer_id for m in [*members, natted]}
            ),
            40,
            "the requester knows every member, the one behind NAT too",
        )
        yield Net(topology, lan, req, members, natted, lan.ip(10 + MEMBERS + 1))
    finally:
        for p in listeners:
            p.kill()
            p.wait(timeout=10)
        cluster.stop_all()
        topology.destroy()


def rank_processes(name: str) -> list[int]:
    """The ranks (`python3 -m mpi4py NAME`: node.cli.mpi.under_mpi4py) running anywhere on
    this machine (not the launcher's side, whose command lines name the program too)."""
    found = []
    for pid in running(name):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:4] == [b"python3", b"-m", b"mpi4py", name.encode()]:
            found.append(pid)
    return found


def mpi_run(
    net: Net, prog: Path, *extra: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return net.req.rain(
        "mpi", "run", "-n", str(MEMBERS), "--per-node", "1", "--cpus-per-rank", "0.5",
        "--mem", "128M", *extra, "--input", str(prog), "--", "python3", prog.name,
        timeout=timeout, check=False,
    )  # fmt: skip


def test_four_members_in_four_namespaces_compute_and_are_paid(net: Net, tmp_path: Path) -> None:
    lan, req, members = net.lan, net.req, net.members
    hosts = req.rain("mpi", "hosts", "-n", str(MEMBERS), "--per-node", "1").stdout.split()
    assert sorted(hosts) == sorted(f"{lan.ip(11 + i)}:1" for i in range(MEMBERS))

    res = mpi_run(net, program(tmp_path, RING), "-l", "--json")
    assert res.returncode == 0, res.stderr
    ranks = sorted(line for line in res.stderr.splitlines() if line[:1].isdigit())
    assert ranks == [
        f"{r}: rank {r} of 4: sum 10, got {(r - 1) % 4} from the left" for r in range(4)
    ], res.stderr
    summary = json.loads(res.stdout)
    assert summary["launcher"] == lan.ip(10)  # the proxies connected back across the LAN
    jobs = {j["worker"]: j for j in summary["jobs"]}
    assert set(jobs) == {m.peer_id for m in members}
    for m in members:
        job = jobs[m.peer_id]
        assert job["state"] == "done" and job["exit_code"] == 0
        assert credit(m)["earned"] == pytest.approx(job["cpu_seconds"], abs=0.002)
        m.rain("credit", "verify")


PROBE = """
import socket
from mpi4py import MPI

def reach(ip, port):
    try:
        socket.create_connection((ip, port), 3).close()
        return "reached"
    except OSError as exc:
        return type(exc).__name__

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
targets = {TARGETS}
seen = {name: reach(ip, port) for name, (ip, port) in targets.items()}
total = comm.allreduce(rank + 1)
print(f"rank {rank}: sum {total}; " + ", ".join(f"{k} {v}" for k, v in sorted(seen.items())),
      flush=True)
"""


def test_a_rank_reaches_nothing_outside_its_group(net: Net, tmp_path: Path) -> None:
    """Each rank tries its own host's listener (on loopback: whichever member it is on), every
    member's node port and a listener of the test's on every member's host, the requester's
    node port and a listener on a host outside the group: all refused, while the group still
    computes (its ranks reach each other's sockets on those same hosts)."""
    lan = net.lan
    targets = {
        "own-host-listener": ("127.0.0.1", LISTEN_PORT),
        "outsider": (net.outsider, LISTEN_PORT),
        "requester-node": (lan.ip(10), NODE_PORT),
        **{f"member{i}-node": (lan.ip(11 + i), NODE_PORT) for i in range(MEMBERS)},
        # (on its own host, and the other members' hosts: their walls judge a rank's SYN)
        **{f"member{i}-listener": (lan.ip(11 + i), LISTEN_PORT) for i in range(MEMBERS)},
    }
    # The control: outside the sandbox, each of them is reachable from a member's host.
    first = lan.hosts[1]
    assert _connects(first, "127.0.0.1", LISTEN_PORT)
    assert _connects(first, net.outsider, LISTEN_PORT)
    assert _connects(first, lan.ip(10), NODE_PORT) and _connects(first, lan.ip(11), NODE_PORT)
    assert _connects(first, lan.ip(12), LISTEN_PORT)

    prog = program(tmp_path, PROBE.replace("{TARGETS}", repr(targets)))
    res = mpi_run(net, prog)
    assert res.returncode == 0, res.stderr
    lines = sorted(line for line in res.stdout.splitlines() if line.startswith("rank "))
    refused = ", ".join(f"{k} ConnectionRefusedError" for k in sorted(targets))
    assert lines == [f"rank {r}: sum 10; {refused}" for r in range(MEMBERS)], res.stdout


def test_a_group_across_a_nat_is_refused_saying_so(net: Net) -> None:
    """5 ranks at one a member need the member behind NAT too: MPI's connections between
    every pair of ranks would not cross it, so the group is refused, with the reason."""
    res = net.req.rain(
        "mpi", "run", "-n", str(MEMBERS + 1), "--per-node", "1", "--cpus-per-rank", "0.5",
        "--mem", "128M", "--", "true", timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode != 0
    assert "behind NAT" in res.stderr, res.stderr


def test_a_silent_partition_ends_the_group_naming_the_member(net: Net, tmp_path: Path) -> None:
    """A member's link goes down while the group loops in barriers (no FIN, no RST reach
    anyone): within 10 s no rank runs anywhere, and `rain mpi run` names the member."""
    prog = program(tmp_path, LOOP)
    cmd = [
        "nsenter", f"--net=/var/run/netns/{net.lan.hosts[0]}", "--",
        PYTHON, "-m", "node.cli", "--home", str(net.req.home), "mpi", "run",
        "-n", str(MEMBERS), "--per-node", "1", "--cpus-per-rank", "0.5", "--mem", "128M",
        "--input", str(prog), "--", "python3", prog.name,
    ]  # fmt: skip
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(rank_processes(prog.name)) >= MEMBERS, 60, "the ranks run")
        lost_index = MEMBERS - 1
        lost, lost_ns = net.members[lost_index], net.lan.hosts[1 + lost_index]
        cut = time.monotonic()
        net.topology.exec(lost_ns, "ip", "link", "set", "eth0", "down")
        first_gone = None
        while (left := rank_processes(prog.name)) and time.monotonic() - cut < 10:
            if first_gone is None and len(left) < MEMBERS:
                first_gone = time.monotonic() - cut
            time.sleep(0.1)
        ended = time.monotonic() - cut
        assert not left, f"ranks {left} still run {ended:.1f} s after the link went down"
        # (naming the member may take the CLI's LOST_WAIT more, once the group has ended)
        code = run.wait(timeout=25)
        assert code != 0
        assert not running(prog.name)
        err = run.stderr.read() if run.stderr else ""
        assert f"rain: member {lost.peer_id[-8:]} (127.1.0." in err, err
        print(f"link down: first rank gone at {first_gone or ended:.1f} s, the last {ended:.1f} s")
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
            try:
                run.wait(timeout=10)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait(timeout=10)
