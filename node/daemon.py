"""The peer process's runtime: the libp2p host, discovery, membership liveness and the control API.

Structure (trio): one nursery for the node; inside it the host and the DHT service, the control
socket, and a few loops, each owning one concern:
- intake: peers found by mDNS (from zeroconf's thread, through a bounded channel), bootstrap
  addresses, DHT provider records and hints carried by hellos all go to `Membership.learn`;
- dialer: contacts candidates whose backoff has run out with a hello (signed records both ways);
- watchers: one task per live peer keeps a heartbeat stream (ping/pong) and records each success;
- expiry: drops peers whose last contact is older than `peer_timeout`;
- publisher: keeps our signed record in the DHT and our provider record for workers;
- the idle policy's watch (node.owner.signals), which sets our state and freezes guests;
- the worker (node.jobs.worker) and requester (node.jobs.requester) ends of the job
  protocol, the ledger's protocol (node.ledger_link) and circuit relay (rainnet.relay).
Decisions live in sans-io modules (membership, scheduler, idle policy, voting, the ledger); this
module wires them to the host and moves bytes and time.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.tools.anyio_service import background_trio_service

from ledger.service import Ledger
from node import capabilities
from node.control import channel as control
from node.control import jobs as job_control
from node.home import CONTROL_SOCKET, NODE_INFO_FILE, ensure_home
from node.jobs.core import scheduler
from node.jobs.requester.requester import Requester
from node.jobs.requester.store import JOBS_FILE, JobStore
from node.jobs.worker import sessions as task_session
from node.jobs.worker.worker import Worker
from node.ledger_link import LedgerLink
from node.owner.config import PolicyConfig
from node.owner.policy import Decision, IdlePolicy
from node.owner.signals import PolicyWatch, Sampler
from rainnet import __version__, identity, jobproto, protocols, records, wire
from rainnet import host as rhost
from rainnet import relay as rrelay
from rainnet.ledgerproto import LEDGER, LEDGER_MAX_FRAME, LedgerFrame
from rainnet.membership import Membership, Source
from rainnet.streams import FramedStream, StreamGone, guarded_handler

log = logging.getLogger("rainnet.node")

WORKERS_KEY = "/rain/workers/v1"
HELLO_TIMEOUT = 8.0
DIAL_CONCURRENCY = 16
DIAL_TICK = 0.2
EXPIRY_TICK = 0.5
BOOTSTRAP_RETRY = 5.0
DHT_DISCOVERY_INTERVAL = 15.0
HINT_INTERVAL = 10.0
HELD_RETRY = 30.0
DHT_PUBLISH_INTERVAL = 60.0
DHT_OP_TIMEOUT = 15.0
MDNS_QUEUE = 256


@dataclass(frozen=True)
class NodeConfig:
    home: Path
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    mdns: bool = True
    heartbeat_interval: float = 2.0
    peer_timeout: float = 10.0
    record_ttl: float = 300.0
    sandbox: str = "auto"  # auto, native, docker or none
    relay: bool = False  # offer circuit relay v2 to NATed peers
    relay_via: tuple[str, ...] = ()  # relays to reserve a slot on (we are behind NAT)
    policy: PolicyConfig = field(default_factory=PolicyConfig)


@dataclass
class _Published:
    seq: int = -1
    at: float = 0.0


@dataclass
class Node:
    config: NodeConfig
    me: identity.Identity = field(init=False)
    membership: Membership = field(init=False)
    state: str = "starting"
    seq: int = 0
    addrs: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        ensure_home(self.config.home)
        self.me = identity.load_or_create(self.config.home)
        self.membership = Membership(self.me.peer_id, peer_timeout=self.config.peer_timeout)
        self.caps = capabilities.detect(())
        self.ledger = LedgerLink(Ledger.open(self.config.home, self.me))
        self.backends: dict[str, Any] = {}
        self.idle: PolicyWatch | None = None
        self.worker: Worker | None = None
        self.requester = Requester(
            self.me,
            self.ledger,
            self._candidates,
            self.open_stream,
            self.config.home / "jobs",
            JobStore(self.config.home / JOBS_FILE),
        )
        self._signed: records.SignedRecord | None = None
        self._watched: set[str] = set()
        self._dialing: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._host: Any = None
        self._dht: Any = None
        self._published = _Published()
        self.ready = trio.Event()

    # ----- our record -------------------------------------------------------------------------

    def set_state(self, state: str) -> None:
        if state != self.state:
            log.info("state: %s -> %s", self.state, state)
            self.state = state
            self._signed = None

    def signed_record(self) -> records.SignedRecord:
        """Our current signed record; re-signed when the state changed or it nears expiry."""
        now = time.time()
        current = self._signed
        if current is not None:
            rec = records.open_record(current, now)
            if now < rec.issued_at + rec.ttl / 2:
                return current
        # Sequence numbers come from the clock (milliseconds), so they keep rising across restarts
        # without storing anything: peers keep the highest one they saw.
        self.seq = max(self.seq + 1, int(now * 1000))
        rec = records.NodeRecord(
            peer_id=self.me.peer_id,
            addrs=tuple(self.addrs[:32]),
            cpus=self.caps.cpus,
            memory=self.caps.memory,
            gpus=self.caps.gpus,
            backends=self.caps.backends,
            version=__version__,
            state=self.state,
            seq=self.seq,
            issued_at=now,
            ttl=self.config.record_ttl,
        )
        self._signed = records.sign_record(self.me, rec)
        return self._signed

    def _hints(self, exclude: str | None) -> tuple[protocols.PeerHint, ...]:
        return tuple(
            protocols.PeerHint(peer_id=p.peer_id, addrs=p.addrs[:16])
            for p in self.membership.sample(protocols.MAX_HINTS, exclude=exclude)
        )

    # ----- running ----------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listen = rhost.parse_multiaddrs(self.config.listen)
        await self._open_sandbox()
        self._host = rhost.build_host(self.me)
        self._dht = rhost.build_dht(self._host)
        # Handlers are in place before we listen: a stream that arrives before its handler
        # (or the DHT service) is ready is refused rather than crashing the host.
        self._host.set_stream_handler(protocols.HELLO, guarded_handler("hello", self._handle_hello))
        self._host.set_stream_handler(
            protocols.HEARTBEAT, guarded_handler("heartbeat", self._handle_heartbeat)
        )
        self._host.set_stream_handler(LEDGER, guarded_handler("ledger", self.ledger.handle))
        self._host.set_stream_handler(
            jobproto.RESULT, guarded_handler("result", self.requester.handle_result)
        )
        if self.worker is not None:
            self._host.set_stream_handler(jobproto.JOB, guarded_handler("job", self.worker.handle))
            self._host.set_stream_handler(
                jobproto.TASKS,
                guarded_handler("tasks", functools.partial(task_session.serve, self.worker)),
            )
        self._relay = rrelay.Relay(
            self._host,
            serve=self.config.relay,
            via=self.config.relay_via,
            on_addrs=self._on_circuits,
        )
        self._relay.install()
        async with (
            self._host.run(listen),
            background_trio_service(self._dht),
            trio.open_nursery() as nursery,
        ):
            self._nursery = nursery
            self._direct_addrs = rhost.advertised_addrs(self._host, self.me.peer_id)
            self.addrs = list(self._direct_addrs)
            await nursery.start(self._relay.run)  # reservations arrive later, via _on_circuits
            assert self.idle is not None
            await nursery.start(self.idle.run)  # our state comes from the first decision
            await nursery.start(self.requester.run)
            sock_path = self.config.home / CONTROL_SOCKET
            await nursery.start(control.serve, sock_path, self._control)
            nursery.start_soon(self._dial_loop)
            nursery.start_soon(self._expiry_loop)
            nursery.start_soon(self._publish_loop)
            nursery.start_soon(self._dht_discovery_loop)
            nursery.start_soon(self._exchange_hints_loop)
            if self.worker is not None:
                nursery.start_soon(self._held_results_loop)
            if self.config.bootstrap:
                nursery.start_soon(self._bootstrap_loop)
            if self.config.mdns:
                await nursery.start(self._mdns, rhost.listen_ips(self.config.listen))
            self._write_node_info(sock_path)
            # Everything made so far (libp2p's ~100k objects of modules and services) lives as
            # long as the node: out of the collector's sight, a full collection scans only
            # what jobs made. Measured: full collections took 40-190 ms each, a few times a
            # minute under load, all of it a stall of this event loop.
            gc.freeze()
            log.info("rain-node %s ready on %s", self.me.peer_id, ", ".join(self.addrs))
            self.ready.set()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._remove_node_info()
                self.ledger.ledger.close()
                self.requester.store.close()

    async def _open_sandbox(self) -> None:
        """Open every sandbox backend that works here, and the idle policy that gates them."""
        from sandbox import SandboxConfig, guest_cpu_seconds, probe, sweep
        from sandbox.select import BACKENDS, no_isolation_message

        sandbox_config = SandboxConfig.for_home(self.config.home)
        if self.config.sandbox != "none":
            # Leftovers of a crashed run (processes, cgroups, job directories) go first.
            await trio.to_thread.run_sync(sweep, sandbox_config)
            names = BACKENDS if self.config.sandbox == "auto" else (self.config.sandbox,)
            self.backends, report = await probe(sandbox_config, names)
            if not self.backends:
                log.warning("%s", no_isolation_message(report))
        self.caps = capabilities.detect(tuple(sorted(self.backends)))
        policy = self.config.policy
        self.idle = PolicyWatch(
            Sampler(policy, guest_cpu=lambda: guest_cpu_seconds(sandbox_config)),
            IdlePolicy(policy),
            guests_running=lambda: bool(self.worker and self.worker.in_sandbox()),
            on_decision=self._on_policy,
        )
        if self.backends:
            capacity = scheduler.Capacity(
                cpus=policy.cpu_share * self.caps.cpus,
                memory=int(policy.memory_share * self.caps.memory),
            )
            self.worker = Worker(
                self.backends,
                self.ledger,
                capacity,
                self._may_start,
                self.open_stream,
                self.config.home / "work",
            )

    def _may_start(self) -> str | None:
        """None if the idle policy lets a guest start now; else why not (for the requester)."""
        decision = self.idle.decision if self.idle else None
        if decision is None:
            return "this node is starting"
        return None if decision.start_allowed else decision.reason

    async def _on_policy(self, decision: Decision) -> None:
        self.set_state(decision.state)
        from sandbox import SandboxError

        jobs = [job for backend in self.backends.values() for job in backend.jobs()]
        for job in jobs:
            try:
                if decision.action == "suspend":
                    await job.suspend()
                elif decision.action == "resume":
                    await job.resume()
                elif decision.action == "give_up":
                    await job.cancel()
            except SandboxError as exc:  # one job just ending must not spare the others
                log.warning("cannot %s job %s: %s", decision.action, job.id, exc)

    def _candidates(self) -> list[scheduler.Candidate]:
        return [
            scheduler.Candidate(p.record, p.rtt)
            for p in self.membership.live_peers()
            if p.record is not None
        ]

    def _on_circuits(self, circuits: tuple[str, ...]) -> None:
        """Our relay reservations changed: advertise the circuit addresses (first, so the caps
        on addresses per peer never cut them) in a newly signed record, and in node.json."""
        self.addrs = [*circuits, *self._direct_addrs][:32]
        self._signed = None
        if self.ready.is_set():
            self._write_node_info(self.config.home / CONTROL_SOCKET)

    def _write_node_info(self, sock_path: Path) -> None:
        info = {
            "peer_id": self.me.peer_id,
            "addrs": self.addrs,
            "pid": os.getpid(),
            "socket": str(sock_path),
            "version": __version__,
            "started_at": self.started_at,
        }
        path = self.config.home / NODE_INFO_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.chmod(tmp, 0o600)
        tmp.replace(path)

    def _remove_node_info(self) -> None:
        path = self.config.home / NODE_INFO_FILE
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass

    # ----- discovery intake -------------------------------------------------------------------

    def learn(self, peer_id: str, addrs: tuple[str, ...], source: Source) -> None:
        self.membership.learn(peer_id, addrs, source, time.time())

    async def _mdns(self, interface_ips: list[str] | None, task_status: Any) -> None:
        from rainnet.mdns import MdnsDiscovery

        send, receive = trio.open_memory_channel[tuple[str, tuple[str, ...]]](MDNS_QUEUE)
        token = trio.lowlevel.current_trio_token()

        def found(peer_id: str, addrs: tuple[str, ...]) -> None:  # on zeroconf's thread
            def put() -> None:
                # A burst beyond the queue is dropped: mDNS repeats, nothing is lost for long.
                with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                    send.send_nowait((peer_id, addrs))

            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(put)

        mdns = MdnsDiscovery(self.me.peer_id, self.addrs, interface_ips, found)
        await trio.to_thread.run_sync(mdns.start)
        task_status.started()
        try:
            async with receive:
                async for peer_id, addrs in receive:
                    self.learn(peer_id, addrs, Source.MDNS)
        finally:
            send.close()
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                # trio-stubs (pulled in by libp2p) predate abandon_on_cancel; trio has it.
                await trio.to_thread.run_sync(mdns.stop, abandon_on_cancel=True)  # type: ignore[call-arg]

    async def _bootstrap_loop(self) -> None:
        infos = [(a, rhost.bootstrap_info(a)) for a in self.config.bootstrap]
        while True:
            for addr, info in infos:
                peer_id = str(info.peer_id)
                if peer_id != self.me.peer_id and not self.membership.is_live(peer_id):
                    self.learn(peer_id, (addr,), Source.BOOTSTRAP)
            await trio.sleep(BOOTSTRAP_RETRY)

    async def _dht_discovery_loop(self) -> None:
        """Workers beyond our hints: provider records, then each one's signed record, whose
        addresses (circuit addresses included) are what we dial."""
        await trio.sleep(2.0)
        while True:
            if self.membership.live_peers():
                try:
                    found = await self.find_workers()
                except Exception as exc:
                    log.debug("DHT discovery failed: %r", exc)
                    found = []
                for rec in found:
                    if not self.membership.is_live(rec.peer_id):
                        self.learn(rec.peer_id, rec.addrs, Source.DHT)
            await trio.sleep(DHT_DISCOVERY_INTERVAL)

    async def _held_results_loop(self) -> None:
        """Retry delivering held results to requesters that are live, and drop expired ones."""
        assert self.worker is not None
        worker = self.worker
        while True:
            await trio.sleep(HELD_RETRY)
            await trio.to_thread.run_sync(worker.held.expire, time.time())
            if not await trio.to_thread.run_sync(worker.held.job_ids):
                continue
            for peer in self.membership.live_peers():
                with trio.move_on_after(HELD_RETRY):
                    await worker.deliver_held(peer.peer_id)

    async def _exchange_hints_loop(self) -> None:
        """Every so often, hello one live peer at random: its hints reach us (and ours it), so
        peers that joined through someone else are found without any broadcast."""
        while True:
            await trio.sleep(HINT_INTERVAL * (0.5 + random.random()))
            peers = self.membership.sample(1)
            if peers and peers[0].peer_id not in self._dialing and self._nursery is not None:
                self._dialing.add(peers[0].peer_id)
                self._nursery.start_soon(
                    self._contact, peers[0].peer_id, peers[0].addrs, trio.CapacityLimiter(1)
                )

    async def _publish_loop(self) -> None:
        """Publish our record and provider entry: at the first peer, on change, each minute."""
        while True:
            await trio.sleep(1.0)
            if not self.membership.live_peers():
                continue
            signed = self.signed_record()
            now = time.time()
            if self.seq == self._published.seq and now - self._published.at < DHT_PUBLISH_INTERVAL:
                continue
            self._published = _Published(self.seq, now)
            with trio.move_on_after(DHT_OP_TIMEOUT):
                try:
                    await self._dht.put_value(
                        records.record_key(self.me.peer_id), signed.to_bytes()
                    )
                    if self.config.policy.lend != "never" and self.backends:
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
                    if peer_id != self.me.peer_id:
                        ID.from_base58(peer_id)
                        nursery.start_soon(fetch, peer_id)
        return sorted(found.values(), key=lambda r: r.peer_id)

    # ----- contact: hello ---------------------------------------------------------------------

    async def _dial_loop(self) -> None:
        limiter = trio.CapacityLimiter(DIAL_CONCURRENCY)
        assert self._nursery is not None
        while True:
            now = time.time()
            for peer in self.membership.due_for_dial(now):
                if peer.peer_id in self._dialing:
                    continue
                self._dialing.add(peer.peer_id)
                self._nursery.start_soon(self._contact, peer.peer_id, peer.addrs, limiter)
            await trio.sleep(DIAL_TICK)

    async def _contact(
        self, peer_id: str, addrs: tuple[str, ...], limiter: trio.CapacityLimiter
    ) -> None:
        try:
            async with limiter:
                ok = False
                with trio.move_on_after(HELLO_TIMEOUT):
                    try:
                        await rrelay.connect(self._host, peer_id, addrs, HELLO_TIMEOUT - 1)
                        stream = await self._host.new_stream(
                            ID.from_base58(peer_id), [protocols.HELLO]
                        )
                        fs = FramedStream(
                            stream, (protocols.HelloReply,), protocols.HELLO_MAX_FRAME
                        )
                        hello = protocols.Hello(self.signed_record(), self._hints(peer_id))
                        try:
                            await fs.send(hello)
                            reply = await fs.receive_a(protocols.HelloReply)
                        except BaseException:
                            with trio.CancelScope(shield=True):
                                await fs.reset()  # released, not left half-open
                            raise
                        await fs.close()
                        rec = records.open_record(reply.record, time.time(), expect_peer=peer_id)
                        self._accept(peer_id, rec, reply.hints)
                        ok = True
                    except (wire.RemoteProtocolError, records.RecordError) as exc:
                        log.warning("hello to %s refused: %s", peer_id, exc)
                    except (StreamGone, OSError, Exception) as exc:
                        log.debug("hello to %s failed: %r", peer_id, exc)
                if not ok:
                    self.membership.failed(peer_id, time.time())
        finally:
            self._dialing.discard(peer_id)

    async def _handle_hello(self, stream: Any) -> None:
        fs = FramedStream(stream, (protocols.Hello,), protocols.HELLO_MAX_FRAME)
        remote = fs.remote_peer
        hello = await fs.receive_a(protocols.Hello, HELLO_TIMEOUT)
        try:
            rec = records.open_record(hello.record, time.time(), expect_peer=remote)
        except records.RecordError as exc:
            raise wire.RemoteProtocolError(str(exc)) from None
        await fs.send(protocols.HelloReply(self.signed_record(), self._hints(remote)))
        await fs.close()
        self._accept(remote, rec, hello.hints)

    def _accept(
        self, peer_id: str, rec: records.NodeRecord, hints: tuple[protocols.PeerHint, ...]
    ) -> None:
        now = time.time()
        joined = self.membership.contacted(peer_id, now, rec)
        for hint in hints:
            self.membership.learn(hint.peer_id, hint.addrs, Source.HINT, now)
        if joined:
            log.info("peer joined: %s (%s, %d CPUs)", peer_id, rec.state, rec.cpus)
            self._watch(peer_id)
            if self._nursery is not None:
                self._nursery.start_soon(self._add_to_routing_table, peer_id)
                self._nursery.start_soon(self._ledger_gossip, peer_id)
        # Any hello may be a requester back from a restart (quicker than our timeout notices):
        # results we hold for it go now.
        if self.worker is not None and self._nursery is not None:
            self._nursery.start_soon(self.worker.deliver_held, peer_id)

    async def _add_to_routing_table(self, peer_id: str) -> None:
        with trio.move_on_after(DHT_OP_TIMEOUT):
            try:
                await self._dht.add_peer(ID.from_base58(peer_id), skip_server_mode_check=True)
            except Exception as exc:
                log.debug("routing table refused %s: %r", peer_id, exc)

    # ----- ledger ---------------------------------------------------------------------------

    async def open_stream(self, peer_id: str, protocol: str, timeout: float = HELLO_TIMEOUT) -> Any:
        """A new stream to `peer_id` (dialing it if needed); StreamGone if that fails in time."""
        peer = self.membership.peers.get(peer_id)
        with trio.move_on_after(timeout):
            try:
                if peer is not None and peer.addrs:
                    await rrelay.connect(self._host, peer_id, peer.addrs, timeout - 1)
                return await rhost.open_stream(self._host, ID.from_base58(peer_id), protocol)
            except Exception as exc:
                raise StreamGone(f"cannot open {protocol} to {peer_id}: {exc!r}") from None
        raise StreamGone(f"cannot open {protocol} to {peer_id} within {timeout:.0f} s")

    async def _ledger_gossip(self, peer_id: str) -> None:
        """On meeting a peer: compare chain heads and share fork proofs (bounded, best effort)."""
        with trio.move_on_after(30):
            try:
                fs = FramedStream(
                    await self.open_stream(peer_id, LEDGER), (LedgerFrame,), LEDGER_MAX_FRAME
                )
                try:
                    new = await self.ledger.gossip(fs)
                finally:
                    await fs.close()
                if new:
                    log.warning("%d new fork proof(s) after talking to %s", new, peer_id)
            except (StreamGone, wire.RemoteProtocolError) as exc:
                log.debug("ledger gossip with %s failed: %s", peer_id, exc)

    async def fetch_chain(self, peer_id: str) -> dict[str, Any]:
        """Fetch and verify `peer_id`'s chain from it; its verified balance."""
        public = identity.public_bytes_from_peer_id(peer_id)
        fs = FramedStream(await self.open_stream(peer_id, LEDGER), (LedgerFrame,), LEDGER_MAX_FRAME)
        try:
            await self.ledger.sync_chain(fs, public)
        finally:
            await fs.close()
        state = await self.ledger.call(self.ledger.ledger.verified_state, public)
        assert state is not None  # just fetched and verified
        balance = state.balance
        return {
            "peer_id": peer_id,
            "verified_blocks": state.verified,
            "balance": balance.balance_milli / 1000,
            "earned": balance.earned_milli / 1000,
            "spent": balance.spent_milli / 1000,
        }

    # ----- liveness: heartbeats ---------------------------------------------------------------

    def _watch(self, peer_id: str) -> None:
        if peer_id in self._watched or self._nursery is None:
            return
        self._watched.add(peer_id)
        self._nursery.start_soon(self._watcher, peer_id)

    async def _watcher(self, peer_id: str) -> None:
        """Ping `peer_id` every heartbeat interval on one long-lived stream while it is live."""
        interval = self.config.heartbeat_interval
        timeout = max(1.0, min(3.0, self.config.peer_timeout / 3))
        fs: FramedStream | None = None
        nonce = 0
        try:
            while self.membership.is_live(peer_id):
                try:
                    if fs is None:
                        rhost.allow_redial(self._host, peer_id)
                        with trio.fail_after(timeout):
                            stream = await self._host.new_stream(
                                ID.from_base58(peer_id), [protocols.HEARTBEAT]
                            )
                        fs = FramedStream(stream, (protocols.Pong,), protocols.HEARTBEAT_MAX_FRAME)
                    nonce += 1
                    sent = trio.current_time()
                    await fs.send(protocols.Ping(nonce=nonce, record_seq=self.seq), timeout)
                    pong = await fs.receive_a(protocols.Pong, timeout)
                    if pong.nonce != nonce:
                        raise wire.RemoteProtocolError(f"pong for {pong.nonce}, expected {nonce}")
                    self.membership.contacted(peer_id, time.time(), rtt=trio.current_time() - sent)
                    self._refresh_if_newer(peer_id, pong.record_seq)
                except (trio.TooSlowError, StreamGone, wire.RemoteProtocolError, Exception) as exc:
                    log.debug("heartbeat to %s failed: %r", peer_id, exc)
                    if fs is not None:
                        await fs.reset()
                        fs = None
                await trio.sleep(interval)
        finally:
            self._watched.discard(peer_id)
            if fs is not None:
                await fs.close()

    def _refresh_if_newer(self, peer_id: str, record_seq: int) -> None:
        """A peer announced a newer record than ours: fetch it with a hello."""
        peer = self.membership.peers.get(peer_id)
        if peer is None or (peer.record is not None and peer.record.seq >= record_seq):
            return
        if peer_id in self._dialing or self._nursery is None:
            return
        self._dialing.add(peer_id)
        self._nursery.start_soon(self._contact, peer_id, peer.addrs, trio.CapacityLimiter(1))

    async def _handle_heartbeat(self, stream: Any) -> None:
        fs = FramedStream(stream, (protocols.Ping,), protocols.HEARTBEAT_MAX_FRAME)
        remote = fs.remote_peer
        idle_limit = self.config.peer_timeout * 3
        while True:
            try:
                ping = await fs.receive_a(protocols.Ping, idle_limit)
            except StreamGone:
                return
            await fs.send(protocols.Pong(nonce=ping.nonce, record_seq=self.seq))
            now = time.time()
            if self.membership.is_live(remote):
                self.membership.contacted(remote, now)
                self._refresh_if_newer(remote, ping.record_seq)
            else:
                # It thinks we are alive but we lost it (or never met it): say hello again.
                self.membership.learn(remote, (), Source.INBOUND, now)

    async def _expiry_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRY_TICK)
            for peer_id in self.membership.expire(time.time()):
                log.info("peer left: %s (no answer for %.0f s)", peer_id, self.config.peer_timeout)
                with trio.move_on_after(2):
                    with contextlib.suppress(Exception):
                        await self._host.disconnect(ID.from_base58(peer_id))

    # ----- control API ------------------------------------------------------------------------

    async def _control(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "status":
            return self.status()
        if op == "peers":
            return {"peers": self.peers()}
        if op == "fetch-chain":
            peer_id = req.get("peer")
            if not isinstance(peer_id, str):
                return control.refusal("fetch-chain needs a peer id")
            try:
                return await self.fetch_chain(peer_id)
            except ValueError as exc:
                return control.refusal(str(exc))
            except (StreamGone, wire.RemoteProtocolError) as exc:
                return control.refusal(f"could not fetch the chain of {peer_id}: {exc}")
        if op == "policy":
            return self.idle.report() if self.idle else control.refusal("starting")
        if op in job_control.OPS:
            return await job_control.OPS[op](self.requester, req)
        if op == "workers":
            found = await self.find_workers()
            return {"workers": [r.as_dict() for r in found]}
        return control.refusal(f"unknown operation {op!r}")

    def status(self) -> dict[str, Any]:
        return {
            "peer_id": self.me.peer_id,
            "addrs": self.addrs,
            "state": self.state,
            "peers": len(self.membership.live_peers()),
            "backends": list(self.caps.backends),
            "cpus": self.caps.cpus,
            "memory": self.caps.memory,
            "gpus": self.caps.gpus,
            "version": __version__,
            "lend": self.config.policy.lend,
            "mdns": self.config.mdns,
            "uptime": time.time() - self.started_at,
            "pid": os.getpid(),
            "streams": rhost.open_streams(self._host),
        }

    def peers(self) -> list[dict[str, Any]]:
        out = []
        for p in self.membership.live_peers():
            rec = p.record
            out.append(
                {
                    "peer_id": p.peer_id,
                    "addrs": list(rec.addrs if rec else p.addrs),
                    "state": p.state,
                    "cpus": rec.cpus if rec else None,
                    "memory": rec.memory if rec else None,
                    "gpus": rec.gpus if rec else None,
                    "backends": list(rec.backends) if rec else [],
                    "version": rec.version if rec else None,
                    "last_seen": p.last_seen,
                    "rtt_ms": round(p.rtt * 1000, 2) if p.rtt is not None else None,
                    "source": p.source.value,
                }
            )
        return out
