"""The live hub: one view a second for every open page, as a delta, and none when no page is open.

While at least one page listens, the hub builds the view once a second (node.panel.view, from the
node's snapshot), and hands each listener one message: the whole view to one that just came (its
first message, or after it fell behind), the delta from the last view to the others. Every
listener has a bounded queue filled with `send_nowait`: one that does not keep up (a stalled
tab, a dead connection not noticed yet) is dropped, never waited for; its page reconnects and
starts again from a whole view. The messages are encoded once per tick, whatever the number of
listeners. A new listener wakes the hub at once, so a page shows its first view without waiting
for the next second. With no listener the hub sleeps on an event: no snapshot, no cost.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from node.panel import view as views

log = logging.getLogger("rainnet.panel")

PERIOD = 1.0
BUILD_TIMEOUT = 5.0  # a snapshot that takes longer is skipped (the ledger thread may be busy)
QUEUE_DEPTH = 4  # messages a listener may be behind before it is dropped
MAX_LISTENERS = 16


class HubFull(Exception):
    """Too many pages open at once."""


class _Listener:
    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[str](QUEUE_DEPTH)
        self.fresh = True  # wants a whole view next


class Hub:
    def __init__(
        self,
        build: Callable[[], Awaitable[views.View]],
        period: float = PERIOD,
        max_listeners: int = MAX_LISTENERS,
    ) -> None:
        self._build = build
        self.period = period
        self.max_listeners = max_listeners
        self._listeners: set[_Listener] = set()
        self._wake = trio.Event()
        self._view: views.View | None = None
        self.seq = 0
        self.ticks = 0  # views built (for tests and benchmarks)
        self.dropped = 0  # listeners dropped for falling behind

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[trio.MemoryReceiveChannel[str]]:
        """A channel of encoded messages (the whole view first); it ends if we fall behind."""
        if len(self._listeners) >= self.max_listeners:
            raise HubFull(f"{self.max_listeners} pages are open already")
        listener = _Listener()
        self._listeners.add(listener)
        self._wake.set()
        try:
            async with listener.receive:
                yield listener.receive
        finally:
            self._listeners.discard(listener)
            listener.send.close()

    async def run(self) -> None:
        """Tick while anyone listens, until cancelled."""
        while True:
            if not self._listeners:
                self._view = None  # stale by the time anyone comes back
                await self._wake.wait()
            self._wake = trio.Event()
            started = trio.current_time()
            with trio.move_on_after(BUILD_TIMEOUT) as scope:
                new = await self._build()
            if scope.cancelled_caught:
                log.warning("the panel's view took over %.0f s to build; skipped", BUILD_TIMEOUT)
            else:
                self.publish(new)
            with trio.move_on_at(started + self.period):
                await self._wake.wait()  # (a new listener: build for it now)

    def publish(self, new: views.View) -> None:
        """Hand `new` to every listener: whole to the fresh ones, as a delta to the others."""
        self.ticks += 1
        self.seq += 1
        old, self._view = self._view, new
        whole: str | None = None
        delta: str | None = None
        for listener in list(self._listeners):
            if listener.fresh or old is None:
                if whole is None:
                    whole = views.encode({"type": "view", "seq": self.seq, "view": new})
                message = whole
            else:
                if delta is None:
                    changes = views.diff(old, new)
                    delta = views.encode({"type": "delta", "seq": self.seq, "changes": changes})
                message = delta
            try:
                listener.send.send_nowait(message)
                listener.fresh = False
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self.dropped += 1
                self._listeners.discard(listener)
                listener.send.close()  # its page reconnects and gets a whole view
