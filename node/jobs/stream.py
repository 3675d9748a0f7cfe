"""A job's stream: framed messages whose every one passes through the job conversation.

`JobStream` is what both ends' trio code talks through: `send` asks the conversation
(node.jobs.core.conversation) before a message is written, `receive` hands it each message read
and returns what the conversation says it means. It offers the FramedStream calls the ledger's
page fetching and the file transfers use, so they run through the conversation unchanged. When
the stream ends, `ending` says how the attempt stood (the conversation's `peer_gone`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from ledger.messages import Agree, Refuse
from node.jobs.core.conversation import Ending, RequesterConversation, WorkerConversation
from rainnet import wire
from rainnet.streams import DEFAULT_TIMEOUT, FramedStream, StreamGone

T = TypeVar("T")


class JobStream:
    def __init__(self, fs: FramedStream, conv: RequesterConversation | WorkerConversation):
        self.fs = fs
        self.conv = conv
        self.ending: Ending | None = None

    @property
    def remote_peer(self) -> str:
        return self.fs.remote_peer

    async def send(self, msg: wire.Message, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._check_open()
        await self._guard(self.fs.send(self.conv.send(msg), timeout))

    async def settle(self, answer: Agree | Refuse, fetch: bool = True) -> None:
        """Answer the result offered (requester)."""
        assert isinstance(self.conv, RequesterConversation)
        self._check_open()
        await self._guard(self.fs.send(self.conv.settle(answer, fetch)))

    async def receive(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The next message, as the conversation reads it (a message or a checked event)."""
        self._check_open()
        msg = await self._guard(self.fs.receive(timeout))
        return self.conv.receive(msg)

    async def receive_a(self, kind: type[T], timeout: float = DEFAULT_TIMEOUT) -> T:
        event = await self.receive(timeout)
        if not isinstance(event, kind):
            raise wire.RemoteProtocolError(f"expected {kind.__name__}, got {_name(event)}")
        return event

    def _check_open(self) -> None:
        # Once gone (or given up on), a stream carries nothing more: as a dead stream would.
        if self.ending is not None:
            raise StreamGone(f"the stream has ended ({self.ending.value})")

    async def _guard(self, op: Any) -> Any:
        try:
            return await op
        except StreamGone:
            self.gone()
            raise

    def gone(self) -> Ending:
        """The stream ended (or we gave up on it): how the attempt stood, said once."""
        if self.ending is None:
            self.ending = self.conv.peer_gone()
        return self.ending

    async def close(self) -> None:
        await self.fs.close()

    async def reset(self) -> None:
        await self.fs.reset()


def _name(event: object) -> str:
    return getattr(event, "TYPE", type(event).__name__)
