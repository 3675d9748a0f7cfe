"""The control channel's client (node.control.channel.request) against a stand-in node: a
refusal's kind comes back typed, whatever the node's message says."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.control import channel
from node.control.channel import ControlError, Refusal


@pytest.fixture
def answering(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """A socket answering each connection with the next of the answers the test appends."""
    path = tmp_path / "control.sock"
    answers: list[dict[str, Any]] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                lines.readline()
                conn.sendall(json.dumps(answers.pop(0)).encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield path, answers
    finally:
        listener.close()


def test_a_refusal_carries_its_kind(answering: tuple[Path, list[dict[str, Any]]]) -> None:
    path, answers = answering
    answers.append(channel.refusal("no job 'x' on this node", Refusal.NOT_FOUND))
    with pytest.raises(ControlError, match="no job 'x'") as found:
        channel.request(path, "resolve", job_id="x")
    assert found.value.refusal is Refusal.NOT_FOUND
    # Any other refusal, one without a kind (an older node) or with one we do not know: REFUSED.
    for answer in (
        channel.refusal("starting"),
        {"refused": True, "error": "old"},
        {"refused": True, "error": "new", "kind": "from-the-future"},
    ):
        answers.append(answer)
        with pytest.raises(ControlError) as refused:
            channel.request(path, "status")
        assert refused.value.refusal is Refusal.REFUSED
    answers.append({"state": "idle"})
    assert channel.request(path, "status") == {"state": "idle"}


def test_a_node_not_reached_is_no_refusal(tmp_path: Path) -> None:
    with pytest.raises(channel.NodeNotRunning) as gone:
        channel.request(tmp_path / "control.sock", "status")
    assert gone.value.refusal is None
