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

Plain blocking code, no trio or libp2p (it starts once per member, on the launch's path):
`rain mpi run` passes the node's home, the group id and its secret in the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from types import FrameType

HOME_ENV = "RAIN_MPI_HOME"
GROUP_ENV = "RAIN_MPI_GROUP_ID"
SECRET_ENV = "RAIN_MPI_GROUP_SECRET"
# ssh's options that take a value (hydra passes `-x`, which does not).
SSH_OPTIONS_WITH_VALUE = frozenset("bcDEeFIiJLlmOoPpQRSWw")
LOST = 255


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
    from node.cli import CliError
    from node.cli.jobs import follow
    from node.cli.status import ask

    words = list(sys.argv[1:] if argv is None else argv)
    try:
        host, command = parse_ssh(words)
        home, group_id, secret = (os.environ[k] for k in (HOME_ENV, GROUP_ENV, SECRET_ENV))
    except (ValueError, KeyError) as exc:
        print(f"rain-mpi-agent: {exc} (run by `rain mpi run` only)", file=sys.stderr)
        return LOST
    args = argparse.Namespace(home=home)
    try:
        job_id = ask(args, "mpi-launch", group_id=group_id, secret=secret, host=host, argv=command)[
            "job_id"
        ]
    except CliError as exc:
        return _lost(host, str(exc))

    def cancel(signum: int, frame: FrameType | None) -> None:
        try:
            ask(args, "cancel", job_id=job_id)
        finally:
            os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, cancel)
    try:
        final = follow(args, job_id, echo=True)
    except CliError as exc:
        return _lost(host, str(exc))
    if final["state"] == "done" and final.get("exit_code") is not None:
        return int(final["exit_code"]) & 0xFF
    worker = (final.get("worker") or "?")[-8:]
    return _lost(host, f"member {worker} {final['state']}: {final.get('error') or ''}")


def _lost(host: str, why: str) -> int:
    print(f"rain-mpi-agent: {host}: {why}", file=sys.stderr, flush=True)
    # The group cannot go on without this member: end it now, and everywhere (mpiexec tells
    # the other proxies to kill their ranks).
    with contextlib.suppress(OSError):
        os.kill(os.getppid(), signal.SIGTERM)
    return LOST


if __name__ == "__main__":
    sys.exit(main())
