"""A rainnet network in virtual time: thousands of nodes, each running the node's own sans-io
cores, with churn and a partition, measured per node and for the network.

Each virtual node runs what the node runs, at the node's own intervals:
- rainnet.membership.Membership: its view (the peer timeout), candidates, hint budgets, expiry
  every 0.5 s (rainnet.liveness), heartbeats every 2 s to each peer in its view;
- rainnet.neighbourhood (`infos`, `plan`) every second, as rainnet.connections does: its trims
  (the trimmed peer learns it at its next ping, as from a `parting` pong) and its greetings
  (hellos carrying 16 hints each way, as rainnet.contact's), and a hello to a random neighbour
  every ~10 s (the hint exchange);
- the DHT stores of rainnet.discovery (its record, and a worker's provider entry, every
  DHT_PUBLISH_INTERVAL +-25%), and for a job that finds no worker among its neighbours, what
  the requester does: a provider lookup, the records' lookups, a direct hello, the offer;
- placement by node.jobs.core.scheduler.rank_workers.
The transport (latency within and between LANs, a partition) and the DHT's lookups
(sim.kademlia) are modelled. Messages are counted at their real encoded sizes (rainnet.wire).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import base58

from node.jobs.core.scheduler import Candidate, Needs, rank_workers
from rainnet import netsize, protocols, records, wire
from rainnet.discovery import DHT_LOOKUP_SPACING, DHT_PUBLISH_INTERVAL, WORKERS_KEY
from rainnet.hints import Hint
from rainnet.identity import Identity
from rainnet.liveness import EXPIRY_TICK
from rainnet.membership import Membership, Source
from rainnet.neighbourhood import Limits, infos, plan
from sim.kademlia import K, Kademlia, key_of

HEARTBEAT = 2.0  # rain-node --heartbeat's default
PEER_TIMEOUT = 10.0
NEIGHBOURHOOD_TICK = 1.0  # rainnet.connections.TICK
HINT_EXCHANGE = 10.0  # rainnet.contact.HINT_INTERVAL
RECORD_TTL = 300.0
PLACED_WITHIN = 5.0  # the bound for "placed"
JOB_TRIES = 6  # a job finding no worker looks again, DHT_LOOKUP_SPACING apart
DEPARTURE_WATCH = 60.0  # seconds a departed node's viewers are watched
DHT_QUERY_BYTES = 64  # a FIND_NODE / GET_PROVIDERS request, about
DHT_ANSWER_BYTES = K * 48  # K peers with an address each, about


@dataclass(frozen=True)
class Scenario:
    nodes: int = 1000
    lan_size: int = 20
    max_connections: int = 8
    warmup: float = 60.0  # virtual seconds before measuring (nodes join over the first 20)
    duration: float = 120.0  # virtual seconds measured
    lifetime: float = 1800.0  # mean seconds a node stays; as many join as leave
    lend_share: float = 0.1  # nodes that lend (workers)
    job_rate: float = 0.002  # jobs per node per second
    partition: float = 30.0  # seconds a quarter of the LANs is cut off, mid-measurement (0: none)
    seed: int = 1


@dataclass
class SimNode:
    number: int
    peer_id: str
    raw: bytes  # its peer id's bytes (its DHT key is their sha256)
    key: int
    lan: int
    addr: str
    lends: bool
    membership: Membership
    record: records.NodeRecord
    up: bool = True
    conns: dict[str, float] = field(default_factory=dict)  # connections: peer id -> since
    found: dict[str, records.NodeRecord] = field(default_factory=dict)  # workers from the DHT
    stored_at: float = -math.inf  # when its record was last stored in the DHT
    msgs: int = 0  # messages sent and received while measuring
    bytes: int = 0


@dataclass
class Report:
    scenario: Scenario
    connections: list[int] = field(default_factory=list)  # per node, each sample
    neighbours: list[int] = field(default_factory=list)
    view_after_plan: int = 0  # the most connected neighbours right after a node's tick
    msgs_per_s: list[float] = field(default_factory=list)  # per node over the window
    bytes_per_s: list[float] = field(default_factory=list)
    core_cpu: float = 0.0  # CPU seconds of the cores, per node per second
    lookup_rounds: list[int] = field(default_factory=list)
    lookup_latency: list[float] = field(default_factory=list)
    jobs: int = 0
    placed_within: int = 0
    unplaced_placeable: int = 0  # jobs a live worker could have run, that none did
    out_of_view: list[float] = field(default_factory=list)  # departure to out of every view
    false_gone: int = 0  # live, reachable peers declared gone (outside a partition's cut)
    cut_gone: int = 0  # peers declared gone across the partition
    size_estimates: list[float] = field(default_factory=list)  # estimate / live nodes
    wall: float = 0.0  # real seconds the run took

    def row(self) -> dict[str, Any]:
        """The figures, as bench/bench_scale.py prints them."""

        def pct(xs: list[float] | list[int], q: float) -> float:
            return float(sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]) if xs else math.nan

        med = statistics.median
        return {
            "nodes": self.scenario.nodes,
            "conns med": med(self.connections),
            "conns p99": pct(self.connections, 0.99),
            "conns max": max(self.connections),
            "neigh med": med(self.neighbours),
            "neigh max": max(self.neighbours),
            "view max": self.view_after_plan,
            "msg/s med": round(med(self.msgs_per_s), 2),
            "msg/s max": round(max(self.msgs_per_s), 1),
            "B/s med": round(med(self.bytes_per_s)),
            "core ms/s": round(self.core_cpu * 1000, 3),
            "hops med": med(self.lookup_rounds) if self.lookup_rounds else math.nan,
            "lookup s": round(med(self.lookup_latency), 3) if self.lookup_latency else math.nan,
            "placed<5s": round(self.placed_within / max(1, self.jobs), 4),
            "unplaced": self.unplaced_placeable,
            "gone p99 s": round(pct(self.out_of_view, 0.99), 1),
            "false gone": self.false_gone,
            "cut gone": self.cut_gone,
            "size est": round(med(self.size_estimates), 2) if self.size_estimates else math.nan,
        }


@cache
def sizes() -> dict[str, int]:
    """The encoded sizes of the messages the cores exchange (the real codec, once)."""
    me = Identity.generate()
    rec = records.NodeRecord(
        peer_id=me.peer_id,
        addrs=(f"/ip4/10.0.0.1/tcp/4001/p2p/{me.peer_id}",),
        cpus=4,
        memory=8 << 30,
        gpus=0,
        backends=("native",),
        version="0",
        state="idle",
        seq=1,
        issued_at=0.0,
        ttl=RECORD_TTL,
    )
    signed = records.sign_record(me, rec)
    hint = protocols.PeerHint(peer_id=me.peer_id, addrs=rec.addrs)
    hello = protocols.Hello(signed, (hint,) * protocols.MAX_HINTS)
    return {
        "ping": len(wire.encode(protocols.Ping(nonce=1 << 20, record_seq=1 << 40))),
        "pong": len(wire.encode(protocols.Pong(nonce=1 << 20, record_seq=1 << 40))),
        "hello": len(wire.encode(hello, protocols.HELLO_MAX_FRAME)),
        "record": len(signed.to_bytes()),
    }


class World:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.rng = random.Random(scenario.seed)
        self.limits = Limits.of(scenario.max_connections)
        self.now = 0.0
        self.events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.nodes: list[SimNode] = []
        self.by_id: dict[str, SimNode] = {}
        self.lans: dict[int, list[SimNode]] = {}
        self.dht = Kademlia()
        self.workers_key = key_of(WORKERS_KEY)
        self.report = Report(scenario)
        self.core = 0.0  # perf_counter seconds inside the cores while measuring
        self.cut: tuple[float, float] = (math.inf, math.inf)
        self.lan_count = max(1, scenario.nodes // scenario.lan_size)
        self.sz = sizes()

    # ----- the loop -----------------------------------------------------------------------

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self.events, (when, self._seq, fn, args))

    def measuring(self) -> bool:
        return self.s.warmup <= self.now < self.s.warmup + self.s.duration

    def run(self) -> Report:
        started = time.perf_counter()
        s = self.s
        for _ in range(s.nodes):
            self.at(self.rng.uniform(0, 20), self.join)
        end = s.warmup + s.duration
        if s.lifetime > 0:
            self.at(s.warmup / 2, self.churn)
        if s.partition > 0:
            start = s.warmup + s.duration / 3
            self.cut = (start, start + s.partition)
        self.at(s.warmup, self.sample)
        self.at(0.5, self.forget_stale)
        while self.events and self.events[0][0] < end:
            self.now, _, fn, args = heapq.heappop(self.events)
            fn(*args)
        for node in self.nodes:
            if node.up:
                self.report.msgs_per_s.append(node.msgs / s.duration)
                self.report.bytes_per_s.append(node.bytes / s.duration)
        alive = sum(1 for n in self.nodes if n.up)
        self.report.core_cpu = self.core / (alive * s.duration)
        self.report.wall = time.perf_counter() - started
        return self.report

    def timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one of the cores, its time counted while measuring."""
        t = time.perf_counter()
        out = fn(*args)
        if self.measuring():
            self.core += time.perf_counter() - t
        return out

    # ----- the transport (modelled) ---------------------------------------------------------

    def partitioned(self, a: SimNode, b: SimNode) -> bool:
        lo, hi = self.cut
        return lo <= self.now < hi and (a.lan % 4 == 0) != (b.lan % 4 == 0)

    def reachable(self, a: SimNode, b: SimNode) -> bool:
        return a.up and b.up and not self.partitioned(a, b)

    def rtt(self, a: SimNode, b: SimNode) -> float:
        if a.lan == b.lan:
            return 0.0005
        h = hashlib.blake2b(f"{min(a.lan, b.lan)}-{max(a.lan, b.lan)}".encode(), digest_size=2)
        return 0.02 + int.from_bytes(h.digest(), "big") % 60 / 1000

    def count(self, a: SimNode, b: SimNode, size: int, answered: int = 0) -> None:
        """A message of `size` bytes from a to b (and its answer of `answered`, if any)."""
        if not self.measuring():
            return
        n = 2 if answered else 1
        a.msgs += n
        a.bytes += size + answered
        if b.up:
            b.msgs += n
            b.bytes += size + answered

    def connect(self, a: SimNode, b: SimNode) -> None:
        a.conns.setdefault(b.peer_id, self.now)
        b.conns.setdefault(a.peer_id, self.now)

    # ----- nodes joining and leaving --------------------------------------------------------

    def join(self) -> None:
        number = len(self.nodes)
        raw = b"\x00\x24" + hashlib.sha256(f"{self.s.seed}/{number}".encode()).digest()[:36]
        peer_id = base58.b58encode(raw).decode()
        lan = self.rng.randrange(self.lan_count)
        addr = f"/ip4/10.{lan // 256 % 256}.{lan % 256}.{number % 250 + 1}/tcp/4001/p2p/{peer_id}"
        lends = self.rng.random() < self.s.lend_share
        rec = records.NodeRecord(
            peer_id=peer_id,
            addrs=(addr,),
            cpus=4,
            memory=8 << 30,
            gpus=0,
            backends=("native",) if lends else (),
            version="0",
            state="idle" if lends else "busy",
            seq=1,
            issued_at=self.now,
            ttl=RECORD_TTL,
            lends=lends,
        )
        node = SimNode(
            number,
            peer_id,
            raw,
            netsize.dht_key(raw),
            lan,
            addr,
            lends,
            Membership(peer_id, peer_timeout=PEER_TIMEOUT, rng=random.Random(number)),
            rec,
        )
        self.nodes.append(node)
        self.by_id[peer_id] = node
        # mDNS: the LAN's peers learn of it and it of them; bootstrap: three peers anywhere.
        neighbours = [n for n in self.lans.setdefault(lan, []) if n.up]
        self.lans[lan].append(node)
        for other in neighbours:
            self.timed(other.membership.learn, peer_id, (addr,), Source.MDNS, self.now)
            self.timed(node.membership.learn, other.peer_id, (other.addr,), Source.MDNS, self.now)
        up = [n for n in self.nodes[-200:] if n.up and n is not node]
        for boot in self.rng.sample(up, min(3, len(up))):
            self.timed(
                node.membership.learn, boot.peer_id, (boot.addr,), Source.BOOTSTRAP, self.now
            )
        self.dht.join(number, node.key)
        jitter = self.rng.random()
        self.at(self.now + EXPIRY_TICK * jitter, self.tick, node, 0)
        self.at(self.now + 2 + 3 * jitter, self.store, node)
        self.at(self.now + HINT_EXCHANGE * (0.5 + jitter), self.exchange_hints, node)

    def churn(self) -> None:
        """Every second: departures (silent: no goodbye) and as many newcomers, on average."""
        rate = self.s.nodes / self.s.lifetime
        for _ in range(_poisson(self.rng, rate)):
            up = [n for n in self.rng.sample(self.nodes, min(20, len(self.nodes))) if n.up]
            if up:
                self.leave(up[0])
            self.join()
        if self.s.job_rate > 0 and self.measuring():
            for _ in range(_poisson(self.rng, self.s.job_rate * self.s.nodes)):
                self.submit()
        self.at(self.now + 1.0, self.churn)

    def leave(self, node: SimNode) -> None:
        viewers = [
            n for n in self.nodes if n.up and n is not node and n.membership.is_live(node.peer_id)
        ]
        node.up = False
        self.dht.leave(node.number, self.now)
        if viewers and self.measuring():
            self.at(self.now + EXPIRY_TICK, self.watch_departure, node, viewers, self.now)

    def watch_departure(self, node: SimNode, viewers: list[SimNode], left: float) -> None:
        holding = [v for v in viewers if v.up and v.membership.is_live(node.peer_id)]
        if not holding:
            self.report.out_of_view.append(self.now - left)
        elif self.now - left < DEPARTURE_WATCH:
            self.at(self.now + EXPIRY_TICK, self.watch_departure, node, holding, left)
        else:
            self.report.out_of_view.append(math.inf)

    def forget_stale(self) -> None:
        self.dht.forget_stale(self.now, lambda n: self.nodes[n].key)
        self.at(self.now + 5.0, self.forget_stale)

    # ----- what each node runs ------------------------------------------------------------

    def tick(self, node: SimNode, n: int) -> None:
        """Every EXPIRY_TICK: expiry; every second, the neighbourhood; every HEARTBEAT, pings."""
        if not node.up:
            return
        for gone in self.timed(node.membership.expire, self.now):
            node.conns.pop(gone, None)
            peer = self.by_id[gone]
            if peer.up and not self.partitioned(node, peer):
                self.report.false_gone += 1
            elif peer.up:
                self.report.cut_gone += 1
        steps = round(NEIGHBOURHOOD_TICK / EXPIRY_TICK)
        if n % steps == 0:
            self.neighbourhood(node)
        if n % round(HEARTBEAT / EXPIRY_TICK) == 0:
            self.heartbeats(node)
        self.at(self.now + EXPIRY_TICK, self.tick, node, n + 1)

    def neighbourhood(self, node: SimNode) -> None:
        peers = self.timed(
            infos,
            node.membership,
            node.conns,
            self.now,
            frozenset(),
            frozenset(),
            frozenset(),
            lambda pid: (self.by_id[pid].addr,),
        )
        decided = self.timed(plan, peers, self.limits, self.now)
        for peer_id in decided.trim:
            self.timed(node.membership.part, peer_id, self.now)
            node.conns.pop(peer_id, None)
            other = self.by_id[peer_id]
            if self.reachable(node, other):
                other.conns.pop(node.peer_id, None)
        if self.measuring():
            # (Live and connected: a peer that just closed its connection to us is in the
            # view until our next ping to it is answered `parting`, as in the node.)
            view = sum(
                1 for p in node.membership.peers.values() if p.live and p.peer_id in node.conns
            )
            self.report.view_after_plan = max(self.report.view_after_plan, view)
        for peer_id in decided.dial:
            self.hello(node, self.by_id[peer_id])

    def heartbeats(self, node: SimNode) -> None:
        for peer in self.timed(node.membership.live_peers):
            other = self.by_id[peer.peer_id]
            self.count(node, other, self.sz["ping"], self.sz["pong"] if other.up else 0)
            if not self.reachable(node, other):
                continue  # (no answer: its view expires it after the timeout)
            theirs = other.membership.peers.get(node.peer_id)
            if theirs is not None and theirs.parted and not theirs.live:
                self.timed(node.membership.part, other.peer_id, self.now)  # (a parting pong)
                node.conns.pop(other.peer_id, None)
                continue
            self.connect(node, other)
            rtt = self.rtt(node, other)
            self.timed(node.membership.contacted, other.peer_id, self.now, None, rtt)
            if theirs is not None and theirs.live:
                self.timed(other.membership.contacted, node.peer_id, self.now)
            else:
                self.timed(other.membership.learn, node.peer_id, (), Source.INBOUND, self.now)

    def hello(self, node: SimNode, other: SimNode) -> bool:
        """A hello from `node` to `other` (each side's record and 16 hints); whether answered."""
        self.count(node, other, self.sz["hello"], self.sz["hello"] if other.up else 0)
        if not self.reachable(node, other):
            self.timed(node.membership.failed, other.peer_id, self.now)
            return False
        self.connect(node, other)
        rtt = self.rtt(node, other)
        self.timed(node.membership.contacted, other.peer_id, self.now, other.record, rtt)
        self.timed(other.membership.contacted, node.peer_id, self.now, node.record, rtt)
        for a, b in ((node, other), (other, node)):
            sample = self.timed(a.membership.sample, protocols.MAX_HINTS, b.peer_id)
            hints = [Hint(p.peer_id, p.addrs[:1]) for p in sample]
            self.timed(b.membership.learn_hints, a.peer_id, hints, self.now)
        return True

    def exchange_hints(self, node: SimNode) -> None:
        if not node.up:
            return
        peers = self.timed(node.membership.sample, 1)
        if peers:
            self.hello(node, self.by_id[peers[0].peer_id])
        self.at(self.now + HINT_EXCHANGE * (0.5 + self.rng.random()), self.exchange_hints, node)

    # ----- the DHT (modelled lookups, the node's intervals) ---------------------------------

    def lookup(self, node: SimNode, target: int) -> tuple[float, tuple[int, ...]]:
        """A lookup from `node`: its latency, and the K closest live nodes it found. Each node
        queried is a transient connection, and a query and answer each way."""
        found = self.dht.lookup(
            node.number,
            node.key,
            target,
            lambda n: self.reachable(node, self.nodes[n]),
            lambda a, b: self.rtt(self.nodes[a], self.nodes[b]),
        )
        for n in found.queried:
            other = self.nodes[n]
            self.count(node, other, DHT_QUERY_BYTES, DHT_ANSWER_BYTES if other.up else 0)
            if self.reachable(node, other):
                self.connect(node, other)
        if self.measuring():
            self.report.lookup_rounds.append(found.rounds)
            self.report.lookup_latency.append(found.latency)
        return found.latency, found.closest

    def store(self, node: SimNode) -> None:
        """rainnet.discovery.publish: the record at the K closest to its key, and a worker's
        provider entry at the K closest to the workers' key."""
        if not node.up:
            return
        targets = [key_of(records.record_key(node.peer_id))]
        if node.lends:
            targets.append(self.workers_key)
        for target in targets:
            _, closest = self.lookup(node, target)
            for n in closest:
                self.count(node, self.nodes[n], self.sz["record"], DHT_QUERY_BYTES)
                self.connect(node, self.nodes[n])
        node.stored_at = self.now
        # (Re-signed as the node does at half its ttl: a fresh record for its neighbours too.)
        node.record = dataclasses.replace(node.record, seq=node.record.seq + 1, issued_at=self.now)
        if node.lends:
            self.dht.provide(self.workers_key, node.number, self.now)
        self.at(
            self.now + DHT_PUBLISH_INTERVAL * (0.75 + 0.5 * self.rng.random()), self.store, node
        )

    # ----- jobs -----------------------------------------------------------------------------

    def submit(self) -> None:
        up = [n for n in self.rng.sample(self.nodes, min(20, len(self.nodes))) if n.up]
        if up:
            self.report.jobs += 1
            self.place(up[0], self.now, 0)

    def place(self, node: SimNode, submitted: float, tries: int) -> None:
        """What the requester does (node.jobs.requester): rank the workers it knows (its
        neighbours, those found before), offer to the best; none fitting: a DHT lookup."""
        if not node.up:
            return
        needs = Needs(cpus=1, memory=1 << 20)
        latency = 0.0
        for _ in range(2):
            known = [
                Candidate(p.record, p.rtt)
                for p in self.timed(node.membership.live_peers)
                if p.record is not None
            ] + [Candidate(r) for r in node.found.values() if r.is_fresh(self.now)]
            for rec in self.timed(rank_workers, known, needs):
                worker = self.by_id[rec.peer_id]
                if not node.membership.is_live(worker.peer_id):
                    latency += self.rtt(node, worker)  # a direct hello first
                    if not self.hello(node, worker):
                        latency += 2.0  # (its dial timed out; the next one)
                        node.found.pop(worker.peer_id, None)
                        continue
                latency += self.rtt(node, worker)  # the offer, taken
                self.placed(submitted, latency + self.now - submitted)
                return
            # No worker known fits: the DHT's providers, then their records, all at once.
            took, _ = self.lookup(node, self.workers_key)
            providers = self.dht.providers_of(self.workers_key, 20)
            slowest = 0.0
            for n in providers:
                worker = self.nodes[n]
                record_took, _ = self.lookup(node, key_of(records.record_key(worker.peer_id)))
                slowest = max(slowest, record_took)
                if self.now - worker.stored_at < RECORD_TTL:  # (its record is still in the DHT)
                    node.found[worker.peer_id] = worker.record
            latency += took + slowest
        if tries + 1 < JOB_TRIES:
            self.at(self.now + DHT_LOOKUP_SPACING, self.place, node, submitted, tries + 1)
        elif any(n.lends and self.reachable(node, n) for n in self.nodes):
            self.report.unplaced_placeable += 1

    def placed(self, submitted: float, took: float) -> None:
        if took <= PLACED_WITHIN:
            self.report.placed_within += 1

    # ----- samples ------------------------------------------------------------------------

    def sample(self) -> None:
        """Every 5 s while measuring: connections and neighbours per node; a few estimates."""
        alive = [n for n in self.nodes if n.up]
        for node in alive:
            self.report.connections.append(len(node.conns))
            self.report.neighbours.append(sum(1 for p in node.membership.peers.values() if p.live))
        for node in self.rng.sample(alive, min(20, len(alive))):
            table = [
                self.nodes[self.dht.owner[k]].raw
                for k in self.dht.closest_known(node.key, node.key)
            ]
            guess = self.timed(netsize.estimate, node.raw, table)
            if guess:
                self.report.size_estimates.append(guess / len(alive))
        if self.now + 5 < self.s.warmup + self.s.duration:
            self.at(self.now + 5, self.sample)


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's; for a large mean, the normal approximation)."""
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def simulate(scenario: Scenario) -> Report:
    return World(scenario).run()
