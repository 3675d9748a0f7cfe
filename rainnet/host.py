"""The libp2p host: TCP, Noise only, yamux, a Kademlia DHT in server mode with our record validator.

This is the only module (with the node's runtime) that imports libp2p. Choices made here, and why:
- Security is Noise alone: a default py-libp2p host also accepts dialers offering only plaintext or
  secio; passing our own `sec_opt` makes it refuse them.
- `max_connections_per_peer=1`: with py-libp2p's default (3) every dial waits a fixed 250 ms
  happy-eyeballs delay.
- The DHT accepts values in unregistered namespaces with a warning; our namespace `rain` has a
  validator that checks each record's signature and freshness, and `strict_validation` refuses keys
  outside registered namespaces.
- In a private pool (rainnet.pool) every connection is protected with the pool's key, before
  Noise (rainnet.pnet): a node without it gets no further than its first bytes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import multiaddr
import psutil
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IMuxedConn
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.protocol_muxer.multiselect import MULTISELECT_PROTOCOL_ID
from libp2p.rcmgr.manager import ResourceLimits, ResourceManager
from libp2p.records.pubkey import PublicKeyValidator
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable
from libp2p.stream_muxer.yamux.yamux import MAX_WINDOW_SIZE, Yamux, YamuxStream
from libp2p.utils.varint import encode_delim

from rainnet import pnet, records
from rainnet.identity import Identity
from rainnet.pool import PoolSecret
from rainnet.streams import ProtocolNotSupported

log = logging.getLogger("rainnet.host")

# Connection manager bounds: a node keeps at most this many connections, pruning above the high
# watermark. Membership needs one per live peer in the view.
MAX_CONNECTIONS = 300
MAX_STREAMS = 8192
DIAL_TIMEOUT = 5.0
CLOSE_GRACE = 5.0  # a connection shutting down closes its socket within this


class RecordValidator(Validator):  # type: ignore[misc]
    """The DHT validator for `/rain/...` keys: signature, owner and freshness of node records."""

    def validate(self, key: str, value: bytes) -> None:
        try:
            records.parse_signed(value, time.time(), key)
        except records.RecordError as exc:
            # py-libp2p treats any exception as "invalid"; ValueError keeps its handlers happy.
            raise ValueError(str(exc)) from None

    def select(self, key: str, values: list[bytes]) -> int:
        now = time.time()
        good: list[tuple[int, records.NodeRecord]] = []
        for i, value in enumerate(values):
            try:
                good.append((i, records.parse_signed(value, now, key)))
            except records.RecordError:
                continue
        if not good:
            return 0
        return good[records.newest([rec for _, rec in good])][0]


def libp2p_key_pair(identity: Identity) -> Any:
    """The libp2p key pair for our Ed25519 identity (both read the same 32-byte RFC 8032 seed)."""
    return create_new_key_pair(identity.seed())


FRAME_WRITE_TIMEOUT = 30.0


async def _atomic_write_frame(self: Any, data: bytes) -> None:
    """Yamux._write_frame, made safe against cancellation.

    py-libp2p writes each yamux frame through the Noise session with a plain await: a cancel
    scope that fires mid-write (any timeout around a send) leaves part of an encrypted frame
    on the wire, the peer then fails to authenticate every later frame ("Failed authentication
    of message") and the whole connection, with every stream on it, dies. Seen here: each of
    three runs of 200 concurrent jobs lost a worker connection that way; none since. A frame is
    written whole, shielded from cancellation; a write that cannot finish within
    FRAME_WRITE_TIMEOUT (the peer stopped reading) closes the connection, unusable anyway.
    """
    async with self._write_lock:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(FRAME_WRITE_TIMEOUT) as scope:
                await self.secured_conn.write(data)
            if scope.cancelled_caught:
                with trio.move_on_after(2):
                    await self.secured_conn.close()
                raise MuxedConnUnavailable("a yamux frame could not be written in time")
    await trio.lowlevel.checkpoint()


Yamux._write_frame = _atomic_write_frame


async def _release_by_half_windows(self: Any, *, bytes_read: int = 0) -> None:
    """YamuxStream._auto_tune_and_send_window_update, as go-yamux does it: the credit consumed
    by reads goes back to the sender once it reaches half the window, in one WINDOW_UPDATE,
    and each such update also doubles the window (up to 16 MiB), so a long transfer soon
    runs on a large one.

    py-libp2p's version also returns credit on almost every read and grows the window on
    short streams too: 150 update frames for 10 streams of 5 small round trips each, every
    one encrypted and written; our job streams are short and many. A stream that moves less
    than 128 KiB now sends none.
    """
    async with self.window_lock:
        self._pending_recv_release += bytes_read
        increment: int = self._pending_recv_release
        if increment < self.target_recv_window // 2:
            return
        self._pending_recv_release = 0
        grow = min(self.target_recv_window, MAX_WINDOW_SIZE - self.target_recv_window)
        self.target_recv_window += grow
        increment += grow
        self.recv_window += increment
    await self.send_window_update(increment, skip_lock=True)


YamuxStream._auto_tune_and_send_window_update = _release_by_half_windows


async def _serve_inbound_while_open(
    self: Any, read_write_closer: Any, maddr: Any, failure_event: Any
) -> None:
    """Swarm._do_handle_inbound_connection, holding its inbound slot while the connection is
    open, not while the swarm runs.

    py-libp2p's handler upgrades the connection, then waits for the whole swarm to stop, so
    the slot it took in the inbound limiter (max_connections of them) came back only then:
    after 300 inbound connections over a node's life, however short each, every newcomer was
    closed right after TCP accept, forever, and each old connection kept a task. Here the
    handler returns once its connection shuts down (the listener then closes the socket).
    """
    remote = self._build_remote_multiaddr(read_write_closer)
    if remote is not None and not await self.connection_gate.is_allowed(remote):
        with contextlib.suppress(Exception):
            await read_write_closer.close()
        return
    if isinstance(read_write_closer, IMuxedConn):  # (QUIC and the like: muxed already)
        muxed: Any = read_write_closer
        try:
            await self.add_conn(muxed, direction="inbound")
        except Exception:
            with contextlib.suppress(Exception):
                await read_write_closer.close()
            return
    else:
        raw = RawConnection(read_write_closer, False)
        try:
            muxed = await self.upgrade_inbound_raw_conn(raw, maddr)
        except Exception as exc:
            log.debug("inbound connection from %s not upgraded: %r", remote, exc)
            with contextlib.suppress(Exception):
                await raw.close()
            return
    await _until_closed(muxed)


async def _until_closed(muxed: Any) -> None:
    """Return once a muxed connection has shut down (yamux sets `event_shutting_down` on every
    way down, then `event_closed` once its socket is closed: that gets a short grace)."""
    shutting_down = getattr(muxed, "event_shutting_down", None)
    closed = getattr(muxed, "event_closed", None)
    if shutting_down is None and closed is None:
        raise RuntimeError(f"cannot tell when a {type(muxed).__name__} closes")
    if shutting_down is not None:
        await shutting_down.wait()
    if closed is not None:
        with trio.move_on_after(CLOSE_GRACE):
            await closed.wait()


Swarm._do_handle_inbound_connection = _serve_inbound_while_open


def build_host(identity: Identity, pool: PoolSecret | None = None) -> Any:
    """Our libp2p host; with `pool`, one that only completes connections with its members."""
    key_pair = libp2p_key_pair(identity)
    security = {
        NOISE_PROTOCOL_ID: NoiseTransport(
            key_pair, noise_privkey=create_x25519_key_pair().private_key
        )
    }
    config = ConnectionConfig(
        max_connections_per_peer=1,
        max_connections=MAX_CONNECTIONS,
        dial_timeout=DIAL_TIMEOUT,
        # Membership dials whom it needs; py-libp2p's auto-connect to every known peer would
        # otherwise dial DHT contacts we never asked for.
        min_connections=0,
        low_watermark=0,
        high_watermark=MAX_CONNECTIONS - 20,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt=security,
        muxer_opt=create_yamux_muxer_option(),
        connection_config=config,
        resource_manager=build_resource_manager(),
        psk=pool.psk_hex() if pool is not None else None,
    )
    if pool is not None and getattr(host.get_network(), "psk", None) != pool.psk_hex():
        raise RuntimeError("this py-libp2p does not protect connections with a pool key")
    if pool is not None and _swarm_new_protected_conn() is not pnet.protect:
        raise RuntimeError("py-libp2p's pool protection is not ours (rainnet.pnet)")
    # py-libp2p's auto-connector dials every peer in the peerstore until it holds half the high
    # watermark of connections (140 here): that floods. Membership decides whom to dial.
    host.get_network().auto_connector.maybe_connect = _membership_decides_dials
    # Membership owns redial policy (backoff per peer, reset when discovery mentions the peer
    # again); the swarm's own retries would only stretch each attempt.
    host.get_network().retry_config = RetryConfig(max_retries=0)
    if str(host.get_id()) != identity.peer_id:
        raise RuntimeError("libp2p derived a different peer id from our key")
    return host


def _swarm_new_protected_conn() -> Any:
    import libp2p.network.swarm as swarm_module

    return swarm_module.new_protected_conn


_MULTISTREAM = encode_delim(MULTISELECT_PROTOCOL_ID.encode())


async def open_stream(host: Any, peer_id: ID, protocol: str) -> Any:
    """A new stream to `peer_id` (connected already) for `protocol`, negotiated lazily.

    py-libp2p's `new_stream` runs multistream-select as two round trips (the header, then the
    protocol) before the first byte of ours may go out: about half of what opening a job
    stream cost. Here the header and the protocol go out in front of our first message, in
    the same frame, and the listener's echo of both is checked when we first read (as
    go-multistream's lazy client does). A listener that does not speak `protocol` answers "na":
    the first read then fails, as opening would have.
    """
    stream = await host.get_network().new_stream(peer_id)
    stream.set_protocol(protocol)
    return _LazilyNegotiated(stream, _MULTISTREAM + encode_delim(protocol.encode()))


class _LazilyNegotiated:
    """A stream whose multistream-select proposal goes out with the first write (or before the
    first read), and whose answer (the echo of that proposal) still waits in front of the data:
    `read` checks and drops it first. Everything else is the stream's."""

    def __init__(self, stream: Any, proposal: bytes) -> None:
        self._stream = stream
        self._unsent = proposal
        self._echo = proposal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def read(self, n: int | None = None) -> bytes:
        if self._unsent:
            await self.write(b"")
        while self._echo:
            data: bytes = await self._stream.read(len(self._echo))
            if not data:
                return data  # closed before it answered
            if not self._echo.startswith(data):
                raise ProtocolNotSupported(f"the peer refused {self._stream.get_protocol()}")
            self._echo = self._echo[len(data) :]
        rest: bytes = await self._stream.read(n)
        return rest

    async def write(self, data: bytes) -> None:
        data, self._unsent = self._unsent + data, b""
        await self._stream.write(data)

    async def close(self) -> None:
        await self._stream.close()

    async def reset(self) -> None:
        await self._stream.reset()


async def _membership_decides_dials() -> None:
    return None


def check_ports_free(listen: Sequence[str]) -> None:
    """OSError if a fixed TCP port we are to listen on is taken.

    py-libp2p listens with SO_REUSEPORT (for hole punching), so a second node on the same port
    would start and silently share the port's connections with the first; bind without it first.
    """
    import socket

    for addr in listen:
        parts = addr.split("/")
        if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
            continue
        if parts[4] == "0":
            continue
        family = socket.AF_INET if parts[1] == "ip4" else socket.AF_INET6
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((parts[2], int(parts[4])))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {addr}: {exc.strerror}") from None


def allow_redial(host: Any, peer_id: str) -> None:
    """Lift the swarm's negative dial cache for `peer_id`: a peer that failed a minute ago may be
    back (restarted, cable plugged in, bootstrap node started), and we decide when to retry."""
    host.get_network().unblock_peer(ID.from_base58(peer_id))


def open_streams(host: Any) -> int:
    """How many streams the host holds open now (as its resource manager counts them)."""
    manager = getattr(host.get_network(), "_resource_manager", None)
    return int(manager.get_stats()["streams"]) if manager is not None else -1


def build_resource_manager() -> Any:
    """py-libp2p's resource manager with fixed limits. Its defaults add a circuit breaker
    (after 5 failed acquisitions it refuses every new connection and stream for 60 s) and
    "graceful degradation" (it shrinks the stream limit when the machine is loaded): on a busy
    worker, both turned a burst of job offers into a minute of refusing everyone."""
    return ResourceManager(
        limits=ResourceLimits(
            max_connections=MAX_CONNECTIONS, max_memory_mb=1024, max_streams=MAX_STREAMS
        ),
        enable_metrics=False,
        enable_circuit_breaker=False,
        enable_graceful_degradation=False,
    )


def build_dht(host: Any) -> Any:
    validator = NamespacedValidator(
        {"pk": PublicKeyValidator(), records.RECORD_NAMESPACE: RecordValidator()},
        strict_validation=True,
    )
    return KadDHT(
        host, DHTMode.SERVER, validator=validator, validator_changed=True, strict_validation=True
    )


def parse_multiaddrs(addrs: Sequence[str]) -> list[Any]:
    """Multiaddr objects; ValueError naming the bad one."""
    out = []
    for addr in addrs:
        try:
            out.append(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise ValueError(f"not a multiaddr: {addr!r} ({exc})") from None
    return out


def peer_info(peer_id: str, addrs: Sequence[str]) -> Any:
    """A PeerInfo for dialing `peer_id` at `addrs` (with or without a /p2p suffix)."""
    mas = []
    for addr in addrs:
        base = addr.rpartition("/p2p/")[0] if "/p2p/" in addr else addr
        try:
            mas.append(multiaddr.Multiaddr(base))
        except Exception:
            continue
    return PeerInfo(ID.from_base58(peer_id), mas)


def bootstrap_info(addr: str) -> Any:
    """PeerInfo of a bootstrap multiaddr, which must end in /p2p/<peer id>."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:
        raise ValueError(f"bootstrap address {addr!r} must end in /p2p/<peer id> ({exc})") from None


def advertised_addrs(host: Any, peer_id: str) -> list[str]:
    """Our dialable addresses: wildcard listeners expanded to each interface's IPv4 address,
    loopback last (a remote peer that tries it first reaches itself and wastes a handshake)."""
    out: list[str] = []
    for ma in host.get_transport_addrs():
        text = str(ma)
        parts = text.split("/")
        if len(parts) > 2 and parts[1] == "ip4" and parts[2] == "0.0.0.0":
            for ip in interface_ipv4s():
                out.append("/".join(["", "ip4", ip, *parts[3:]]))
        else:
            out.append(text)
    out = list(dict.fromkeys(out))
    out.sort(key=lambda a: a.startswith("/ip4/127."))
    return [f"{a}/p2p/{peer_id}" for a in out]


def interface_ipv4s() -> list[str]:
    import socket

    ips = []
    for addrs in psutil.net_if_addrs().values():
        for snic in addrs:
            if snic.family == socket.AF_INET:
                ips.append(snic.address)
    return ips


def listen_ips(listen: Sequence[str]) -> list[str] | None:
    """The IPv4 addresses the node listens on, or None for a wildcard (mDNS on every interface)."""
    ips = []
    for addr in listen:
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] == "ip4":
            if parts[2] == "0.0.0.0":
                return None
            ips.append(parts[2])
    return ips or None
