"""Where the job ends' blocking calls run (files, the job store): in a worker thread, so the
node's event loop never waits on the disk.

In-memory tests on a mock clock (node.testing) run them inline instead: a thread takes real
time, during which the mock clock would see every task blocked and jump past deadlines. The
choice is a context variable, so it holds for every task started under it and nothing else.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import TypeVar

import trio

T = TypeVar("T")

_INLINE = contextvars.ContextVar("rainnet_blocking_inline", default=False)


async def run(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` off the event loop (or inline, under `inline()`)."""
    if _INLINE.get():
        await trio.lowlevel.checkpoint()
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args)


@contextlib.contextmanager
def inline() -> Iterator[None]:
    """Run blocking calls inline for the tasks started within (tests on a mock clock)."""
    token = _INLINE.set(True)
    try:
        yield
    finally:
        _INLINE.reset(token)
