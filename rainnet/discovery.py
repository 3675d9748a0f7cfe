"""Finding peers and being found: mDNS on the LAN, bootstrap addresses, and the DHT.

Everything found goes to the membership view (`Membership.learn`), which decides whom to contact:
- mDNS (rainnet.mdns) reports from zeroconf's thread, through a bounded channel;
- bootstrap addresses are learnt again every few seconds while their peer is not live;
- the DHT: our signed record under `/rain/node/<peer id>` and, for a node that lends, a provider
  record under WORKERS_KEY, published at the first peer, on change and every minute; workers
  beyond our hints are found through those provider records, each with its verified record,
  and kept (`found`, bounded, until the record expires) as the workers beyond our neighbourhood.
Every DHT operation is bounded in time.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import trio
from libp2p.peer.id import ID

from rainnet import host as rhost
from rainnet import records
from rainnet.membership import Membership, Source

log = logging.getLogger("rainnet.node")

WORKERS_KEY = "/rain/workers/v1"
BOOTSTRAP_RETRY = 5.0
BOOTSTRAP_PATIENCE = 10.0  # a bootstrap peer not live this long is reported unreachable
# Each DHT operation connects to the peers it queries, whoever they are (transient connections,
# rainnet.neighbourhood): their rate, not the network's size, is what they cost. Workers are
# looked up every minute, and at most every DHT_LOOKUP_SPACING while a job finds none; our record
# is stored every DHT_PUBLISH_INTERVAL, and on change no sooner than DHT_REPUBLISH_SPACING
# (neighbours learn of a change at the next heartbeat; a requester further away checks a worker
# directly before it sends work).
DHT_DISCOVERY_INTERVAL = 60.0
DHT_LOOKUP_SPACING = 10.0
DHT_PUBLISH_INTERVAL = 120.0  # (records live 300 s: one store may be missed)
DHT_REPUBLISH_SPACING = 60.0
DHT_OP_TIMEOUT = 15.0
MDNS_QUEUE = 256
MAX_FOUND = 256  # workers found in the DHT kept beside the neighbourhood


class Discovery:
    def __init__(
        self,
        me: str,
        dht: Any,
        membership: Membership,
        signed_record: Callable[[], records.SignedRecord],
        own_seq: Callable[[], int],
        provides: Callable[[], bool],
    ) -> None:
        self.me = me
        self._dht = dht
        self.membership = membership
        self._signed_record = signed_record
        self._own_seq = own_seq
        self._provides = provides  # whether we announce ourselves as a worker
        self._published: tuple[int, float] = (-1, 0.0)  # (record seq, when)
        # Bootstrap addresses whose peer is not live, since when (`rain status` shows them).
        self.bootstrap_down: dict[str, float] = {}
        self.found: dict[str, records.NodeRecord] = {}  # workers found in the DHT, by peer id
        self.wanted = trio.Event()  # a job found no worker among those known: look now

    def learn(self, peer_id: str, addrs: tuple[str, ...], source: Source) -> None:
        self.membership.learn(peer_id, addrs, source, time.time())

    async def mdns(
        self,
        addrs: Callable[[], list[str]],
        interface_ips: list[str] | None,
        service_type: str | None = None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """LAN discovery under `service_type` (a pool's own; None: the open network's)."""
        from rainnet.mdns import SERVICE_TYPE, MdnsDiscovery

        send, receive = trio.open_memory_channel[tuple[str, tuple[str, ...]]](MDNS_QUEUE)
        token = trio.lowlevel.current_trio_token()

        def found(peer_id: str, peer_addrs: tuple[str, ...]) -> None:  # on zeroconf's thread
            def put() -> None:
                # A burst beyond the queue is dropped: mDNS repeats, nothing is lost for long.
                with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                    send.send_nowait((peer_id, peer_addrs))

            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(put)

        mdns = MdnsDiscovery(self.me, addrs(), interface_ips, found, service_type or SERVICE_TYPE)
        await trio.to_thread.run_sync(mdns.start)
        task_status.started()
        try:
            async with receive:
                async for peer_id, peer_addrs in receive:
                    self.learn(peer_id, peer_addrs, Source.MDNS)
        finally:
            send.close()
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                # trio-stubs (pulled in by libp2p) predate abandon_on_cancel; trio has it.
                await trio.to_thread.run_sync(mdns.stop, abandon_on_cancel=True)  # type: ignore[call-arg]

    async def bootstrap(self, addrs: tuple[str, ...]) -> None:
        infos = [(a, rhost.bootstrap_info(a)) for a in addrs]
        while True:
            now = time.time()
            for addr, info in infos:
                peer_id = str(info.peer_id)
                if peer_id == self.me or self.membership.reachable(peer_id):
                    if self.bootstrap_down.pop(addr, None) is not None:
                        log.info("bootstrap peer %s is reachable again", addr)
                    continue
                self.learn(peer_id, (addr,), Source.BOOTSTRAP)
                since = self.bootstrap_down.setdefault(addr, now)
                if since <= now - BOOTSTRAP_PATIENCE < since + BOOTSTRAP_RETRY:  # (said once)
                    log.warning(
                        "bootstrap peer %s unreachable for %.0f s (still trying every %.0f s)",
                        addr,
                        now - since,
                        BOOTSTRAP_RETRY,
                    )
            await trio.sleep(BOOTSTRAP_RETRY)

    def unreachable_bootstrap(self, now: float) -> list[str]:
        """Bootstrap addresses whose peer has not been live for BOOTSTRAP_PATIENCE."""
        return [a for a, t in self.bootstrap_down.items() if now - t >= BOOTSTRAP_PATIENCE]

    async def dht_discovery(self) -> None:
        """Workers beyond our hints: provider records, then each one's signed record, whose
        addresses (circuit addresses included) are what we dial."""
        await trio.sleep(2.0)
        while True:
            self.wanted = trio.Event()
            if self.membership.live_peers():
                try:
                    found = await self.find_workers()
                except Exception as exc:
                    log.debug("DHT discovery failed: %r", exc)
                    found = []
                self.keep_found(found, time.time())
                for rec in found:
                    if not self.membership.is_live(rec.peer_id):
                        self.learn(rec.peer_id, rec.addrs, Source.DHT)
            await trio.sleep(DHT_LOOKUP_SPACING)
            with trio.move_on_after(DHT_DISCOVERY_INTERVAL - DHT_LOOKUP_SPACING):
                await self.wanted.wait()

    def keep_found(self, found: list[records.NodeRecord], now: float) -> None:
        """Keep the latest records found (the newest first when over MAX_FOUND), dropping
        expired ones."""
        for rec in found:
            held = self.found.get(rec.peer_id)
            if held is None or rec.seq >= held.seq:
                self.found[rec.peer_id] = rec
        fresh = sorted(
            (r for r in self.found.values() if r.is_fresh(now)), key=lambda r: -r.issued_at
        )
        self.found = {r.peer_id: r for r in fresh[:MAX_FOUND]}

    def workers_beyond(self, now: float) -> list[records.NodeRecord]:
        """Fresh records of workers found in the DHT that are not in the view."""
        return [
            r
            for r in self.found.values()
            if r.is_fresh(now) and not self.membership.is_live(r.peer_id)
        ]

    async def publish(self) -> None:
        """Publish our record and provider entry: at the first peer, then every
        DHT_PUBLISH_INTERVAL, or DHT_REPUBLISH_SPACING after a change (each +-25%: nodes started
        together do not store at once, each store querying the same twenty peers)."""
        spacing = 1.0
        while True:
            await trio.sleep(1.0)
            if not self.membership.live_peers():
                continue
            signed = self._signed_record()
            seq = self._own_seq()
            now = time.time()
            last_seq, last_at = self._published
            every = DHT_PUBLISH_INTERVAL if seq == last_seq else DHT_REPUBLISH_SPACING
            if now - last_at < every * spacing:
                continue
            self._published = (seq, now)
            spacing = 0.75 + 0.5 * random.random()
            with trio.move_on_after(DHT_OP_TIMEOUT):
                try:
                    await self._dht.put_value(records.record_key(self.me), signed.to_bytes())
                    if self._provides():
                        await self._dht.provide(WORKERS_KEY)
                except Exception as exc:
                    log.debug("DHT publish failed: %r", exc)

    async def find_workers(self, count: int = 20) -> list[records.NodeRecord]:
        """Workers found through DHT provider records, each with its verified signed record.

        Point to point: a provider lookup, then one record lookup per provider, all bounded.
        """
        found: dict[str, records.NodeRecord] = {}
        with trio.move_on_after(DHT_OP_TIMEOUT):
            providers = await self._dht.find_providers(WORKERS_KEY, count)
            peer_ids = list(dict.fromkeys(str(info.peer_id) for info in providers))[:count]

            async def fetch(peer_id: str) -> None:
                value = None
                with trio.move_on_after(DHT_OP_TIMEOUT / 2):
                    try:
                        value = await self._dht.get_value(records.record_key(peer_id), quorum=1)
                    except Exception as exc:
                        log.debug("record of %s not found: %r", peer_id, exc)
                if value is None:
                    return
                try:
                    found[peer_id] = records.parse_signed(
                        value, time.time(), records.record_key(peer_id)
                    )
                except records.RecordError as exc:
                    log.warning("DHT gave a bad record for %s: %s", peer_id, exc)

            async with trio.open_nursery() as nursery:
                for peer_id in peer_ids:
                    if peer_id != self.me:
                        ID.from_base58(peer_id)
                        nursery.start_soon(fetch, peer_id)
        return sorted(found.values(), key=lambda r: r.peer_id)

    async def add_to_routing_table(self, peer_id: str) -> None:
        with trio.move_on_after(DHT_OP_TIMEOUT):
            try:
                await self._dht.add_peer(ID.from_base58(peer_id), skip_server_mode_check=True)
            except Exception as exc:
                log.debug("routing table refused %s: %r", peer_id, exc)
