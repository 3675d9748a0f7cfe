"""`rain policy`: from a fresh local sample without a node, from the node's answer with one."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node import cli
from node.control import channel as control
from node.home import CONTROL_SOCKET
from node.owner.config import PolicyConfig
from node.owner.policy import Decision, Signals, policy_report


def home_with_input(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    home = tmp_path / "home"
    inputs = tmp_path / "input"
    home.mkdir()
    inputs.mkdir()
    (home / "config.toml").write_text(
        f'[policy]\ninput_paths = ["{inputs}"]\nwatch_ttys = false\nstart_idle = "1m"\n{extra}'
    )
    return home, inputs


def rain(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_without_a_node_it_samples_locally(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, inputs = home_with_input(tmp_path)
    (inputs / "event0").touch()  # the owner just typed
    code, out, _ = rain(capsys, "--home", str(home), "policy", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["node_running"] is False
    assert "no rain-node is running" in report["note"]
    assert report["state"] == "owner" and report["start_allowed"] is False
    assert report["reason"].startswith("owner input")
    assert "lends after 1 min without input" in report["reason"]
    assert report["thresholds"]["start_idle"] == 60.0
    assert report["signals"]["input_sources"] == 1 and report["signals"]["load_window"] > 0
    code, out, _ = rain(capsys, "--home", str(home), "policy")
    assert code == 0
    assert "would be: owner" in out and "owner input:" in out and "start:" in out


def test_a_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home, _ = home_with_input(tmp_path, 'continue_idle = "a while"\n')
    code, out, err = rain(capsys, "--home", str(home), "policy")
    assert code == 1 and out == ""
    assert err.strip().endswith(
        "config.toml: policy.continue_idle: expected a duration like 15m, got 'a while'"
    )


@contextlib.contextmanager
def fake_node(sock_path: Path, answer: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    """A control socket answering every request with `answer`; yields the requests seen."""
    seen: list[dict[str, Any]] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(4)
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                seen.append(json.loads(conn.makefile("rb").readline()))
                conn.sendall(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_with_a_node_it_shows_the_node_s_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, _ = home_with_input(tmp_path)
    config = PolicyConfig()
    signals = Signals(100.0, 0.02, 12.0, None, 8 << 30, None, True, 0.5, 0.48)
    reason = "owner input 12 s ago: suspended; resumes after 5 min idle"
    decision = Decision(100.0, "suspended", "none", False, reason, 12.0)
    transitions = [
        {"at": time.time() - 12, "from": "busy", "to": "suspended", "action": "suspend",
         "reason": "owner input 0.2 s ago: suspended; resumes after 5 min idle"},
    ]  # fmt: skip
    answer = policy_report(config, signals, decision, node_running=True, transitions=transitions)
    with fake_node(home / CONTROL_SOCKET, answer) as seen:
        code, out, _ = rain(capsys, "--home", str(home), "policy")
        assert code == 0 and seen == [{"op": "policy"}]
        assert "state: suspended for 12 s (refuses guests)" in out
        assert f"why:   {reason}" in out
        assert "2% of the machine (all 50%, guests 48%" in out
        assert "busy -> suspended [suspend]: owner input 0.2 s ago" in out
        code, out, _ = rain(capsys, "--home", str(home), "policy", "--json")
        assert json.loads(out) == json.loads(json.dumps(answer))


def test_an_older_node_falls_back_to_a_local_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, _ = home_with_input(tmp_path)
    with fake_node(home / CONTROL_SOCKET, control.refusal("unknown operation 'policy'")):
        code, out, _ = rain(capsys, "--home", str(home), "policy", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["node_running"] is False
    assert "the node did not report its policy: unknown operation 'policy'" in report["note"]


def test_rain_policy_imports_neither_trio_nor_libp2p(tmp_path: Path) -> None:
    home, _ = home_with_input(tmp_path)
    # This command's own modules only (other command modules are not this test's business).
    code = (
        "import argparse, sys\n"
        "from node.cli import policy as cli_policy\n"
        f"args = argparse.Namespace(home={str(home)!r}, json=True)\n"
        "assert cli_policy.cmd_policy(args) == 0\n"
        "heavy = ('libp2p', 'trio', 'zeroconf')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy), file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "[]"
