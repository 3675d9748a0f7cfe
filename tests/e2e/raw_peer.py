"""A peer made of raw py-libp2p parts, for tests that talk to a node as another peer would: its
signed hello, and one hello round trip on a new stream."""

from __future__ import annotations

import time
from typing import Any

from libp2p.peer.id import ID

from rainnet import protocols, records
from rainnet.identity import Identity
from rainnet.streams import FramedStream


def hello_message(me: Identity, hints: tuple[protocols.PeerHint, ...] = ()) -> protocols.Hello:
    """A hello with a minimal, validly signed record of `me` and `hints` (none by default)."""
    rec = records.NodeRecord(
        peer_id=me.peer_id,
        addrs=(),
        cpus=1,
        memory=1,
        gpus=0,
        backends=(),
        version="test",
        state="idle",
        seq=1,
        issued_at=time.time(),
        ttl=60,
    )
    return protocols.Hello(records.sign_record(me, rec), hints)


async def hello_round(
    host: Any, me: Identity, peer: ID, hints: tuple[protocols.PeerHint, ...] = ()
) -> str:
    """Say hello to `peer` (connected already) on a new stream, with `hints`; the peer id its
    reply's record names, checked."""
    stream = await host.new_stream(peer, [protocols.HELLO])
    fs = FramedStream(stream, (protocols.HelloReply,), protocols.HELLO_MAX_FRAME)
    await fs.send(hello_message(me, hints))
    reply = await fs.receive_a(protocols.HelloReply)
    await fs.close()
    return records.open_record(reply.record, time.time()).peer_id
