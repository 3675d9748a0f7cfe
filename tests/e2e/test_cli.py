"""The rain CLI against a real node: fields users script against, and no libp2p in the CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from rainnet.identity import load_or_create
from tests.e2e.nodes import LOOPBACK, Cluster, wait_until


def test_status_and_peers_json_fields(cluster: Cluster) -> None:
    a = cluster.start("--listen", LOOPBACK, "--no-mdns", "--lend", "always")
    a.wait_ready()
    b = cluster.start(
        "--listen", LOOPBACK, "--no-mdns", "--bootstrap", a.addr, "--name", "bee", "--lend", "never"
    )
    b.wait_ready()
    wait_until(lambda: b.peer_id in a.peer_ids(), 20, "a sees b")

    status = json.loads(a.rain("status", "--json").stdout)
    assert status["peer_id"] == a.peer_id == a.info["peer_id"]
    assert status["peers"] == 1 and status["state"] == "idle"
    assert all(addr.endswith("/p2p/" + a.peer_id) for addr in status["addrs"])
    assert isinstance(status["backends"], list)

    (peer,) = a.peers()
    for key in ("peer_id", "addrs", "state", "cpus", "memory", "last_seen"):
        assert key in peer
    assert peer["peer_id"] == b.peer_id

    wait_until(lambda: a.peers()[0]["name"] == "bee", 20, "a holds b's record")
    table = a.rain("peers").stdout.splitlines()
    assert table[0].split()[:5] == ["PEER", "NAME", "KNOWN", "STATE", "CPUS"]
    assert table[1].startswith(f"…{b.peer_id[-12:]}") and "bee" in table[1]
    assert "bootstrap" in table[1] or "inbound" in table[1]  # (a bootstraps from b, or b from a)
    assert table[-1].startswith("neighbours: 1; connections: 1 (at most 64)")
    assert "never lends" in table[1]
    assert a.rain("peers", "--full").stdout.splitlines()[1].startswith(b.peer_id)
    assert "peer id:" in a.rain("status").stdout

    info = a.info
    assert {"peer_id", "addrs", "pid", "socket"} <= set(info)
    assert Path(info["socket"]).exists()


def test_cli_without_a_node_says_so(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "node.cli", "--home", str(tmp_path), "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 1
    assert "no rain-node is running" in res.stderr


def test_cli_does_not_import_libp2p() -> None:
    code = (
        "import sys, node.cli\n"
        "node.cli.build_parser('status')\n"
        "heavy = ('libp2p', 'trio', 'zeroconf')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_a_second_node_on_the_same_home_is_refused(cluster: Cluster) -> None:
    a = cluster.start("--listen", LOOPBACK, "--no-mdns", name="shared")
    a.wait_ready()
    res = subprocess.run(
        [sys.executable, "-m", "node.main", "--home", str(a.home), "--listen", LOOPBACK],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 1
    assert "another rain-node" in res.stderr


def test_bad_arguments_get_a_clear_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "node.main", "--home", str(tmp_path), "--bootstrap", "/ip4/1.2.3.4"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2
    assert "must end in /p2p/" in res.stderr
    # A wrong option of a command shows that command's usage (it showed rain's own).
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "--home",
            str(tmp_path),
            "submit",
            "--bogus",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and res.stderr.startswith("usage: rain submit")
    assert "unrecognized arguments: --bogus" in res.stderr


def test_a_port_in_use_gets_a_clear_error(cluster: Cluster) -> None:
    a = cluster.start("--listen", LOOPBACK, "--no-mdns")
    a.wait_ready()
    taken = a.addr.split("/p2p/")[0]
    b = cluster.start("--listen", taken, "--no-mdns")
    assert b.proc is not None
    assert b.proc.wait(timeout=30) == 1
    assert "cannot listen on" in b.log()


def test_an_unreachable_bootstrap_is_reported(cluster: Cluster) -> None:
    """A --bootstrap address nobody answers at was retried silently for ever."""
    nobody = load_or_create(cluster.root / "nobody").peer_id
    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{nobody}"
    a = cluster.start("--listen", LOOPBACK, "--no-mdns", "--bootstrap", addr)
    a.wait_ready()
    wait_until(
        lambda: a.rain_json("status")["unreachable_bootstrap"] == [addr], 40, "it is reported"
    )
    assert f"bootstrap: {addr}: unreachable" in a.rain("status").stdout
    assert f"bootstrap peer {addr} unreachable" in a.log()
