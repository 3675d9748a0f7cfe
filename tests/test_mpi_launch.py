"""`rain mpi run`'s mpiexec command line, in memory: Python programs run under mpi4py's runner
(a failing rank aborts the group instead of hanging in MPI_Finalize), other commands as given."""

from __future__ import annotations

import pytest

from node.cli.mpi import under_mpi4py


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
