"""The control API: JSON lines over a user-only Unix socket in the node's home.

One request per connection: the client writes one JSON object (`{"op": "status"}`) and a newline,
the node answers with one JSON object and a newline. The socket lives in the home (mode 0700) and
is itself mode 0600, so only the node's user can reach it; nothing of it is on the network.

The client half is plain blocking `socket` code with no trio or libp2p import, so `rain status`
costs only Python's start-up. The server half runs on trio inside rain-node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger("rainnet.control")

MAX_REQUEST = 64 * 1024
MAX_RESPONSE = 64 * 1024 * 1024
REQUEST_TIMEOUT = 10.0
MAX_CLIENTS = 32

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Refusal(StrEnum):
    """Why the node refused a request, for a client that acts on it (its message is the
    user's to read, never to match)."""

    REFUSED = "refused"  # it cannot be done: the message says why
    NOT_FOUND = "not-found"  # what the request names is not on this node


class ControlError(Exception):
    """The node could not be reached or refused the request (message fit for the user).
    `refusal`: the node's kind of refusal; None when it was not reached or answered wrongly."""

    def __init__(self, message: str, refusal: Refusal | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal


class NodeNotRunning(ControlError):
    """No node answers on that home's socket."""


def refusal(message: str, kind: Refusal = Refusal.REFUSED) -> dict[str, Any]:
    """The answer to a request the node refuses. Marked by `"refused": true` rather than by an
    "error" key alone, since answers may carry fields of that name (a failed job's error)."""
    return {"refused": True, "error": message, "kind": kind.value}


def request(sock_path: Path, op: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
    """Send one request to the node behind `sock_path` and return its answer."""
    body = json.dumps({"op": op, **params}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(sock_path))
            sock.sendall(body)
            chunks = []
            size = 0
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE:
                    raise ControlError("the node's answer is too large")
                if chunk.endswith(b"\n"):
                    break
    except (FileNotFoundError, ConnectionRefusedError):
        raise NodeNotRunning(
            f"no rain-node is running with home {sock_path.parent} "
            "(start one: rain-node --home ...)"
        ) from None
    except TimeoutError:
        raise ControlError(f"the node did not answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the node at {sock_path}: {exc}") from None
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError("the node's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise ControlError("the node's answer is not an object")
    if answer.get("refused"):
        try:
            kind = Refusal(str(answer.get("kind")))
        except ValueError:  # (a node older than the kinds, or a kind newer than ours)
            kind = Refusal.REFUSED
        raise ControlError(str(answer.get("error") or "refused"), kind)
    return answer


async def serve(sock_path: Path, handle: Handler, task_status: Any) -> None:
    """Serve the control socket until cancelled; `task_status.started()` once it accepts."""
    import trio

    if len(os.fsencode(sock_path)) >= 108:
        raise ControlError(f"home path too long for a Unix socket: {sock_path}")
    _remove(sock_path)
    listener_sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Create it user-only from the start: umask for the bind, chmod for certainty.
    old_umask = os.umask(0o177)
    try:
        await listener_sock.bind(str(sock_path))
    finally:
        os.umask(old_umask)
    os.chmod(sock_path, 0o600)
    listener_sock.listen(MAX_CLIENTS)
    limiter = trio.CapacityLimiter(MAX_CLIENTS)

    async def one_client(stream: trio.SocketStream) -> None:
        async with limiter, stream:
            answer: dict[str, Any]
            with trio.move_on_after(REQUEST_TIMEOUT):
                try:
                    req = await _read_request(stream)
                except ValueError as exc:
                    answer = refusal(f"bad request: {exc}")
                else:
                    try:
                        answer = await handle(req)
                    except Exception as exc:  # a bug in a handler must not stop the node
                        log.exception("control request %r failed", req.get("op"))
                        answer = refusal(f"internal error: {exc}")
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(json.dumps(answer).encode() + b"\n")

    listener = trio.SocketListener(listener_sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(one_client, stream)
    finally:
        _remove(sock_path)


def _remove(path: Path) -> None:
    """Unlink a socket file (instant on a local directory, so fine inside async code)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _read_request(stream: Any) -> dict[str, Any]:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too large")
    req = json.loads(buf)
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise ValueError('a request is an object with an "op"')
    return req
