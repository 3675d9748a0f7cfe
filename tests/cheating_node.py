"""A rain-node whose worker lies: it reports forged stdout for every job it runs.

A fake adversary for the replica-voting test (a cheater cannot be told to appear on demand): the
node is real in every other respect, and its forgery is unique to it, so it never agrees with
anyone. Run as `python -m tests.cheating_node ARGS` (the same arguments as rain-node).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from node import main, worker

_honest = worker.Worker._settle_and_release


async def _forged(
    self: worker.Worker,
    fs: Any,
    offer: Any,
    spec: Any,
    requester: str,
    result: Any,
    result_dir: Any,
) -> None:
    forged = dataclasses.replace(
        result, stdout=b"forged by " + self.ledger.ledger.peer_id.encode() + b"\n"
    )
    await _honest(self, fs, offer, spec, requester, forged, result_dir)


worker.Worker._settle_and_release = _forged  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main.main())
