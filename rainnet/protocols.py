"""The peer protocols' ids and messages (membership: hello and heartbeat).

Each protocol lists the messages it may carry and the frame cap that applies; the codec refuses
anything else. Remote peers can reach only these protocols (and libp2p's own: identify, ping, kad).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rainnet import wire
from rainnet.records import SignedRecord

HELLO = "/rain/hello/1.0.0"
HEARTBEAT = "/rain/heartbeat/1.0.0"

MAX_HINTS = 16
HELLO_MAX_FRAME = 64 * 1024
HEARTBEAT_MAX_FRAME = 256


@wire.message("peer-hint")
@dataclass(frozen=True)
class PeerHint(wire.Message):
    """Another live peer and where to reach it (peer exchange, bounded per hello)."""

    peer_id: str = field(metadata=wire.limit(64))
    addrs: tuple[str, ...] = field(metadata=wire.limit(16))


@wire.message("hello")
@dataclass(frozen=True)
class Hello(wire.Message):
    """Sent by the dialer: who I am (signed record) and a few live peers I know."""

    record: SignedRecord
    hints: tuple[PeerHint, ...] = field(metadata=wire.limit(MAX_HINTS))


@wire.message("hello-reply")
@dataclass(frozen=True)
class HelloReply(wire.Message):
    record: SignedRecord
    hints: tuple[PeerHint, ...] = field(metadata=wire.limit(MAX_HINTS))


@wire.message("ping")
@dataclass(frozen=True)
class Ping(wire.Message):
    """A liveness probe on the long-lived heartbeat stream; `record_seq` is the sender's current
    record sequence, so a peer learns cheaply that it should fetch a newer record."""

    nonce: int
    record_seq: int


@wire.message("pong")
@dataclass(frozen=True)
class Pong(wire.Message):
    """The answer; `parting`: this node trimmed the connection (its neighbourhood is full), so
    the pinger stops watching it and keeps it as a candidate, rather than redial at once."""

    nonce: int
    record_seq: int
    parting: bool = False
