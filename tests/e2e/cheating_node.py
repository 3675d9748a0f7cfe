"""A rain-node whose worker lies: it reports forged stdout for every job it runs.

A fake adversary for the replica-voting test (a cheater cannot be told to appear on demand): the
node is real in every other respect, and its forgery is unique to it, so it never agrees with
anyone. Run as `python -m tests.e2e.cheating_node ARGS` (the same arguments as rain-node).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from node import main
from node.jobs.worker import worker
from sandbox import JobResult

_honest = worker.Worker.sandboxed


async def _forged(self: worker.Worker, *args: Any, **kwargs: Any) -> JobResult:
    result = await _honest(self, *args, **kwargs)
    return dataclasses.replace(result, stdout=b"forged by " + self.ledger.peer_id.encode() + b"\n")


worker.Worker.sandboxed = _forged  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main.main())
