"""`rain mpi run`'s mpiexec command line, in memory: Python programs run under mpi4py's runner
(a failing rank aborts the group instead of hanging in MPI_Finalize), other commands as given."""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path

import pytest

from node.cli.mpi import run_teed, under_mpi4py


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["python3", "prog.py", "1"], ["python3", "-m", "mpi4py", "prog.py", "1"]),
        (
            ["/usr/bin/python3.11", "-m", "pkg"],
            ["/usr/bin/python3.11", "-m", "mpi4py", "-m", "pkg"],
        ),
        (["python", "-c", "print(1)"], ["python", "-m", "mpi4py", "-c", "print(1)"]),
        (["python3", "-m", "mpi4py", "p.py"], ["python3", "-m", "mpi4py", "p.py"]),
        (["python3", "-u", "p.py"], ["python3", "-u", "p.py"]),  # (options of its own: as given)
        (["./a.out"], ["./a.out"]),
        (["pythonista", "p.py"], ["pythonista", "p.py"]),
        ([], []),
    ],
)
def test_python_programs_run_under_mpi4py(command: list[str], expected: list[str]) -> None:
    assert under_mpi4py(command) == expected


def test_mpiexec_s_end_its_code_and_a_time_limit_come_back(tmp_path: Path) -> None:
    """run_teed (mpiexec's runner): the exit code (128 + N for a signal), output teed to the
    log, and past its time the command killed and None."""
    logs = (tmp_path / "out", tmp_path / "err")
    out = io.TextIOWrapper(io.BytesIO(), write_through=True)
    assert run_teed(["sh", "-c", "echo hi; exit 3"], {}, 30, out, logs) == 3
    assert out.buffer.getvalue() == b"hi\n" and logs[0].read_bytes() == b"hi\n"
    assert run_teed(["sh", "-c", "kill -TERM $$"], {}, 30, out, logs) == 128 + signal.SIGTERM
    began = time.monotonic()
    assert run_teed(["sleep", "30"], {}, 0.3, out, logs) is None
    assert time.monotonic() - began < 10  # (killed, not waited for)
