"""The ledger's frame on the wire: `/rain/ledger/1.0.0`, and the frame that also carries ledger
messages on a job stream (a worker fetching a requester's chain while it weighs an offer).

A frame holds one ledger message as the ledger's own msgpack bytes (`ledger.messages`), which the
ledger validates; this module only caps its size. node.ledger_link moves the frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rainnet import wire

LEDGER = "/rain/ledger/1.0.0"
MAX_LEDGER_MESSAGE = 1 << 20
LEDGER_MAX_FRAME = MAX_LEDGER_MESSAGE + 1024


@wire.message("ledger")
@dataclass(frozen=True)
class LedgerFrame(wire.Message):
    body: bytes = field(metadata=wire.limit(MAX_LEDGER_MESSAGE))
