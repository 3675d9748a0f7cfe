"""This node in the network: the libp2p host and its DHT, our signed record, and the three
concerns that keep an accurate view of who is alive (rainnet.membership):
- discovery (rainnet.discovery): mDNS, bootstrap, the DHT;
- contact (rainnet.contact): hellos, both ways, with signed records and hints;
- liveness (rainnet.liveness): heartbeats, and expiry of the silent;
and the bounded neighbourhood (rainnet.neighbourhood, done by rainnet.connections) that keeps the
view, the connections and the heartbeats to at most `max_connections` peers, however large the
network: what grows with it (the workers, their records) is looked up in the DHT.
Circuit relay (rainnet.relay) makes a node behind NAT reachable through a public peer.

The node above hands in what its record says of it (`describe`) and its own stream handlers,
and hears of each contact (`on_contact`); it opens streams to peers through `open_stream`.
Nothing is broadcast; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.tools.anyio_service import background_trio_service

from rainnet import __version__, identity, netsize, protocols, records
from rainnet import host as rhost
from rainnet import relay as rrelay
from rainnet.connections import Neighbourhood
from rainnet.contact import HELLO_TIMEOUT, Contact, OnContact
from rainnet.discovery import Discovery
from rainnet.liveness import Liveness
from rainnet.membership import Membership
from rainnet.neighbourhood import DEFAULT_MAX_CONNECTIONS, Limits
from rainnet.pool import PoolSecret
from rainnet.streams import StreamGone, guarded_handler

Handler = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class NetworkConfig:
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    mdns: bool = True
    heartbeat_interval: float = 2.0
    peer_timeout: float = 10.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # rainnet.neighbourhood.Limits.of
    record_ttl: float = 300.0
    relay: bool = False  # offer circuit relay v2 to NATed peers
    relay_via: tuple[str, ...] = ()  # relays to reserve a slot on (we are behind NAT)
    # A private pool: connections and mDNS only with its members (None: the open network).
    pool: PoolSecret | None = None


@dataclass(frozen=True)
class Description:
    """What our record says of us beside our addresses (the node above knows it)."""

    cpus: int
    memory: int
    gpus: int
    backends: tuple[str, ...]
    state: str
    lends: bool  # whether we announce ourselves as a worker in the DHT
    # What the panels show of us (records.NodeRecord): user lights, too hot, load in eighths.
    user1: str = records.Light.OFF.value
    user2: str = records.Light.OFF.value
    hot: bool = False
    load: int = 0
    name: str = ""  # the owner's name for this machine (its hostname by default)
    mpi: bool = False  # whether we take the ranks of MPI groups


class PeerNetwork:
    def __init__(
        self,
        me: identity.Identity,
        config: NetworkConfig,
        describe: Callable[[], Description],
    ) -> None:
        self.me = me
        self.config = config
        self._describe = describe
        self.membership = Membership(me.peer_id, peer_timeout=config.peer_timeout)
        self.addrs: list[str] = []
        self._direct_addrs: list[str] = []
        self.seq = 0
        self._signed: records.SignedRecord | None = None
        self._host: Any = None
        self._dht: Any = None
        self.discovery: Discovery | None = None
        self.neighbourhood: Neighbourhood | None = None
        self._contact: Contact | None = None
        self._on_addrs: Callable[[], None] = lambda: None

    # ----- our record -------------------------------------------------------------------------

    def record_changed(self) -> None:
        """What `describe` says changed (our state): sign a new record at the next use."""
        self._signed = None

    def signed_record(self) -> records.SignedRecord:
        """Our current signed record; re-signed when it changed or nears expiry."""
        now = time.time()
        current = self._signed
        if current is not None:
            rec = records.open_record(current, now)
            if now < rec.issued_at + rec.ttl / 2:
                return current
        # Sequence numbers come from the clock (milliseconds), so they keep rising across restarts
        # without storing anything: peers keep the highest one they saw.
        self.seq = max(self.seq + 1, int(now * 1000))
        d = self._describe()
        rec = records.NodeRecord(
            peer_id=self.me.peer_id,
            addrs=tuple(self.addrs[:32]),
            cpus=d.cpus,
            memory=d.memory,
            gpus=d.gpus,
            backends=d.backends,
            version=__version__,
            state=d.state,
            seq=self.seq,
            issued_at=now,
            ttl=self.config.record_ttl,
            user1=d.user1,
            user2=d.user2,
            hot=d.hot,
            load=d.load,
            name=d.name,
            lends=d.lends,
            mpi=d.mpi,
        )
        self._signed = records.sign_record(self.me, rec)
        return self._signed

    # ----- running ----------------------------------------------------------------------------

    async def run(
        self,
        handlers: dict[str, Handler],
        on_contact: OnContact,
        on_addrs: Callable[[], None] = lambda: None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen, join and keep the view until cancelled; `task_status.started()` once we
        listen. `handlers`: the node's own protocols (each guarded: nothing it raises reaches
        py-libp2p); `on_contact(peer, joined)` after each hello; `on_addrs()` when our
        advertised addresses change (relay reservations)."""
        listen = rhost.parse_multiaddrs(self.config.listen)
        self._on_addrs = on_addrs
        self._host = rhost.build_host(self.me, self.config.pool)
        self._dht = rhost.build_dht(self._host)
        discovery = self.discovery = Discovery(
            self.me.peer_id,
            self._dht,
            self.membership,
            self.signed_record,
            lambda: self.seq,
            lambda: self._describe().lends,
        )

        async def contacted(peer_id: str, joined: bool) -> None:
            if joined:
                liveness.watch(peer_id)
                nursery.start_soon(discovery.add_to_routing_table, peer_id)
            await on_contact(peer_id, joined)

        relay = rrelay.Relay(
            self._host,
            serve=self.config.relay,
            via=self.config.relay_via,
            on_addrs=self._on_circuits,
        )
        neighbourhood = self.neighbourhood = Neighbourhood(
            self._host,
            self.membership,
            Limits.of(self.config.max_connections),
            protected=lambda: set(relay.via_ids()) | relay.reserved_peers(),
            dialing=lambda: set(contact.dialing),
        )
        contact = self._contact = Contact(
            self._host, self.membership, self.signed_record, contacted, neighbourhood.due
        )
        liveness = Liveness(
            self._host,
            self.membership,
            self.config.heartbeat_interval,
            self.config.peer_timeout,
            lambda: self.seq,
            contact.refresh_if_newer,
        )
        # Handlers are in place before we listen: a stream that arrives before its handler
        # (or the DHT service) is ready is refused rather than crashing the host.
        own = {protocols.HELLO: contact.handle, protocols.HEARTBEAT: liveness.handle}
        for protocol, handler in {**own, **handlers}.items():
            name = protocol.split("/")[2]
            self._host.set_stream_handler(protocol, guarded_handler(name, handler))
        relay.install()
        async with (
            self._host.run(listen),
            background_trio_service(self._dht),
            trio.open_nursery() as nursery,
        ):
            self._direct_addrs = rhost.advertised_addrs(self._host, self.me.peer_id)
            self.addrs = list(self._direct_addrs)
            await nursery.start(relay.run)  # reservations arrive later, via _on_circuits
            contact.start(nursery)
            liveness.start(nursery)
            nursery.start_soon(neighbourhood.run)
            nursery.start_soon(discovery.publish)
            nursery.start_soon(discovery.dht_discovery)
            if self.config.bootstrap:
                nursery.start_soon(discovery.bootstrap, self.config.bootstrap)
            if self.config.mdns:
                ips = rhost.listen_ips(self.config.listen)
                pool = self.config.pool
                service = pool.mdns_service_type() if pool is not None else None
                await nursery.start(discovery.mdns, lambda: self.addrs, ips, service)
            task_status.started()
            await trio.sleep_forever()

    def _on_circuits(self, circuits: tuple[str, ...]) -> None:
        """Our relay reservations changed: advertise the circuit addresses (first, so the caps
        on addresses per peer never cut them) in a newly signed record."""
        self.addrs = [*circuits, *self._direct_addrs][:32]
        self._signed = None
        self._on_addrs()

    async def open_stream(self, peer_id: str, protocol: str, timeout: float = HELLO_TIMEOUT) -> Any:
        """A new stream to `peer_id` (dialing it if needed); StreamGone if that fails in time."""
        peer = self.membership.peers.get(peer_id)
        with trio.move_on_after(timeout):
            try:
                if peer is not None and peer.addrs and not peer.live and self._contact:
                    # Not a neighbour (a worker found in the DHT, one trimmed since): a hello
                    # first, so each side holds the other's fresh record and watches it while
                    # their streams carry work.
                    await self._contact.greet(peer_id, peer.addrs)
                if peer is not None and peer.addrs:
                    await rrelay.connect(self._host, peer_id, peer.addrs, timeout - 1)
                return await rhost.open_stream(self._host, ID.from_base58(peer_id), protocol)
            except Exception as exc:
                raise StreamGone(f"cannot open {protocol} to {peer_id}: {exc!r}") from None
        raise StreamGone(f"cannot open {protocol} to {peer_id} within {timeout:.0f} s")

    def look_further(self) -> None:
        """A job found no worker among those known: look workers up in the DHT soon."""
        if self.discovery is not None:
            self.discovery.wanted.set()

    async def find_workers(self, count: int = 20) -> list[records.NodeRecord]:
        if self.discovery is None:
            return []
        return await self.discovery.find_workers(count)

    def network_size(self) -> int | None:
        """The network's size as our DHT routing table suggests (rainnet.netsize)."""
        if self._dht is None:
            return None
        peers = [pid.to_bytes() for pid in self._dht.routing_table.get_peer_ids()]
        return netsize.estimate(ID.from_base58(self.me.peer_id).to_bytes(), peers)

    def open_streams(self) -> int:
        """How many streams the host holds open now."""
        return rhost.open_streams(self._host) if self._host is not None else 0

    async def disconnect(self, peer_id: str) -> None:
        with trio.move_on_after(2), contextlib.suppress(Exception):
            await self._host.disconnect(ID.from_base58(peer_id))
