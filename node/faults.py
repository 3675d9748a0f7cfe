"""Whose fault it is, once: a ledger message that fails the ledger's checks (`RemoteFault`) and
came from a peer is that peer's protocol error on the stream it came by. Pure."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ledger.errors import RemoteFault
from rainnet import wire


@contextlib.contextmanager
def blamed_on_peer(what: str) -> Iterator[None]:
    """Turn a RemoteFault raised inside into a RemoteProtocolError saying `what` was wrong."""
    try:
        yield
    except RemoteFault as exc:
        raise wire.RemoteProtocolError(f"{what}: {exc}") from None
