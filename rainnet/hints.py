"""Peer hints, taken with care: which hints a node acts on, and how often a hint may make it dial
an address.

Sans-io. A hello carries up to 16 hints (peer id, addresses) of live peers the sender knows;
each hinted peer we did not know becomes a candidate, and candidates are dialed with backoff. An
attacker used that as a reflector: hints naming made-up peer ids, all at an address of its
choosing, made a node open 135 connections to that address within 90 s. The rules here:

- A hinted peer must answer as itself. A dial names the hinted peer id and Noise checks the
  remote's key against it, so an address that is not that peer never completes a connection;
  until a hinted peer has answered once, it is *unconfirmed*, and dials made for unconfirmed
  peers are what the budgets below bound.
- A budget per source: at most HINTS_PER_SOURCE new peers accepted from one hinting peer per
  WINDOW (hints about peers we know already cost nothing; they cause no dial). A sender may
  still hand out every peer it really knows over a few minutes.
- A budget per address: at most DIALS_PER_ADDRESS dials for unconfirmed peers to one address
  (host and port; a circuit address whole, since its dial goes to the relay over a connection
  we hold) per WINDOW, whichever peer ids name it. Honest peers listen on addresses of their
  own: one peer id per address, whose backoff already spaces its dials.
- A hint's address that names a peer id (`/p2p/<id>` at its end) must name the hinted peer,
  and a hint never names ourselves or its sender.

Everything is bounded: the tables forget their oldest entries beyond MAX_TRACKED.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

WINDOW = 60.0
HINTS_PER_SOURCE = 32  # new peers per hinting peer per window: two hellos' worth
DIALS_PER_ADDRESS = 3  # dials for unconfirmed peers to one address per window
MAX_TRACKED = 4096


def address_key(addr: str) -> str:
    """What a dial to `addr` reaches: the transport address without the trailing `/p2p/<id>`
    (the same host and port under another peer id is the same target); a circuit address as it
    is (its dial goes over our connection to the relay, and names its target)."""
    if "/p2p-circuit" in addr:
        return addr
    head, sep, tail = addr.rpartition("/p2p/")
    return head if sep and "/" not in tail else addr


def names_other_peer(addr: str, peer_id: str) -> bool:
    """True if `addr` ends in `/p2p/<id>` with an id other than `peer_id`."""
    _, sep, tail = addr.rpartition("/p2p/")
    return bool(sep) and "/" not in tail and tail != peer_id


@dataclass(frozen=True)
class Hint:
    peer_id: str
    addrs: tuple[str, ...]


class _Counter:
    """Events per key within the last WINDOW seconds, for a bounded number of keys."""

    def __init__(self, limit: int, window: float, max_keys: int) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit)
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        while events and now - events[0] >= self.window:
            events.popleft()
        return events

    def left(self, key: str, now: float) -> int:
        return self.limit - len(self._recent(key, now))

    def take(self, key: str, now: float) -> bool:
        """Count one event for `key` if its budget allows; whether it did."""
        events = self._recent(key, now)
        if len(events) >= self.limit:
            return False
        events.append(now)
        return True


@dataclass
class HintBudget:
    """The per-source and per-address budgets of one node (see the module docstring)."""

    me: str
    hints_per_source: int = HINTS_PER_SOURCE
    dials_per_address: int = DIALS_PER_ADDRESS
    window: float = WINDOW
    max_tracked: int = MAX_TRACKED
    _sources: _Counter = field(init=False)
    _addresses: _Counter = field(init=False)
    refused_hints: int = 0
    refused_dials: int = 0

    def __post_init__(self) -> None:
        self._sources = _Counter(self.hints_per_source, self.window, self.max_tracked)
        self._addresses = _Counter(self.dials_per_address, self.window, self.max_tracked)

    def admit(
        self, source: str, hints: Iterable[Hint], known: Iterable[str], now: float
    ) -> list[Hint]:
        """The hints from `source` to act on: those about peers in `known` (no new dial comes
        of them) and, within `source`'s budget, new ones; addresses naming another peer are
        dropped, and hints of ourselves or of `source` itself."""
        known_set = set(known)
        out: list[Hint] = []
        for hint in hints:
            if hint.peer_id in (self.me, source):
                continue
            addrs = tuple(a for a in hint.addrs if not names_other_peer(a, hint.peer_id))
            if not addrs:
                continue
            if hint.peer_id not in known_set:
                if not self._sources.take(source, now):
                    self.refused_hints += 1
                    continue
                known_set.add(hint.peer_id)
            out.append(Hint(hint.peer_id, addrs))
        return out

    def dialable(self, addrs: Sequence[str], now: float) -> tuple[str, ...]:
        """The addresses an unconfirmed peer may be dialed at now, each charged one dial of its
        address's budget; the rest wait for the window to move on."""
        out = []
        for addr in addrs:
            if self._addresses.take(address_key(addr), now):
                out.append(addr)
            else:
                self.refused_dials += 1
        return tuple(out)

    def dials_left(self, addr: str, now: float) -> int:
        return self._addresses.left(address_key(addr), now)
