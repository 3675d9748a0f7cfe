"""Child process for the kill -9 test: settles exchanges between two ledgers in a loop.

Usage: python -m tests.e2e.ledger_settle_child DIR COUNT

Jobs job-0, job-1... alternate roles (A works on even jobs, B on odd ones). Every step is the
idempotent API a restarted node would call, so a run that starts after a kill simply goes through
all jobs again and finishes what was cut. It prints a line after each message "leaves" (a
proposal or agreement returned, so sendable) with the block's hash, for the parent to check that
no block whose signature left the process is missing or different after any crash.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ledger.service import Ledger
from tests.ledger_helpers import LIMITS, identity


def amount(i: int) -> int:
    return 1000 + i


def main(home: Path, count: int) -> None:
    a = Ledger.open(home / "a", identity(0))
    b = Ledger.open(home / "b", identity(1))
    for i in range(count):
        worker, requester = (a, b) if i % 2 == 0 else (b, a)
        job = f"job-{i}"
        done = worker.exchange(requester.public_key, job)
        if done is not None and done.may_release:
            continue
        proposal = worker.propose(
            requester=requester.public_key,
            job_id=job,
            cpu_ms=amount(i),
            gpu_ms=0,
            limits=LIMITS,
            result_hash=bytes(32),
        )
        print(f"P {i} {proposal.block.hash.hex()}", flush=True)
        agreement = requester.agree(proposal, LIMITS)
        print(f"G {i} {agreement.block.hash.hex()}", flush=True)
        assert worker.accept_agreement(agreement).may_release
        print(f"R {i}", flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
