"""A rain-node of the version before task sessions: it does not speak `/rain/tasks`.

For the test that a requester falls back to offering jobs one by one to such a worker (a network
updates one node at a time). Run as `python -m tests.e2e.older_worker ARGS` (rain-node's arguments).
"""

from __future__ import annotations

import sys
from typing import Any

from node import main
from rainnet import host as rhost
from rainnet import jobproto


def _without_tasks(host: Any) -> Any:
    """The host, its handler for the task-session protocol never installed."""
    real = host.set_stream_handler

    def set_stream_handler(protocol: Any, handler: Any) -> Any:
        if str(protocol) == jobproto.TASKS:
            return None
        return real(protocol, handler)

    host.set_stream_handler = set_stream_handler
    return host


_build_host = rhost.build_host
rhost.build_host = lambda *a, **k: _without_tasks(_build_host(*a, **k))

if __name__ == "__main__":
    sys.exit(main.main())
