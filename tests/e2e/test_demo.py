"""`rain demo` (the trainer), run as a user runs it: a 3-node network comes up on 127.0.0.1,
the panel answers, an MPI pi runs across it, and Ctrl-C leaves no process and no port."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.e2e.nodes import REQUESTER, Cluster, wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_rain_demo_brings_a_network_up_and_down(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "demo", "--nodes", "3", "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(x.startswith("ready: 3 nodes") for x in lines), 90, "ready")
        # (The panel line follows "ready" at once, but the reader thread may not have it yet.)
        wait_until(lambda: any(x.startswith("panel: ") for x in lines), 10, "the panel line")
        [url] = [x.split(" ", 1)[1].strip() for x in lines if x.startswith("panel: ")]
        # (The token in the URL buys a cookie, then the page.)
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with browser.open(url, timeout=10) as page:
            assert page.status == 200
        wait_until(lambda: any("stops every node" in x for x in lines), 240, "the narration")
        text = "".join(lines)
        pi = re.search(r"^0: pi ~ (\d\.\d+) from \d+ darts on 2 ranks$", text, re.MULTILINE)
        assert pi is not None, text
        assert abs(float(pi.group(1)) - 3.14159) < 0.01
        assert "6/6 done" in text and "demo-1" in text and "earned" in text
        infos = [json.loads((folder / f"node{i}" / "node.json").read_text()) for i in range(3)]
        ports = [int(a.split("/tcp/")[1].split("/")[0]) for info in infos for a in info["addrs"]]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        began = time.monotonic()
        wait_until(lambda: not any(_alive(i["pid"]) for i in infos), 5, "every node is gone")
        wait_until(lambda: not any(_port_open(p) for p in ports), 5, "every port is free")
        print(f"all gone {time.monotonic() - began:.2f} s after rain demo ended")
        assert proc.returncode == 0, text
        assert "stopped 3 nodes" in "".join(lines)
    finally:
        if proc.poll() is None:  # (a failed check: stop it as a user would, nodes and all)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for info_file in folder.glob("node*/node.json"):  # nothing may outlive the test
            with contextlib.suppress(OSError, ValueError):
                pid = json.loads(info_file.read_text())["pid"]
                if str(folder) in Path(f"/proc/{pid}/cmdline").read_text():  # (still that node)
                    os.kill(pid, signal.SIGKILL)


def test_rain_demo_stop_stops_a_kept_demo_and_only_its_nodes(tmp_path: Path) -> None:
    """A demo left running (`--keep`) is stopped by `rain demo --stop`; a second `rain demo` on
    it refuses meanwhile; a pid in a home's node.json that is not that home's node is spared."""
    folder = tmp_path / "demo"
    cluster = Cluster(folder)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        node = cluster.start(*REQUESTER, name="node0")
        node.wait_ready()
        (folder / "node1").mkdir()
        (folder / "node1" / "node.json").write_text(json.dumps({"pid": stranger.pid}))
        demo = [sys.executable, "-m", "node.cli", "demo", "--dir", str(folder)]
        again = subprocess.run(demo, capture_output=True, text=True, timeout=30)
        assert again.returncode == 1 and "running already" in again.stderr, again.stderr
        stop = subprocess.run([*demo, "--stop"], capture_output=True, text=True, timeout=30)
        assert stop.stdout.strip() == "stopped 1 nodes", stop
        assert node.proc is not None and node.proc.wait(timeout=5) == 0  # (SIGTERM: clean)
        assert stranger.poll() is None
        stop = subprocess.run([*demo, "--stop"], capture_output=True, text=True, timeout=30)
        assert stop.stdout.startswith("no demo node runs in"), stop
    finally:
        stranger.kill()
        stranger.wait()
        cluster.stop_all()
