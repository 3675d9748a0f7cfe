"""`rain-mpi-agent`: the ssh-compatible program hydra's mpiexec runs to start a proxy on a host.

hydra calls `AGENT [ssh options] HOST "<path>/hydra_pmi_proxy --control-port ..."` once per
host of the group (`-launcher ssh -launcher-exec AGENT`). HOST is a member's pseudo host name
(node.mpi.assembly); the agent asks our node (its control socket, `mpi-launch`) to send that
member the proxy command as the member's job, then follows the job as `rain submit --wait`
does: the proxy's own output is relayed, and the agent exits with its exit code. A member lost
(the job failed: its node vanished, or went silent past the group lease) makes the agent say
which member and why, SIGTERM mpiexec (so the whole group ends at once, not when hydra's own
timeouts fire) and exit 255, as ssh does when the connection drops. SIGTERM to the agent
cancels its member's job.

Plain blocking code on the standard library alone, its own small client of the control socket
(node.control.channel's protocol: one JSON line each way): it starts once per member, on the
launch's path, several at once, so it imports neither trio nor libp2p nor the CLI's modules
(those doubled its start). `rain mpi run` passes the node's home, the group id and its secret
in the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import sys

TYPE_CHECKING = False  # (typing itself is not imported: it costs the start ~3 ms)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType
    from typing import Any

HOME_ENV = "RAIN_MPI_HOME"
GROUP_ENV = "RAIN_MPI_GROUP_ID"
SECRET_ENV = "RAIN_MPI_GROUP_SECRET"
# ssh's options that take a value (hydra passes `-x`, which does not).
SSH_OPTIONS_WITH_VALUE = frozenset("bcDEeFIiJLlmOoPpQRSWw")
LOST = 255
CONTROL_SOCKET = "control.sock"  # in the node's home (node.home.CONTROL_SOCKET)
REQUEST_TIMEOUT = 10.0  # the node answers one request within this (node.control.channel)
MAX_ANSWER = 64 << 20  # (node.control.channel.MAX_RESPONSE)
LONG_POLL = 4.0  # the node answers a `job` request at once when there is output or it ended


class Unreachable(Exception):
    """The node could not be asked, or it refused (why, in words for the user)."""


def parse_ssh(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(host, command) from an ssh command line: options skipped; the words after the host
    joined and split as the remote shell would (ssh hands the remote one string)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        option = argv[i]
        i += 1
        if len(option) == 2 and option[1] in SSH_OPTIONS_WITH_VALUE:
            i += 1
    if i >= len(argv):
        raise ValueError("no host given")
    return argv[i], shlex.split(" ".join(argv[i + 1 :]))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        host, command = parse_ssh(words)
        home, group_id, secret = (os.environ[k] for k in (HOME_ENV, GROUP_ENV, SECRET_ENV))
    except (ValueError, KeyError) as exc:
        print(f"rain-mpi-agent: {exc} (run by `rain mpi run` only)", file=sys.stderr)
        return LOST
    sock = os.path.join(home, CONTROL_SOCKET)
    try:
        launched = ask(
            sock, "mpi-launch", group_id=group_id, secret=secret, host=host, argv=command
        )
        job_id = str(launched["job_id"])
    except Unreachable as exc:
        return _lost(host, str(exc))

    def cancel(signum: int, frame: FrameType | None) -> None:
        try:
            ask(sock, "cancel", job_id=job_id)
        finally:
            os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, cancel)
    try:
        final = follow(sock, job_id)
    except Unreachable as exc:
        return _lost(host, str(exc))
    if final["state"] == "done" and final.get("exit_code") is not None:  # (or it exited)
        return int(final["exit_code"]) & 0xFF
    worker = (final.get("worker") or "?")[-8:]
    return _lost(host, f"member {worker} {final['state']}: {final.get('error') or ''}")


def ask(sock: str, op: str, **params: Any) -> dict[str, Any]:
    """The node's answer to one request on its control socket `sock`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(REQUEST_TIMEOUT)
            conn.connect(sock)
            conn.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
            with conn.makefile("rb") as answers:
                line = answers.readline(MAX_ANSWER)
    except (FileNotFoundError, ConnectionRefusedError):
        raise Unreachable(f"no rain-node is running with home {os.path.dirname(sock)}") from None
    except TimeoutError:
        raise Unreachable(f"the node did not answer within {REQUEST_TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise Unreachable(f"cannot talk to the node at {sock}: {exc}") from None
    try:
        answer = json.loads(line)
    except ValueError:
        raise Unreachable("the node's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise Unreachable("the node's answer is not an object")
    if answer.get("refused"):
        raise Unreachable(str(answer.get("error") or "refused"))
    return answer


def follow(sock: str, job_id: str) -> dict[str, Any]:
    """Relay the member's job's output (the proxy's own messages) until it ends, and the rest
    of it from the node's stored copy; the job's final state. As `rain submit --wait` does
    (node.cli.jobs.follow), with a line when the job waits and why, and when it is frozen
    (its member's owner is back, or another's) or resumed."""
    st: dict[str, Any] = {"stdout_next": 0, "stderr_next": 0, "finished": False}
    from node.jobs.core.holds import MemberState, news  # (standard library alone: ~3 ms)

    said, worker_said = None, "running"
    while not st["finished"]:
        st = _relay(sock, job_id, st, wait=LONG_POLL)
        if st.get("worker_state") == MemberState.EXITED.value:
            # The proxy ended with 0: mpiexec need not wait for the claim to be settled.
            return {**st, "state": "done", "exit_code": 0}
        waiting = st.get("pending_reason")
        if waiting and waiting != said:
            print(f"rain: job {job_id} waiting: {waiting}", file=sys.stderr, flush=True)
        said = waiting
        line, worker_said = news(st.get("worker_state"), worker_said)
        if line and not st["finished"]:  # (suspended with its group, held, resumed)
            print(f"rain: job {job_id} {line}", file=sys.stderr, flush=True)
    while st["stdout_next"] < st["stdout_size"] or st["stderr_next"] < st["stderr_size"]:
        before = (st["stdout_next"], st["stderr_next"])
        st = _relay(sock, job_id, st)
        if (st["stdout_next"], st["stderr_next"]) == before:
            break  # (nothing more to read, though the sizes say otherwise)
    return st


def _relay(sock: str, job_id: str, st: dict[str, Any], **wait: float) -> dict[str, Any]:
    """The job's state from the offsets of `st` on, its new output written out."""
    offsets = {"stdout_from": st["stdout_next"], "stderr_from": st["stderr_next"]}
    st = ask(sock, "job", job_id=job_id, **offsets, **wait)
    sys.stdout.write(st["stdout"])
    sys.stdout.flush()
    sys.stderr.write(st["stderr"])
    sys.stderr.flush()
    return st


def _lost(host: str, why: str) -> int:
    print(f"rain-mpi-agent: {host}: {why}", file=sys.stderr, flush=True)
    # The group cannot go on without this member: end it now, and everywhere (mpiexec tells
    # the other proxies to kill their ranks).
    with contextlib.suppress(OSError):
        os.kill(os.getppid(), signal.SIGTERM)
    return LOST


if __name__ == "__main__":
    sys.exit(main())
