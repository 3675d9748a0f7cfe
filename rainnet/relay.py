"""Circuit relay v2 for rainnet: how a node behind NAT stays reachable through a public peer.

This module owns the trio edge of py-libp2p's `libp2p.relay.circuit_v2` for one host:
- serving (hop, `rain-node --relay`): a bounded `CircuitV2Protocol` that relays circuits to the
  peers holding a reservation on it;
- accepting circuits (stop): only from the relays this node chose to reserve on;
- holding reservations (`--relay-via MULTIADDR`): reserve a slot on each relay, refresh it, redo it
  when the connection to the relay drops, and report the circuit addresses
  `<relay addr>/p2p/<relay id>/p2p-circuit/p2p/<self id>` the node should put in its signed record;
- dialing: `dial_circuit` reaches a peer through a circuit address, and `connect` tries a peer's
  direct addresses first and its circuit addresses after a short head start.

A relayed connection is an ordinary swarm connection once made (the upgrade to Noise and yamux
goes through the swarm, which registers it), so `host.new_stream(peer_id, [protocol])` reuses it
for any protocol, in both directions. What the swarm does not do is dial circuit addresses: it
drops every `/p2p-circuit` address before dialing, so a connection through a relay only exists
if someone calls `dial_circuit` (or `connect`) first.

In a private pool (rainnet.pool) the relay must be a pool member, and a circuit we dial is
protected with the pool key like any connection (`pnet.protect_outbound`: py-libp2p's swarm
protects the circuits it accepts, not those it dials).

How a node learns that it is behind NAT is not decided here: the operator says which relay to use
(`--relay-via`), and the node then advertises both its own addresses and its circuit addresses.

Every wait is bounded. Nothing raised by the relay code reaches py-libp2p's stream handlers: a
handler that raises tears the whole host down.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as PbPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from rainnet import host as rhost
from rainnet import pnet as rpnet
from rainnet.streams import guarded_handler

log = logging.getLogger("rainnet.relay")

HOP = str(HOP_PROTOCOL)
STOP = str(STOP_PROTOCOL)
CIRCUIT = "/p2p-circuit"

# Client side. A reservation exchange is two small messages; a relayed dial is a TCP connect to the
# relay (the swarm's own dial timeout is 5 s), two relay messages and a Noise + yamux upgrade
# through the relay (~8 relayed round trips).
RESERVE_TIMEOUT = 10.0
DIAL_TIMEOUT = 10.0
CONNECT_TIMEOUT = 8.0
# Direct addresses get this head start over circuit addresses in `connect`: a reachable peer
# answers a direct dial in milliseconds, and one behind NAT usually drops the SYN silently (the
# dial would wait out the swarm's full 5 s), so waiting longer only delays relayed peers.
DIRECT_HEAD_START = 0.5
# How often a held reservation checks that the connection to its relay is still there (a
# reservation is only valid while it is), and the longest gap between refreshes. The refresh also
# keeps the NAT mapping of that connection alive, so it is much shorter than the reservation.
CHECK_INTERVAL = 1.0
REFRESH_MAX = 300.0
BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
MAX_CIRCUIT_ADDRS_PER_RELAY = 4
# Serving: once one direction of a circuit has ended, the other gets this long to finish on its
# own before the relay ends the circuit (see `_BoundedHop`).
CIRCUIT_LINGER = 1.0
PROTECT_TAG = "rain-relay"


class RelayError(Exception):
    """A relay could not be reached, or it refused (see `status` when it answered)."""

    def __init__(self, message: str, status: StatusCode | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HopLimits:
    """What a relay offers, and why these numbers.

    A relayed connection in rainnet is not a brief hole-punching aid: it carries membership
    heartbeats for as long as both peers live, hellos, ledger exchanges and whole jobs (inputs up
    to 64 MiB, results, and the job stream is the job's lease: cutting it ends the attempt). So
    the per-circuit caps are generous, and the relay bounds its load with counts instead.
    """

    # NATed nodes one relay serves at a time. A volunteer relay in Python moves every relayed
    # byte itself; a few dozen workers behind it is what one such peer can reasonably carry.
    reservations: int = 32
    # Spec default: a client refreshes well before this (every `REFRESH_MAX` at most), and a
    # reservation whose holder disconnected is dropped at the next reservation request anyway.
    reservation_ttl: int = 3600
    # Circuits into one NATed node: one per peer talking to it through this relay. A NATed node
    # dials out to every peer it learns of, and those peers reuse that direct connection, so
    # circuits are only needed for peers it has not reached yet (or that are NATed themselves).
    circuits_per_target: int = 32
    # Circuits from one peer to one target: one is normal (one connection per peer), two allow a
    # redial to overlap a dying circuit. Stops one peer from taking all of a target's circuits.
    circuits_per_pair: int = 2
    # All circuits through this relay: each is two relay tasks and two yamux streams whose
    # receive windows start at 256 KiB (py-libp2p grows them towards 16 MiB on long fast
    # transfers), so the total is what bounds the relay's memory and CPU.
    circuits_total: int = 128
    # Per circuit: a circuit is cut after this long (checked when data moves) or this many bytes
    # (both directions together). A day covers the default job (1 h of wall time) many times over;
    # a job relayed for longer than a day loses its lease at the cut. 1 GiB is over ten jobs with
    # the largest inline inputs; heartbeats use ~4 MB a day.
    circuit_duration: int = 24 * 3600
    circuit_data: int = 1 << 30


@dataclass(frozen=True)
class Circuit:
    """A parsed circuit address `<relay addr>/p2p/<relay>/p2p-circuit/p2p/<target>`."""

    relay_addr: str  # with /p2p/<relay>; may be just "/p2p/<relay>" (relay already known)
    relay_id: str
    target_id: str


@dataclass(frozen=True)
class Reservation:
    """A slot held on a relay, as the relay granted it."""

    relay_id: str
    expires_at: float  # unix seconds
    relay_addrs: tuple[str, ...]  # the relay's own addresses as it reported them, with /p2p/<id>
    limit_duration: int  # seconds per circuit (0: none)
    limit_data: int  # bytes per circuit (0: none)


# ----- addresses ---------------------------------------------------------------------------------


def is_circuit(addr: str) -> bool:
    return CIRCUIT in addr


def parse_circuit(addr: str) -> Circuit:
    """The parts of a circuit address; ValueError if it is not exactly relay + target."""
    relay_part, sep, target_part = addr.partition(CIRCUIT)
    if not sep or CIRCUIT in target_part:
        raise ValueError(f"not a single-hop circuit address: {addr!r}")
    if not target_part.startswith("/p2p/") or target_part.count("/") != 2:
        raise ValueError(f"circuit address must end in /p2p-circuit/p2p/<target>: {addr!r}")
    target_id = target_part[len("/p2p/") :]
    base, p2p, relay_id = relay_part.rpartition("/p2p/")
    if not p2p or "/" in relay_id:
        raise ValueError(f"circuit address must name its relay (/p2p/<relay>): {addr!r}")
    try:
        ID.from_base58(relay_id)
        ID.from_base58(target_id)
        multiaddr.Multiaddr(addr)
    except Exception as exc:
        raise ValueError(f"bad circuit address {addr!r}: {exc}") from None
    if relay_id == target_id:
        raise ValueError(f"circuit address relays a peer through itself: {addr!r}")
    return Circuit(relay_addr=f"{base}/p2p/{relay_id}", relay_id=relay_id, target_id=target_id)


def circuit_addr(relay_addr: str, target_id: str) -> str:
    """`relay_addr` (ending in /p2p/<relay>) + /p2p-circuit/p2p/<target>."""
    return f"{relay_addr}{CIRCUIT}/p2p/{target_id}"


def relay_info(relay_addr: str) -> PeerInfo:
    """PeerInfo of a relay multiaddr that ends in /p2p/<relay id>; ValueError otherwise."""
    if is_circuit(relay_addr):
        raise ValueError(f"a relay address cannot itself be a circuit: {relay_addr!r}")
    return rhost.bootstrap_info(relay_addr)


def _is_loopback(addr: str) -> bool:
    return addr.startswith(("/ip4/127.", "/ip6/::1/"))


def advertised_circuits(
    configured: str,
    reservation: Reservation,
    self_id: str,
    limit: int = MAX_CIRCUIT_ADDRS_PER_RELAY,
) -> tuple[str, ...]:
    """The circuit addresses to advertise for one reservation: through the address we were told
    to use first (it reached the relay from here), then the relay's own, minus unusable ones."""
    allow_loopback = _is_loopback(configured)
    out: list[str] = []
    for addr in (configured, *reservation.relay_addrs):
        if not addr.endswith(f"/p2p/{reservation.relay_id}") or is_circuit(addr):
            continue
        if _is_loopback(addr) and not allow_loopback:
            continue
        if addr.startswith(("/ip4/0.0.0.0/", "/ip6/::/")):
            continue
        out.append(circuit_addr(addr, self_id))
    return tuple(dict.fromkeys(out))[:limit]


def connection_kind(host: Any, peer_id: str) -> str | None:
    """How we are connected to `peer_id` now: 'direct', 'relayed' or None (not connected)."""
    try:
        conns = host.get_network().get_connections(ID.from_base58(peer_id))
        live = [c for c in conns if not c.is_closed]
        if not live:
            return None
        relayed = all(c.get_connection_type() == ConnectionType.RELAYED for c in live)
    except Exception:
        return None
    return "relayed" if relayed else "direct"


# ----- small helpers -----------------------------------------------------------------------------


def _connected(host: Any, peer: Any) -> bool:
    try:
        return any(not c.is_closed for c in host.get_network().get_connections(peer))
    except Exception:
        return False


async def _discard(stream: Any) -> None:
    """Reset a stream we are done with, even while being cancelled; bounded."""
    with trio.CancelScope(shield=True), trio.move_on_after(1.0), contextlib.suppress(Exception):
        await stream.reset()


async def _close(stream: Any) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1.0), contextlib.suppress(Exception):
        await stream.close()


def _status(code: int) -> StatusCode | None:
    try:
        return StatusCode(code)
    except ValueError:
        return None


def _status_name(code: int) -> str:
    status = _status(code)
    return status.name if status is not None else f"status {code}"


async def _open_hop(host: Any, relay: PeerInfo) -> Any:
    """A hop stream to `relay`, connecting first if needed (no timeout: callers bound it)."""
    if not _connected(host, relay.peer_id):
        # We decide when to retry a relay (reservation backoff, membership's dial policy); the
        # swarm's negative cache would otherwise refuse a relay that failed once.
        host.get_network().unblock_peer(relay.peer_id)
        if not relay.addrs:
            raise RelayError(f"not connected to relay {relay.peer_id} and no address for it")
        await host.connect(relay)
    return await host.new_stream(relay.peer_id, [HOP_PROTOCOL])


async def _hop_request(
    host: Any, relay: PeerInfo, request: HopMessage, exchange: str
) -> tuple[Any, HopMessage]:
    """Open a hop stream to `relay`, send `request` and read the answer (no timeout: callers
    bound it); RelayError naming `exchange` if any of it fails (the stream is then reset)."""
    try:
        stream = await _open_hop(host, relay)
    except RelayError:
        raise
    except Exception as exc:
        raise RelayError(f"cannot reach relay {relay.peer_id}: {exc!r}") from None
    try:
        await write_delimited_msg(stream, request)
        return stream, await read_delimited_msg(stream, HopMessage)
    except BaseException as exc:
        await _discard(stream)
        if not isinstance(exc, Exception):
            raise
        raise RelayError(f"{exchange} failed: {exc!r}") from None


# ----- client: reserve ---------------------------------------------------------------------------


async def reserve(host: Any, relay: PeerInfo, timeout: float = RESERVE_TIMEOUT) -> Reservation:
    """Reserve (or refresh) a slot on `relay`; RelayError if it cannot be reached or refuses."""
    relay_id = str(relay.peer_id)
    with trio.move_on_after(timeout):
        # The spec's RESERVE carries nothing: the relay reserves for the authenticated peer.
        reserve = HopMessage(type=HopMessage.RESERVE)
        stream, resp = await _hop_request(
            host, relay, reserve, f"reservation exchange with {relay_id}"
        )
        await _close(stream)
        if resp.type != HopMessage.STATUS:
            raise RelayError(f"relay {relay_id} answered RESERVE with message type {resp.type}")
        if resp.status != StatusCode.OK:
            raise RelayError(
                f"relay {relay_id} refused the reservation: {_status_name(resp.status)}",
                _status(resp.status),
            )
        if not resp.HasField("reservation") or resp.reservation.expire <= time.time():
            raise RelayError(f"relay {relay_id} accepted but sent no valid reservation")
        addrs: list[str] = []
        for raw in list(resp.reservation.addrs)[:16]:
            try:
                addrs.append(str(multiaddr.Multiaddr(bytes(raw))))
            except Exception:
                continue
        return Reservation(
            relay_id=relay_id,
            expires_at=float(resp.reservation.expire),
            relay_addrs=tuple(addrs),
            limit_duration=int(resp.limit.duration) if resp.HasField("limit") else 0,
            limit_data=int(resp.limit.data) if resp.HasField("limit") else 0,
        )
    raise RelayError(f"no reservation from relay {relay_id} within {timeout:.0f} s")


# ----- client: dial ------------------------------------------------------------------------------


async def dial_circuit(host: Any, addr: str, timeout: float = DIAL_TIMEOUT) -> None:
    """Connect to the target of circuit address `addr` through its relay.

    Afterwards the relayed connection is registered in the swarm like any other, so
    `host.new_stream(target, [protocol])` uses it. Returns at once if already connected to the
    target. ValueError for a malformed address; RelayError if the relay cannot be reached, refuses
    (e.g. NO_RESERVATION when the target holds no slot there), or the upgrade fails.

    py-libp2p's `CircuitV2Transport.dial` does the same steps, but as a client it first reserves
    a slot for the dialer on the relay (using up the relay's reservations for every peer that
    merely dials), tries every circuit address the peerstore has for the target before the one
    asked for (its reads there have no timeout), and stores circuit addresses it built itself in
    the peerstore for ever. Doing the three steps here keeps each one bounded and the dial to the
    address asked for.
    """
    circuit = parse_circuit(addr)
    target = ID.from_base58(circuit.target_id)
    if str(host.get_id()) in (circuit.target_id, circuit.relay_id):
        raise ValueError(f"circuit address {addr!r} leads through or to ourselves")
    if _connected(host, target):
        return
    base = circuit.relay_addr.rpartition("/p2p/")[0]
    relay = PeerInfo(ID.from_base58(circuit.relay_id), [multiaddr.Multiaddr(base)] if base else [])
    with trio.move_on_after(timeout):
        connect = HopMessage(type=HopMessage.CONNECT, peer=PbPeerId(id=target.to_bytes()))
        stream, resp = await _hop_request(
            host, relay, connect, f"CONNECT through {circuit.relay_id}"
        )
        if resp.type != HopMessage.STATUS or resp.status != StatusCode.OK:
            await _discard(stream)
            raise RelayError(
                f"relay {circuit.relay_id} refused a circuit to {circuit.target_id}: "
                f"{_status_name(resp.status)}",
                _status(resp.status),
            )
        # From here the hop stream is a byte pipe to the target: secure and multiplex it as an
        # outbound connection. Noise checks that the far end really is `target` (the relay cannot
        # stand in for it), and the swarm registers the result under the target's peer id.
        raw = RawConnection(
            stream=stream,
            initiator=True,
            connection_type=ConnectionType.RELAYED,
            addresses=[multiaddr.Multiaddr(addr)],
        )
        try:
            await host.upgrade_outbound_connection(rpnet.protect_outbound(host, raw), target)
        except BaseException as exc:
            await _discard(stream)
            if not isinstance(exc, Exception):
                raise
            raise RelayError(f"upgrade through {circuit.relay_id} failed: {exc!r}") from None
        return
    raise RelayError(f"no circuit to {circuit.target_id} within {timeout:.0f} s")


async def connect(
    host: Any, peer_id: str, addrs: Sequence[str], timeout: float = CONNECT_TIMEOUT
) -> None:
    """Make sure `host` is connected to `peer_id` using its advertised `addrs`.

    Direct addresses go first; circuit addresses start after `DIRECT_HEAD_START` (or as soon as
    the direct attempt fails), one relay after another; the first connection made wins and the
    rest are cancelled. RelayError (naming what was tried) if none worked within `timeout`.
    """
    target = ID.from_base58(peer_id)
    if _connected(host, target):
        return
    me = str(host.get_id())
    direct = [a for a in addrs if not is_circuit(a)]
    circuits: list[str] = []
    for addr in addrs:
        if not is_circuit(addr):
            continue
        try:
            c = parse_circuit(addr)
        except ValueError:
            continue
        if c.target_id == peer_id and me not in (c.relay_id, c.target_id):
            circuits.append(addr)
    if not direct and not circuits:
        raise RelayError(f"no usable address for {peer_id}")
    errors: list[str] = []
    direct_over = trio.Event()
    won = False

    async def try_direct(cancel: trio.CancelScope) -> None:
        nonlocal won
        try:
            if direct:
                rhost.allow_redial(host, peer_id)
                await host.connect(rhost.peer_info(peer_id, direct))
                won = True
                cancel.cancel()
        except Exception as exc:
            errors.append(f"direct: {exc!r}")
        finally:
            direct_over.set()

    async def try_relayed(cancel: trio.CancelScope) -> None:
        nonlocal won
        if not circuits:
            return
        with trio.move_on_after(DIRECT_HEAD_START):
            await direct_over.wait()
        for addr in circuits:
            try:
                await dial_circuit(host, addr, timeout=timeout)
            except (RelayError, ValueError) as exc:
                errors.append(f"{addr}: {exc}")
                continue
            won = True
            cancel.cancel()
            return

    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(try_direct, nursery.cancel_scope)
            nursery.start_soon(try_relayed, nursery.cancel_scope)
    if won or _connected(host, target):
        return
    tried = "; ".join(errors) or f"nothing answered within {timeout:.0f} s"
    raise RelayError(f"cannot connect to {peer_id}: {tried}")


# ----- serving and accepting ---------------------------------------------------------------------


class _BoundedHop(CircuitV2Protocol):  # type: ignore[misc]
    """py-libp2p's relay with what it lacks for a public peer (libp2p pinned at 0.8.1, whose
    private `_handle_reserve` / `_handle_connect` these wrap):
    - RESERVE honours an optional peer id in the message, so anyone could fill every slot with
      made-up peers for an hour: we clear it, and the slot goes to the authenticated remote;
    - slots of peers that disconnected stay counted until they expire: we drop them first;
    - circuits are bounded per target only: we also bound them in total and per (source, target);
    - when a circuit ends in one direction (a cap cut it, or one side left), the task relaying
      the other direction can stay blocked in a read for as long as the relay's connection to
      that side lives (yamux's local reset does not wake a waiting reader), keeping the circuit's
      slots taken: we end the whole circuit `CIRCUIT_LINGER` after either direction ends.
    """

    def __init__(self, host: Any, limits: HopLimits, serve: bool) -> None:
        super().__init__(
            host,
            limits=RelayLimits(
                duration=limits.circuit_duration,
                data=limits.circuit_data,
                max_circuit_conns=limits.circuits_per_target,
                max_reservations=limits.reservations,
                reservation_ttl=limits.reservation_ttl,
            ),
            allow_hop=serve,
        )
        self.hop_limits = limits
        self.circuits = 0
        self._pairs: dict[tuple[str, str], int] = {}
        # Live circuits by the id of their source's hop stream: an event set when a direction
        # ends, and the circuit's streams (the hop stream and the stop stream to the target).
        self._live: dict[int, tuple[trio.Event, list[Any]]] = {}

    def reserved_peers(self) -> set[str]:
        rm = self.resource_manager
        return {str(p) for p, r in rm._reservations.items() if not r.is_expired()}

    def _drop_disconnected(self) -> None:
        rm = self.resource_manager
        for peer_id, res in list(rm._reservations.items()):
            if res.active_connections == 0 and not _connected(self.host, peer_id):
                del rm._reservations[peer_id]

    async def _handle_reserve(self, stream: Any, msg: Any) -> None:
        msg.ClearField("peer")
        self._drop_disconnected()
        await super()._handle_reserve(stream, msg)

    async def _handle_connect(self, stream: Any, msg: Any) -> None:
        source = str(stream.muxed_conn.peer_id)
        try:
            target = str(ID(msg.peer.id))
        except Exception:
            await self._refuse(stream, StatusCode.MALFORMED_MESSAGE, "bad target peer id")
            return
        pair = (source, target)
        if source == target:
            await self._refuse(stream, StatusCode.PERMISSION_DENIED, "circuit to oneself")
            return
        if self.circuits >= self.hop_limits.circuits_total:
            await self._refuse(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED, "relay is full")
            return
        if self._pairs.get(pair, 0) >= self.hop_limits.circuits_per_pair:
            await self._refuse(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED, "too many circuits")
            return
        self.circuits += 1
        self._pairs[pair] = self._pairs.get(pair, 0) + 1
        ended, streams = self._live[id(stream)] = (trio.Event(), [stream])
        try:
            async with trio.open_nursery() as nursery:

                async def end_both_directions() -> None:
                    await ended.wait()
                    await trio.sleep(CIRCUIT_LINGER)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(end_both_directions)
                # Returns when the circuit ends: the library relays both directions inside it.
                await super()._handle_connect(stream, msg)
                nursery.cancel_scope.cancel()
        finally:
            del self._live[id(stream)]
            for each in streams:
                await _discard(each)
            self.circuits -= 1
            left = self._pairs.pop(pair, 1) - 1
            if left > 0:
                self._pairs[pair] = left

    async def _relay_data(self, src_stream: Any, dst_stream: Any, *args: Any, **kw: Any) -> None:
        live = self._live.get(id(src_stream)) or self._live.get(id(dst_stream))
        if live is not None:
            live[1].extend(s for s in (src_stream, dst_stream) if all(s is not t for t in live[1]))
        try:
            await super()._relay_data(src_stream, dst_stream, *args, **kw)
        finally:
            if live is not None:
                live[0].set()

    async def _refuse(self, stream: Any, code: StatusCode, why: str) -> None:
        log.debug("refusing a circuit from %s: %s", stream.muxed_conn.peer_id, why)
        with trio.move_on_after(2.0):
            with contextlib.suppress(Exception):
                msg = HopMessage(type=HopMessage.STATUS, status=to_proto_status(code))
                await write_delimited_msg(stream, msg)
        await _discard(stream)


class Relay:
    """Relay v2 for one host: serving (optional), accepting circuits, reservations, dialing.

    Construct before `host.run` and call `install()` there too (handlers must be in place before
    the host listens); run `run()` in the node's nursery to hold the reservations in `via`.
    `on_addrs` is called with the current circuit addresses (all relays together) whenever they
    change, including to () when every reservation is lost.
    """

    def __init__(
        self,
        host: Any,
        *,
        serve: bool = False,
        limits: HopLimits | None = None,
        via: Sequence[str] = (),
        on_addrs: Callable[[tuple[str, ...]], None] | None = None,
    ) -> None:
        self.host = host
        self.serve = serve
        # One keeper per relay: the first address given for a relay is the one used.
        by_relay: dict[str, tuple[str, PeerInfo]] = {}
        for addr in via:
            info = relay_info(addr)  # ValueError for a bad --relay-via
            by_relay.setdefault(str(info.peer_id), (addr, info))
        self.via = tuple(addr for addr, _ in by_relay.values())
        self._relays = [info for _, info in by_relay.values()]
        self._relay_ids = set(by_relay)
        self._on_addrs = on_addrs
        self._circuits: dict[str, tuple[str, ...]] = {}
        self.reservations: dict[str, Reservation] = {}
        self.changed = trio.Event()
        self._proto = _BoundedHop(host, limits or HopLimits(), serve)

    @property
    def circuit_addrs(self) -> tuple[str, ...]:
        return tuple(a for relay in self.via_ids() for a in self._circuits.get(relay, ()))

    def via_ids(self) -> list[str]:
        return [str(info.peer_id) for info in self._relays]

    def reserved_peers(self) -> set[str]:
        """Peers holding a slot on this node (serving side)."""
        return self._proto.reserved_peers()

    @property
    def circuits_relayed(self) -> int:
        """Circuits this node is relaying now (serving side)."""
        return self._proto.circuits

    def install(self) -> None:
        """Register the relay's stream handlers: hop if serving, stop always."""
        # Both hand their stream on (a circuit, a relayed connection): never closed here.
        if self.serve:
            hop = guarded_handler("relay-hop", self._hop, close_when_done=False)
            self.host.set_stream_handler(HOP_PROTOCOL, hop)
        stop = guarded_handler("relay-stop", self._stop, close_when_done=False)
        self.host.set_stream_handler(STOP_PROTOCOL, stop)

    async def _hop(self, stream: Any) -> None:
        # The library's handler catches its own errors; guarded_handler is the backstop.
        await self._proto._handle_hop_stream(stream)

    async def _stop(self, stream: Any) -> None:
        # A STOP stream turns into a connection from whoever the relay says; accept that only
        # from relays we reserved on (anyone else has no business relaying to us).
        relay = str(stream.muxed_conn.peer_id)
        if relay not in self._relay_ids:
            log.warning("refusing a relayed connection offered by %s (not our relay)", relay)
            await _discard(stream)
            return
        # Upgrades the stream to a swarm connection (Noise proves who is at the far end) and
        # returns; the stream then lives on as that connection's transport.
        await self._proto._handle_stop_stream(stream)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Hold a reservation on every relay in `via` until cancelled."""
        task_status.started()
        if not self._relays:
            return
        async with trio.open_nursery() as nursery:
            for configured, info in zip(self.via, self._relays, strict=True):
                nursery.start_soon(self._keep, configured, info)

    async def wait_reserved(self, timeout: float) -> tuple[str, ...]:
        """The circuit addresses once there are any; RelayError if none within `timeout`."""
        with trio.move_on_after(timeout):
            while not self.circuit_addrs:
                await self.changed.wait()
            return self.circuit_addrs
        raise RelayError(f"no reservation within {timeout:.0f} s")

    def _publish(self, relay_id: str, addrs: tuple[str, ...]) -> None:
        if self._circuits.get(relay_id, ()) == addrs:
            return
        before = self.circuit_addrs
        self._circuits[relay_id] = addrs
        if self.circuit_addrs == before:
            return
        self.changed.set()
        self.changed = trio.Event()
        if self._on_addrs is not None:
            try:
                self._on_addrs(self.circuit_addrs)
            except Exception:
                log.exception("circuit address callback failed")

    async def _keep(self, configured: str, info: PeerInfo) -> None:
        relay_id = str(info.peer_id)
        me = str(self.host.get_id())
        backoff = BACKOFF_MIN
        while True:
            try:
                res = await reserve(self.host, info)
            except RelayError as exc:
                log.warning("relay %s: %s (retry in %.0f s)", relay_id, exc, backoff)
                self.reservations.pop(relay_id, None)
                self._publish(relay_id, ())
                await trio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if relay_id not in self.reservations:
                log.info(
                    "reserved a slot on relay %s until %s", relay_id, time.ctime(res.expires_at)
                )
            backoff = BACKOFF_MIN
            self.reservations[relay_id] = res
            # The relay connection carries our reachability: keep the pruner off it.
            with contextlib.suppress(Exception):
                self.host.get_network().protect(info.peer_id, PROTECT_TAG)
            self._publish(relay_id, advertised_circuits(configured, res, me))
            hold = max(1.0, min((res.expires_at - time.time()) / 2, REFRESH_MAX))
            with trio.move_on_after(hold):
                # Polling is cheap (a dict lookup) and needs no hook into the swarm's notifees.
                while True:
                    await trio.sleep(CHECK_INTERVAL)
                    if not _connected(self.host, info.peer_id):
                        break
            if not _connected(self.host, info.peer_id):
                # The slot died with the connection (the relay only honours reservations of
                # connected peers); stop advertising it until a new one is granted.
                log.info("lost the connection to relay %s; reserving again", relay_id)
                self.reservations.pop(relay_id, None)
                self._publish(relay_id, ())
