"""rain-mpi-agent (node/mpi/agent.py) against a stand-in node: a thread answering its control
socket with canned JSON, so the agent's own small client and its following of a member's job
are tested without a node."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.cli.mpi import agent_launcher
from node.control import channel
from node.home import CONTROL_SOCKET
from node.mpi import agent

Answer = Callable[[dict[str, Any]], dict[str, Any]]


class StandIn:
    """A control socket in `home` answering each request with `answer(request)`."""

    def __init__(self, home: Path, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(home / CONTROL_SOCKET))
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                req = json.loads(lines.readline())
                self.requests.append(req)
                conn.sendall(json.dumps(self.answer(req)).encode() + b"\n")

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(agent.HOME_ENV, str(tmp_path))
    monkeypatch.setenv(agent.GROUP_ENV, "g" * 32)
    monkeypatch.setenv(agent.SECRET_ENV, "s3cret")
    return tmp_path


@pytest.fixture
def killed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The signals the agent sends (to mpiexec, its parent), not sent."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


@pytest.fixture
def node(home: Path) -> Iterator[Callable[[Answer], StandIn]]:
    made: list[StandIn] = []

    def start(answer: Answer) -> StandIn:
        made.append(StandIn(home, answer))
        return made[-1]

    yield start
    for s in made:
        s.close()


def job_answers(chunks: list[tuple[str, str]], final: dict[str, Any], rest: str = "") -> Answer:
    """`mpi-launch` gives job j1; each `job` request its next (stdout, stderr) chunk, the last
    one finished with `final`; then `rest` (more stdout the node stored), if any."""
    size = sum(len(c[0]) for c in chunks) + len(rest)
    err_size = sum(len(c[1]) for c in chunks)
    pieces = [*chunks, *([(rest, "")] if rest else [])]
    answers = iter(range(len(pieces)))

    def answer(req: dict[str, Any]) -> dict[str, Any]:
        if req["op"] == "mpi-launch":
            return {"job_id": "j1"}
        assert req["op"] == "job" and req["job_id"] == "j1"
        i = next(answers)
        out, err = pieces[i]
        ended = i >= len(chunks) - 1
        return {
            **(final if ended else {"state": "running"}),
            "stdout": out,
            "stderr": err,
            "stdout_next": req["stdout_from"] + len(out),
            "stderr_next": req["stderr_from"] + len(err),
            "stdout_size": size,
            "stderr_size": err_size,
            "finished": ended,
        }

    return answer


def test_its_constants_are_the_nodes() -> None:
    assert agent.CONTROL_SOCKET == CONTROL_SOCKET
    assert agent.MAX_ANSWER == channel.MAX_RESPONSE
    assert agent.REQUEST_TIMEOUT == channel.REQUEST_TIMEOUT


def test_parse_ssh_skips_options_and_splits_the_remote_command() -> None:
    host, cmd = agent.parse_ssh(["-x", "-p", "22", "127.1.0.2", "/x/hydra_pmi_proxy", "--a 'b c'"])
    assert host == "127.1.0.2"
    assert cmd == ["/x/hydra_pmi_proxy", "--a", "b c"]
    with pytest.raises(ValueError):
        agent.parse_ssh(["-x"])


def test_it_relays_the_jobs_output_and_exits_with_its_code(
    node: Callable[[Answer], StandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    final = {"state": "done", "exit_code": 3}
    standin = node(job_answers([("a\n", ""), ("b\n", "oops\n")], final))
    code = agent.main(["-x", "127.1.0.1", "/x/hydra_pmi_proxy", "--control-port", "1"])
    assert code == 3
    out = capsys.readouterr()
    assert (out.out, out.err) == ("a\nb\n", "oops\n")
    launch = standin.requests[0]
    assert launch == {
        "op": "mpi-launch",
        "group_id": "g" * 32,
        "secret": "s3cret",
        "host": "127.1.0.1",
        "argv": ["/x/hydra_pmi_proxy", "--control-port", "1"],
    }
    polls = standin.requests[1:]
    assert [p["stdout_from"] for p in polls] == [0, 2]
    assert all(p["wait"] == agent.LONG_POLL for p in polls)


def test_its_launcher_runs_it_isolated_on_the_standard_library_alone(
    home: Path, node: Callable[[Answer], StandIn]
) -> None:
    """hydra runs the script agent_launcher writes: the agent as `python -S -I` (no site, no
    third-party package on its path), which still launches its member and relays its job."""
    node(job_answers([("a\n", "")], {"state": "done", "exit_code": 4}))
    script = agent_launcher(home)
    assert agent_launcher(home) == script and os.access(script, os.X_OK)
    res = subprocess.run(
        [str(script), "-x", "127.1.0.1", "/x/hydra_pmi_proxy"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (res.returncode, res.stdout, res.stderr) == (4, "a\n", "")
    probe = subprocess.run(
        [sys.executable, "-S", "-I", "-c", "import sys; print('site' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.stdout.strip() == "False"  # (what -S means here: the agent ran without it)


def test_it_reads_what_the_last_answer_did_not_carry(
    node: Callable[[Answer], StandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    standin = node(job_answers([("a\n", "")], {"state": "done", "exit_code": 0}, rest="z\n"))
    assert agent.main(["127.1.0.1", "/x/hydra_pmi_proxy"]) == 0
    assert capsys.readouterr().out == "a\nz\n"
    assert "wait" not in standin.requests[-1] and standin.requests[-1]["stdout_from"] == 2


def test_a_member_lost_ends_mpiexec_and_says_which(
    node: Callable[[Answer], StandIn],
    killed: list[tuple[int, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    final = {"state": "failed", "worker": "12D3KooWmember42", "error": "lost it"}
    node(job_answers([("", "")], final))
    assert agent.main(["127.1.0.2", "/x/hydra_pmi_proxy"]) == agent.LOST
    assert killed == [(os.getppid(), 15)]
    assert "127.1.0.2: member member42 failed: lost it" in capsys.readouterr().err


def test_a_refused_launch_and_no_node_are_lost_members(
    home: Path,
    node: Callable[[Answer], StandIn],
    killed: list[tuple[int, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert agent.main(["127.1.0.3", "/x/hydra_pmi_proxy"]) == agent.LOST
    assert f"no rain-node is running with home {home}" in capsys.readouterr().err
    node(lambda req: channel.refusal("no MPI group 'gg' here"))
    assert agent.main(["127.1.0.3", "/x/hydra_pmi_proxy"]) == agent.LOST
    assert "127.1.0.3: no MPI group 'gg' here" in capsys.readouterr().err
    assert len(killed) == 2


def test_outside_rain_mpi_run_it_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(agent.HOME_ENV, raising=False)
    assert agent.main(["127.1.0.1", "/x/hydra_pmi_proxy"]) == agent.LOST
    assert "run by `rain mpi run` only" in capsys.readouterr().err
