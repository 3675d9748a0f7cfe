"""The peer process: wiring only. What each part owns lives in its own package:
- rainnet.network: the libp2p host, discovery, contact, liveness, our signed record;
- node.owner: the idle policy's watch, which sets our state and freezes guests;
- node.jobs: the requester and worker ends of the job protocol;
- node.mpi: MPI groups, as their requester (node.mpi.groups) and as a member (node.mpi.member);
- node.ledger_link: the ledger and its protocol; node.control: the control API;
- node.snapshot: one picture of the node that the control API (and the panel) read;
- node.panel: the local panel (web page, hardware front panel) and this node's lights.

`Node(config)` does no I/O; `open()` reads the home (identity, ledger, job store) and `run()`
starts everything in one nursery and runs until cancelled.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ledger.balance import Balance
from ledger.service import Ledger
from ledger.store import HistoryRow
from node import capabilities
from node.control import channel as control
from node.control.ops import ControlOps
from node.fork_news import ForkNews
from node.home import CONTROL_SOCKET, NODE_INFO_FILE, ensure_home
from node.jobs.core import scheduler
from node.jobs.requester import Requester
from node.jobs.requester.record import JobRecord
from node.jobs.requester.store import JOBS_FILE, JobStore
from node.jobs.worker import Worker
from node.jobs.worker import sessions as task_session
from node.ledger_link import LedgerLink
from node.mpi.assembly import addr_ips
from node.mpi.groups import Groups
from node.mpi.member import GroupMember
from node.mpi.reservations import Runtime
from node.owner.config import PolicyConfig
from node.owner.policy import Decision, IdlePolicy
from node.owner.signals import PolicyWatch, Sampler
from node.panel.lights import NodeLights, UserLight
from node.panel.server import Panel, PanelConfig
from node.snapshot import (
    CreditView,
    DetailView,
    ExchangeRow,
    GuestRow,
    JobRow,
    JobsView,
    MpiGroupRow,
    NodeSnapshot,
    PeerView,
    PolicyView,
    SelfView,
)
from rainnet import __version__, identity, jobproto, mpiproto, records, wire
from rainnet.ledgerproto import LEDGER, LEDGER_MAX_FRAME, LedgerFrame
from rainnet.neighbourhood import Known
from rainnet.network import Description, NetworkConfig, PeerNetwork
from rainnet.streams import FramedStream, StreamGone

log = logging.getLogger("rainnet.node")
GROUP_SILENCE = 6.0  # seconds without contact after which an MPI group's requester is lost

GOSSIP_TIMEOUT = 30.0
EXCHANGES_IN_DETAIL = 200  # the recent exchanges the panel's list and plot show


@dataclass(frozen=True)
class NodeConfig:
    home: Path
    network: NetworkConfig = field(default_factory=NetworkConfig)
    sandbox: str = "auto"  # auto, native, docker or none
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    panel: PanelConfig = field(default_factory=PanelConfig)
    name: str = ""  # what `rain peers` calls this machine elsewhere (default: its hostname)
    mpi: bool = True  # take MPI ranks (where MPICH is installed beside our Python)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.state = "starting"
        self.started_at = time.time()
        self.caps = capabilities.Capabilities(cpus=0, memory=0, gpus=0, backends=())
        self.backends: dict[str, Any] = {}
        self.idle: PolicyWatch | None = None
        self.worker: Worker | None = None
        self.member: GroupMember | None = None  # as a member of MPI groups
        self.ready = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._opened = False
        self._exchanges: tuple[Balance | None, tuple[ExchangeRow, ...]] = (None, ())

    def open(self) -> None:
        """Read the home: our identity, the ledger and the job store (created on first use)."""
        home = ensure_home(self.config.home)
        self.me = identity.load_or_create(home)
        self.caps = capabilities.detect(())
        self.ledger = LedgerLink(Ledger.open(home, self.me))
        self.network = PeerNetwork(self.me, self.config.network, self._describe)
        self.requester = Requester(
            self.ledger,
            self._candidates,
            self.network.open_stream,
            home / "jobs",
            JobStore(home / JOBS_FILE),
        )
        self.requester.look_further = self.network.look_further
        self.groups = Groups(
            self.requester, self._candidates, self.network.open_stream, lambda: self.network.addrs
        )
        self.control = ControlOps(self)
        self.lights = NodeLights(self.config.policy.max_temperature, self.network.record_changed)
        self._opened = True

    # ----- what our record says ---------------------------------------------------------------

    def _describe(self) -> Description:
        lights = self.lights.for_record()
        # What it lends (the guests' share), not the machine: what requesters place jobs by.
        # (A record counts whole CPUs: a share of 1.5 says 1.)
        lent = self.worker.capacity if self.worker else None
        return Description(
            cpus=int(lent.cpus + 1e-9) if lent else self.caps.cpus,
            memory=lent.memory if lent else self.caps.memory,
            gpus=self.caps.gpus,
            backends=self.caps.backends,
            state=self.state,
            lends=self.config.policy.lend != "never" and bool(self.backends),
            user1=lights.user1,
            user2=lights.user2,
            hot=lights.hot,
            load=lights.load,
            name=(self.config.name or socket.gethostname())[:64],
            mpi=self.member is not None,
        )

    def set_user_light(self, which: UserLight, light: records.Light) -> None:
        self.lights.set_user(which, light)

    def set_state(self, state: str) -> None:
        if state != self.state:
            log.info("state: %s -> %s", self.state, state)
            self.state = state
            self.network.record_changed()

    # ----- running ----------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if not self._opened:
            self.open()
        await self._open_sandbox()
        handlers = {LEDGER: self.ledger.handle, jobproto.RESULT: self.requester.handle_result}
        if self.worker is not None:
            worker = self.worker
            handlers[jobproto.JOB] = worker.handle
            handlers[jobproto.TASKS] = lambda stream: task_session.serve(worker, stream)
        if self.member is not None:
            handlers[mpiproto.MPI] = self.member.handle
        sock_path = self.config.home / CONTROL_SOCKET
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                assert self.idle is not None
                # Our state comes from the policy's first decision: before anyone hears of us.
                await nursery.start(self.idle.run)
                await nursery.start(
                    self.network.run, handlers, self._on_contact, self._on_addrs_changed
                )
                await nursery.start(self.requester.run)
                news = ForkNews(self.ledger, self.network.open_stream, self._live_peer_ids)
                self.ledger.on_fork_proofs = news.found
                await nursery.start(news.run)
                await nursery.start(control.serve, sock_path, self.control.handle)
                if self.worker is not None:
                    nursery.start_soon(self.worker.claims.retry_held, self._live_peer_ids)
                await self._start_panel(nursery)
                self._write_node_info(sock_path)
                # Everything made so far (libp2p's ~100k objects of modules and services) lives
                # as long as the node: out of the collector's sight, a full collection scans
                # only what jobs made. Measured: full collections took 40-190 ms each, a few
                # times a minute under load, all of it a stall of this event loop.
                gc.freeze()
                addrs = ", ".join(self.network.addrs)
                log.info("rain-node %s ready on %s", self.me.peer_id, addrs)
                self.ready.set()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._remove_node_info()
            self.ledger.close()
            self.requester.store.close()

    async def _start_panel(self, nursery: trio.Nursery) -> None:
        """Our lights, and the panels that show them: the web page, the hardware's LEDs."""
        nursery.start_soon(self.lights.run, self._load_and_heat, self._running_guest_dirs)
        panel = self.config.panel
        if panel.port is not None:
            web = Panel(panel, self.config.home, lambda: self.snapshot(True), self.control.handle)
            await nursery.start(web.run)
        if panel.front_panel is not None:
            from node.panel.front import FrontPanel

            front = FrontPanel(panel.front_panel.open_bus(), panel.front_panel.address)
            live = self.network.membership.live_peers
            nursery.start_soon(
                front.run, lambda: self.lights.panel(self.network.addrs, bool(live()))
            )

    def _load_and_heat(self) -> tuple[float | None, float | None]:
        signals = self.idle.signals if self.idle else None
        return (signals.host_load, signals.temperature) if signals else (None, None)

    def _running_guest_dirs(self) -> list[Path]:
        # (The job's own directory: with disk limits it is below a file system of its own.)
        jobs = (job for b in self.backends.values() for job in b.jobs())
        return [d for job in jobs if (d := job.directory) is not None]

    async def _open_sandbox(self) -> None:
        """Open every sandbox backend that works here, and the idle policy that gates them."""
        from sandbox import SandboxConfig, WorkerPolicy, guest_cpu_seconds, probe, sweep
        from sandbox.native import NativeBackend
        from sandbox.netwall import WallKind
        from sandbox.select import BACKENDS, no_isolation_message

        runtime = Runtime.beside(sys.executable) if self.config.mpi else None
        sandbox_config = SandboxConfig.for_home(self.config.home)
        if runtime is not None:  # MPI ranks: the group's network (if walled), our Python read-only
            sandbox_config = dataclasses.replace(
                sandbox_config,
                policy=WorkerPolicy(allow_group=True),
                group_runtime=_runtime_dirs(),
            )
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
                self.network.open_stream,
                self.config.home / "work",
            )
            self.worker.owner_suspends = self._owner_suspends
            native = self.backends.get("native")
            if runtime is not None and isinstance(native, NativeBackend):
                if native.wall.kind is WallKind.FIREWALL:
                    worker = self.worker
                    self.member = GroupMember(
                        runtime,
                        worker.fits,
                        self._may_start,
                        native.walls,
                        lambda: [c.record for c in self._candidates()],
                        lambda: addr_ips(self.network.addrs),
                    )
                    worker.group = self.member
                    worker.peer_live = self._peer_live
                else:
                    # No ranks with the host's whole network (sandbox.native says why).
                    log.warning("this node takes no MPI ranks: %s", native.wall.describe())

    def _may_start(self) -> str | None:
        """None if the idle policy lets a guest start now; else why not (for the requester)."""
        decision = self.idle.decision if self.idle else None
        if decision is None:
            return "this node is starting"
        return None if decision.start_allowed else decision.reason

    def _owner_suspends(self) -> bool:
        decision = self.idle.decision if self.idle else None
        return decision is not None and decision.state == "suspended"

    async def _on_policy(self, decision: Decision) -> None:
        self.set_state(decision.state)
        from sandbox import SandboxError

        jobs = [job for backend in self.backends.values() for job in backend.jobs()]
        for job in jobs:
            try:
                if decision.action == "suspend":
                    await job.suspend()
                elif decision.action == "resume":
                    if self.worker is not None and self.worker.holds.held(job.id):
                        continue  # frozen with its MPI group still: its requester lets it go
                    await job.resume()
                elif decision.action == "give_up":
                    await job.cancel()
            except SandboxError as exc:  # one job just ending must not spare the others
                log.warning("cannot %s job %s: %s", decision.action, job.id, exc)

    # ----- peers ------------------------------------------------------------------------------

    def _candidates(self) -> list[scheduler.Candidate]:
        """Workers to place on: our neighbours, then those found in the DHT beyond them (a
        hello checks such a one directly before work is sent: PeerNetwork.open_stream)."""
        live = [
            scheduler.Candidate(p.record, p.rtt)
            for p in self.network.membership.live_peers()
            if p.record is not None
        ]
        discovery = self.network.discovery
        beyond = discovery.workers_beyond(time.time()) if discovery is not None else []
        return live + [scheduler.Candidate(r, None) for r in beyond]

    def _peer_live(self, peer_id: str) -> bool:
        """Whether the requester of an MPI group job here is still heard from. Stricter than
        the view (a peer leaves it 10 s after its last contact): a requester silent for
        GROUP_SILENCE (three heartbeats missed) is taken as lost, so that a member cut off
        silently ends its ranks within the 10 s bound of a lost member, not seconds past it."""
        peer = self.network.membership.peers.get(peer_id)
        if peer is None or not peer.live:
            return False
        return peer.last_seen is None or time.time() - peer.last_seen < GROUP_SILENCE

    def _live_peer_ids(self) -> list[str]:
        return [p.peer_id for p in self.network.membership.live_peers()]

    async def _on_contact(self, peer_id: str, joined: bool) -> None:
        """After a hello: a peer met for the first time gets our fork proofs and heads; any
        hello may be a requester back from a restart (quicker than our timeout notices): the
        results we hold for it go now."""
        assert self._nursery is not None
        if joined:
            self._nursery.start_soon(self._ledger_gossip, peer_id)
        if self.worker is not None:
            await self.worker.deliver_held(peer_id)

    async def _ledger_gossip(self, peer_id: str) -> None:
        """On meeting a peer: compare chain heads and share fork proofs (bounded, best effort)."""
        with trio.move_on_after(GOSSIP_TIMEOUT):
            try:
                raw = await self.network.open_stream(peer_id, LEDGER)
                fs = FramedStream(raw, (LedgerFrame,), LEDGER_MAX_FRAME)
                try:
                    new = await self.ledger.gossip(fs)
                finally:
                    await fs.close()
                if new:
                    log.warning("%d new fork proof(s) after talking to %s", new, peer_id)
            except (StreamGone, wire.RemoteProtocolError) as exc:
                log.debug("ledger gossip with %s failed: %s", peer_id, exc)

    async def open_stream(self, peer_id: str, protocol: str) -> Any:
        return await self.network.open_stream(peer_id, protocol)

    async def find_workers(self) -> list[records.NodeRecord]:
        return await self.network.find_workers()

    # ----- what the control API reads ---------------------------------------------------------

    def policy_report(self) -> dict[str, Any] | None:
        return self.idle.report() if self.idle else None

    async def snapshot(self, detail: bool = False) -> NodeSnapshot:
        """The node now; with `detail`, what the panel shows besides (node.snapshot)."""
        now = time.time()
        balance = await self.ledger.balance()
        decision = self.idle.decision if self.idle else None
        lights = self.lights
        discovery = self.network.discovery
        neighbourhood = self.network.neighbourhood
        working = neighbourhood.with_work() if neighbourhood else set()
        me = SelfView(
            peer_id=self.me.peer_id,
            addrs=tuple(self.network.addrs),
            state=self.state,
            cpus=self.caps.cpus,
            memory=self.caps.memory,
            gpus=self.caps.gpus,
            backends=self.caps.backends,
            version=__version__,
            lend=self.config.policy.lend,
            mdns=self.config.network.mdns,
            pool=self.config.network.pool.name if self.config.network.pool else None,
            uptime=now - self.started_at,
            pid=os.getpid(),
            streams=self.network.open_streams(),
            user1=lights.user(UserLight.USER1),
            user2=lights.user(UserLight.USER2),
            hot=lights.hot,
            load=lights.load,
            unreachable_bootstrap=tuple(discovery.unreachable_bootstrap(now)) if discovery else (),
            connections=len(neighbourhood.connections()) if neighbourhood else 0,
            max_connections=self.config.network.max_connections,
            trimmed=neighbourhood.trimmed if neighbourhood else 0,
            network_size=self.network.network_size(),
        )
        return NodeSnapshot(
            taken_at=now,
            me=me,
            peers=tuple(_peer_view(p, working) for p in self.network.membership.live_peers()),
            jobs=JobsView.count(
                [j.state.value for j in self.requester.jobs.values()],
                len(self.worker.running) if self.worker else 0,
            ),
            credit=CreditView(
                balance=balance.balance_milli / 1000,
                earned=balance.earned_milli / 1000,
                spent=balance.spent_milli / 1000,
                floor=self.ledger.floor_milli / 1000,
            ),
            policy=PolicyView(
                lend=self.config.policy.lend,
                state=decision.state if decision else None,
                start_allowed=bool(decision and decision.start_allowed),
                reason=decision.reason if decision else "no sample yet",
            ),
            detail=await self._detail(balance) if detail else None,
        )

    async def _detail(self, balance: Balance) -> DetailView:
        if self._exchanges[0] != balance:  # the ledger is read again only when it moved
            rows = await self.ledger.history(EXCHANGES_IN_DETAIL)
            self._exchanges = (balance, tuple(_exchange_row(r) for r in rows))
        guests = self.worker.running.values() if self.worker else ()
        return DetailView(
            jobs=tuple(_job_row(j) for j in self.requester.jobs.values()),
            guests=tuple(
                GuestRow(
                    g.job_id, g.requester, g.needs.cpus, g.needs.memory, g.started, g.in_sandbox
                )
                for g in guests
            ),
            exchanges=self._exchanges[1],
            mpi_groups=tuple(
                MpiGroupRow(g.group_id, "running", tuple(m.peer_id for m in g.plan.members))
                for g in self.groups.groups.values()
            ),
            left=tuple(
                _peer_view(p)
                for p in self.network.membership.peers.values()
                if not p.live and p.last_seen is not None
            ),
        )

    # ----- node.json: how the CLI finds us ----------------------------------------------------

    def _on_addrs_changed(self) -> None:
        if self.ready.is_set():
            self._write_node_info(self.config.home / CONTROL_SOCKET)

    def _write_node_info(self, sock_path: Path) -> None:
        info = {
            "peer_id": self.me.peer_id,
            "addrs": self.network.addrs,
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


def _runtime_dirs() -> tuple[str, ...]:
    """Our Python environment and the Python it is made from, where a rank (which sees the
    host's /usr already) would not otherwise find them."""
    dirs = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    return tuple(sorted(d for d in dirs if not (d == "/usr" or d.startswith("/usr/"))))


def _peer_view(p: Any, working: AbstractSet[str] = frozenset()) -> PeerView:
    rec = p.record
    return PeerView(
        peer_id=p.peer_id,
        addrs=tuple(rec.addrs if rec else p.addrs),
        state=p.state,
        cpus=rec.cpus if rec else None,
        memory=rec.memory if rec else None,
        gpus=rec.gpus if rec else None,
        backends=tuple(rec.backends) if rec else (),
        version=rec.version if rec else None,
        last_seen=p.last_seen,
        rtt_ms=round(p.rtt * 1000, 2) if p.rtt is not None else None,
        source=p.source.value,
        user1=rec.user1 if rec else records.Light.OFF,
        user2=rec.user2 if rec else records.Light.OFF,
        hot=rec.hot if rec else False,
        load=rec.load if rec else 0,
        name=rec.name if rec else "",
        lends=rec.lends if rec else None,
        mpi=rec.mpi if rec else False,
        known=Known.of(p.source, p.peer_id in working).value,
    )


def _job_row(j: JobRecord) -> JobRow:
    return JobRow(
        job_id=j.job_id,
        state=j.state.value,
        worker=j.worker,
        submitted=j.submitted,
        started=j.started,
        ended=j.ended,
        cpu_seconds=j.cpu_seconds,
        credit=j.credit,
        command=" ".join(j.spec.argv)[:200],
        array_task=j.array_task,
        array_id=j.array_id,
    )


def _exchange_row(r: HistoryRow) -> ExchangeRow:
    try:
        peer = identity.peer_id_from_public_bytes(r.peer)
    except ValueError:
        peer = r.peer.hex()
    return ExchangeRow(
        sequence=r.sequence,
        time=r.time_ms / 1000,
        peer=peer,
        job_id=r.job_id,
        amount=r.amount_milli / 1000,
        role=r.role,
    )
