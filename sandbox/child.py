"""A job's launch chain as a child of the event loop's own thread, so that it dies with the node
and with nothing else.

The chain arms a parent-death signal (`setpriv --pdeathsig KILL`, bwrap's `--die-with-parent`).
Linux ties that signal to the *thread* that forked the child, not to its process: it fires when
that thread exits. `trio.lowlevel.open_process` forks from one of trio's worker threads, which
exit after 10 s idle, so every job started by `rain sandbox run` was killed at 10 s whatever its
limits said; in the node, thread reuse only hid it (a job whose spawning thread went idle died
the same way). Here the fork happens on the thread that runs trio, which lives as long as the
node. The fork itself (vfork in CPython) costs ~0.3 ms of the event loop, less than the thread
hop it replaces.

The exit is awaited on a pidfd, as trio itself does on Linux.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
from collections.abc import Sequence

import trio

POLL_INTERVAL = 0.05  # where pidfds are missing (Linux < 5.3): how often to look for the exit


PIPE_SIZE = (
    1 << 20
)  # a job's output pipes: fewer, larger reads (the default 64 KiB cost a wakeup each)


def _reader(fd: int | None) -> trio.lowlevel.FdStream | None:
    if fd is None:
        return None
    with contextlib.suppress(OSError):  # (above /proc/sys/fs/pipe-max-size, or not a pipe)
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return trio.lowlevel.FdStream(fd)


class ChildProcess:
    """A running child: its pid, its stdout and stderr as trio streams, its exit status."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout: int | None, stderr: int | None):
        self._popen = popen
        self.pid = popen.pid
        self.stdout = _reader(stdout)
        self.stderr = _reader(stderr)
        self._waiting = trio.Lock()  # several tasks may wait; one watches the pidfd
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None

    @property
    def returncode(self) -> int | None:
        """The exit status as subprocess reports it (-N for a signal), None while it runs."""
        return self._popen.returncode

    async def wait(self) -> int:
        async with self._waiting:
            while self._popen.poll() is None:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)
                else:
                    await trio.sleep(POLL_INTERVAL)
            self._close_pidfd()
        return self._popen.returncode

    def kill(self) -> None:
        """SIGKILL, unless it has been reaped already (its pid may then be someone else's)."""
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    async def aclose(self) -> None:
        """Close its pipes and our pidfd (the process itself is the caller's to end)."""
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        if self._popen.returncode is not None:
            self._close_pidfd()


def spawn(
    argv: Sequence[str],
    *,
    stdin: int,
    pass_fds: Sequence[int],
    env: dict[str, str],
    cwd: str = "/",
) -> ChildProcess:
    """Start `argv` from the calling thread (call it from trio's), with its stdout and stderr
    on pipes and a new session (the owner's Ctrl-C is not the job's business)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=out_w,
            stderr=err_w,
            pass_fds=tuple(pass_fds),
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return ChildProcess(popen, out_r, err_r)
