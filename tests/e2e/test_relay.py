"""Circuit relay v2 (`rainnet.relay`): a node behind NAT is reachable through a relay.

In-process on loopback: a relay R, a target T that reserves a slot on R, a dialer D. In network
namespaces (root): LAN B behind NAT (MASQUERADE on the router), the relay on the router, and a
dialer on LAN A that cannot reach B directly but reaches it through the relay.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.connection_types import ConnectionType
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, StopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as PbPeerId
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from rainnet import protocols, records, relay
from rainnet.host import build_host
from rainnet.identity import Identity, load_or_create
from rainnet.pool import PoolSecret
from rainnet.relay import HopLimits, Relay, RelayError
from rainnet.streams import FramedStream, guarded_handler
from tests.e2e.netns import Topology
from tests.e2e.nodes import wait_until

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
ECHO = "/rain/test/echo/1.0.0"
REPO = Path(__file__).resolve().parent.parent.parent


async def echo(stream: Any) -> None:
    while True:
        try:
            with trio.fail_after(10):
                data = await stream.read(65536)
        except Exception:  # EOF arrives as StreamEOF
            break
        if not data:
            break
        await stream.write(data)
    await stream.close()


def new_host(me: Identity | None = None, pool: PoolSecret | None = None) -> Any:
    host = build_host(me or Identity.generate(), pool)
    host.set_stream_handler(ECHO, guarded_handler("echo", echo))
    return host


async def echo_round_trip(host: Any, peer: Any, payload: bytes) -> bytes:
    stream = await host.new_stream(peer, [ECHO])
    await stream.write(payload)
    got = b""
    while len(got) < len(payload):
        got += await stream.read(65536)
    await stream.close()
    return got


def run(fn: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    async def bounded() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(bounded)


@contextlib.asynccontextmanager
async def serving_relay(
    limits: HopLimits | None = None, pool: PoolSecret | None = None
) -> AsyncIterator[tuple[Any, Relay, str]]:
    """A running relay host, its Relay, and its dialable address (with /p2p/<id>)."""
    host = new_host(pool=pool)
    r = Relay(host, serve=True, limits=limits)
    r.install()
    async with host.run([LOOPBACK]):
        yield host, r, str(host.get_addrs()[0])


@contextlib.asynccontextmanager
async def natted_target(
    relay_addr: str, listen: bool = False, pool: PoolSecret | None = None
) -> AsyncIterator[tuple[Any, Relay, list[tuple[str, ...]]]]:
    """A target holding a reservation on `relay_addr`. Unless `listen`, it listens nowhere, like
    a node behind NAT: nobody can learn a direct address for it, there is none."""
    host = new_host(pool=pool)
    seen: list[tuple[str, ...]] = []
    r = Relay(host, via=[relay_addr], on_addrs=seen.append)
    r.install()
    async with host.run([LOOPBACK] if listen else []), trio.open_nursery() as nursery:
        await nursery.start(r.run)
        await r.wait_reserved(10)
        yield host, r, seen
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def dialer(me: Identity | None = None, pool: PoolSecret | None = None) -> AsyncIterator[Any]:
    host = new_host(me, pool)
    Relay(host).install()
    async with host.run([LOOPBACK]):
        yield host


async def eventually(predicate: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        while True:
            if predicate():
                return
            await trio.sleep(0.05)


def known_addrs(host: Any, peer: Any) -> list[str]:
    try:
        return [str(a) for a in host.get_peerstore().addrs(peer)]
    except Exception:
        return []


# ----- addresses ---------------------------------------------------------------------------------

R_ID = Identity.generate().peer_id
T_ID = Identity.generate().peer_id


def test_circuit_addresses_parse_and_reject() -> None:
    addr = f"/ip4/192.0.2.1/tcp/4001/p2p/{R_ID}/p2p-circuit/p2p/{T_ID}"
    c = relay.parse_circuit(addr)
    assert (c.relay_addr, c.relay_id, c.target_id) == (
        f"/ip4/192.0.2.1/tcp/4001/p2p/{R_ID}",
        R_ID,
        T_ID,
    )
    assert relay.is_circuit(addr) and not relay.is_circuit(f"/ip4/192.0.2.1/tcp/1/p2p/{T_ID}")
    assert relay.parse_circuit(f"/p2p/{R_ID}/p2p-circuit/p2p/{T_ID}").relay_addr == f"/p2p/{R_ID}"
    for bad in (
        f"/ip4/192.0.2.1/tcp/4001/p2p-circuit/p2p/{T_ID}",  # no relay id
        f"/ip4/192.0.2.1/tcp/4001/p2p/{R_ID}/p2p-circuit",  # no target
        f"/p2p/{R_ID}/p2p-circuit/p2p/{T_ID}/p2p-circuit/p2p/{R_ID}",  # two hops
        f"/p2p/{R_ID}/p2p-circuit/p2p/{R_ID}",  # through itself
        f"/p2p/{R_ID}/p2p-circuit/p2p/notapeer",
    ):
        with pytest.raises(ValueError):
            relay.parse_circuit(bad)
    with pytest.raises(ValueError):
        Relay(object(), via=[addr])  # a relay address cannot be a circuit


def test_advertised_circuits_skip_unusable_relay_addresses() -> None:
    res = relay.Reservation(
        relay_id=R_ID,
        expires_at=time.time() + 60,
        relay_addrs=(
            f"/ip4/127.0.0.1/tcp/4001/p2p/{R_ID}",
            f"/ip4/198.51.100.7/tcp/4001/p2p/{R_ID}",
            f"/ip4/198.51.100.8/tcp/4001/p2p/{T_ID}",  # someone else's address
        ),
        limit_duration=0,
        limit_data=0,
    )
    public = f"/ip4/192.0.2.1/tcp/4001/p2p/{R_ID}"
    assert relay.advertised_circuits(public, res, T_ID) == (
        f"{public}/p2p-circuit/p2p/{T_ID}",
        f"/ip4/198.51.100.7/tcp/4001/p2p/{R_ID}/p2p-circuit/p2p/{T_ID}",
    )
    # Told to use a loopback relay (tests, one machine): loopback addresses are fine then.
    local = f"/ip4/127.0.0.1/tcp/4001/p2p/{R_ID}"
    assert relay.advertised_circuits(local, res, T_ID)[0] == f"{local}/p2p-circuit/p2p/{T_ID}"


# ----- in-process on loopback --------------------------------------------------------------------


def test_dialer_reaches_a_natted_target_only_through_the_relay() -> None:
    async def main() -> None:
        async with (
            serving_relay() as (r_host, r_relay, r_addr),
            natted_target(r_addr) as (t_host, t_relay, _),
            dialer() as d_host,
        ):
            t_id = str(t_host.get_id())
            circuits = t_relay.circuit_addrs
            assert circuits == (f"{r_addr}/p2p-circuit/p2p/{t_id}",)
            assert t_relay.reservations[str(r_host.get_id())].limit_data == HopLimits().circuit_data
            assert r_relay.reserved_peers() == {t_id}
            assert t_host.get_addrs() == []  # no direct address exists
            assert known_addrs(d_host, t_host.get_id()) == []

            t0 = time.perf_counter()
            await relay.connect(d_host, t_id, circuits)
            took = time.perf_counter() - t0
            print(f"relayed connect: {took * 1000:.1f} ms")

            # The relayed connection is a swarm connection: new_stream uses it, both ways.
            conns = d_host.get_network().get_connections(t_host.get_id())
            assert [c.get_connection_type() for c in conns] == [ConnectionType.RELAYED]
            assert relay.connection_kind(d_host, t_id) == "relayed"
            assert relay.connection_kind(t_host, str(d_host.get_id())) == "relayed"
            for i in range(5):
                msg = b"over the relay %d" % i
                assert await echo_round_trip(d_host, t_host.get_id(), msg) == msg
            back = b"and back the other way"
            assert await echo_round_trip(t_host, d_host.get_id(), back) == back
            big = os.urandom(300_000)  # several yamux windows through two muxers
            assert await echo_round_trip(d_host, t_host.get_id(), big) == big
            assert r_relay.circuits_relayed == 1
            # D still knows no direct address for T: everything went through R.
            assert all(relay.is_circuit(a) for a in known_addrs(d_host, t_host.get_id()))
            # Connecting again reuses the connection.
            await relay.connect(d_host, t_id, circuits)
            assert len(d_host.get_network().get_connections(t_host.get_id())) == 1

    run(main)


def test_a_pool_member_behind_nat_is_reached_through_the_pools_relay() -> None:
    """A circuit between two pool nodes is protected with the pool key at both ends (py-libp2p
    protected only the end that accepts it: every relayed connection in a pool failed); an
    outsider gets no circuit, nor a connection to the relay."""
    pool = PoolSecret.create("nat")

    async def main() -> None:
        async with (
            serving_relay(pool=pool) as (_, r_relay, r_addr),
            natted_target(r_addr, pool=pool) as (t_host, t_relay, _),
            dialer(pool=pool) as d_host,
            dialer() as outsider,
        ):
            t_id = str(t_host.get_id())
            await relay.connect(d_host, t_id, t_relay.circuit_addrs)
            assert relay.connection_kind(d_host, t_id) == "relayed"
            msg = b"inside the pool, through its relay"
            assert await echo_round_trip(d_host, t_host.get_id(), msg) == msg
            assert await echo_round_trip(t_host, d_host.get_id(), msg) == msg
            with pytest.raises(RelayError):
                await relay.connect(outsider, t_id, t_relay.circuit_addrs, timeout=5)
            assert r_relay.circuits_relayed == 1

    run(main)


def signed(me: Identity, addrs: tuple[str, ...]) -> records.SignedRecord:
    rec = records.NodeRecord(
        peer_id=me.peer_id,
        addrs=addrs,
        cpus=1,
        memory=1 << 30,
        gpus=0,
        backends=(),
        version="test",
        state="idle",
        seq=int(time.time() * 1000),
        issued_at=time.time(),
        ttl=60,
    )
    return records.sign_record(me, rec)


def test_hello_through_the_relay_and_a_redial_from_the_signed_record() -> None:
    """The node's own protocol over a circuit: T's hello reply carries a signed record whose
    addresses are its circuit addresses; a peer that knows only that record reaches T with it."""

    async def main() -> None:
        async with serving_relay() as (_, _, r_addr):
            t_me = Identity.generate()
            t_host = build_host(t_me)
            t_relay = Relay(t_host, via=[r_addr])

            async def hello(stream: Any) -> None:
                fs = FramedStream(stream, (protocols.Hello,), protocols.HELLO_MAX_FRAME)
                got = await fs.receive_a(protocols.Hello)
                records.open_record(got.record, time.time(), expect_peer=fs.remote_peer)
                reply = signed(t_me, t_relay.circuit_addrs)
                await fs.send(protocols.HelloReply(reply, ()))
                await fs.close()

            t_host.set_stream_handler(protocols.HELLO, guarded_handler("hello", hello))
            t_relay.install()
            async with t_host.run([]), trio.open_nursery() as nursery:
                await nursery.start(t_relay.run)
                circuits = await t_relay.wait_reserved(10)
                d_me = Identity.generate()
                async with dialer(d_me) as d_host:
                    await relay.connect(d_host, t_me.peer_id, circuits)
                    stream = await d_host.new_stream(t_host.get_id(), [protocols.HELLO])
                    fs = FramedStream(stream, (protocols.HelloReply,), protocols.HELLO_MAX_FRAME)
                    await fs.send(protocols.Hello(signed(d_me, ()), ()))
                    reply = await fs.receive_a(protocols.HelloReply)
                    rec = records.open_record(reply.record, time.time(), expect_peer=t_me.peer_id)
                    assert rec.addrs == circuits
                e_me = Identity.generate()
                async with dialer(e_me) as e_host:
                    await relay.connect(e_host, t_me.peer_id, rec.addrs)
                    stream = await e_host.new_stream(t_host.get_id(), [protocols.HELLO])
                    fs = FramedStream(stream, (protocols.HelloReply,), protocols.HELLO_MAX_FRAME)
                    await fs.send(protocols.Hello(signed(e_me, ()), ()))
                    reply = await fs.receive_a(protocols.HelloReply)
                    assert records.open_record(reply.record, time.time()).peer_id == t_me.peer_id
                nursery.cancel_scope.cancel()

    run(main)


def test_connect_prefers_a_direct_address_and_falls_back_to_the_circuit() -> None:
    async def main() -> None:
        async with (
            serving_relay() as (_, _, r_addr),
            natted_target(r_addr, listen=True) as (t_host, t_relay, _),
        ):
            t_id = str(t_host.get_id())
            direct = f"{t_host.get_addrs()[0]}"
            async with dialer() as d_host:
                await relay.connect(d_host, t_id, [*t_relay.circuit_addrs, direct])
                conns = d_host.get_network().get_connections(t_host.get_id())
                assert [c.get_connection_type() for c in conns] == [ConnectionType.DIRECT]
                assert relay.connection_kind(d_host, t_id) == "direct"
            dead = f"/ip4/127.0.0.1/tcp/1/p2p/{t_id}"  # refused at once, like a closed port
            async with dialer() as d_host:
                await relay.connect(d_host, t_id, [dead, *t_relay.circuit_addrs])
                conns = d_host.get_network().get_connections(t_host.get_id())
                assert [c.get_connection_type() for c in conns] == [ConnectionType.RELAYED]
                assert await echo_round_trip(d_host, t_host.get_id(), b"hi") == b"hi"

    run(main)


def test_a_circuit_to_a_peer_without_reservation_is_refused() -> None:
    async def main() -> None:
        async with serving_relay() as (_, _, r_addr), dialer() as d_host, dialer() as x_host:
            x_id = str(x_host.get_id())
            # X is even connected to R, but holds no slot there.
            await x_host.connect(relay.relay_info(r_addr))
            t0 = time.monotonic()
            with pytest.raises(RelayError) as err:
                await relay.dial_circuit(d_host, relay.circuit_addr(r_addr, x_id))
            assert err.value.status == StatusCode.NO_RESERVATION
            assert time.monotonic() - t0 < 5
            with pytest.raises(RelayError):
                await relay.connect(d_host, x_id, [relay.circuit_addr(r_addr, x_id)], timeout=5)

    run(main)


def test_relay_bounds_reservations_and_gives_slots_only_to_the_authenticated_peer() -> None:
    async def main() -> None:
        async with (
            serving_relay(HopLimits(reservations=1)) as (r_host, r_relay, r_addr),
            dialer() as a_host,
            dialer() as b_host,
        ):
            info = relay.relay_info(r_addr)
            a_id, b_id = str(a_host.get_id()), str(b_host.get_id())
            # A asks for a slot in B's name: the slot is A's (the field is ignored).
            await a_host.connect(info)
            stream = await a_host.new_stream(info.peer_id, [relay.HOP])
            forged = HopMessage(
                type=HopMessage.RESERVE, peer=PbPeerId(id=b_host.get_id().to_bytes())
            )
            await write_delimited_msg(stream, forged)
            resp = await read_delimited_msg(stream, HopMessage)
            await stream.close()
            assert resp.status == StatusCode.OK
            assert r_relay.reserved_peers() == {a_id}
            # The relay is full: B is refused.
            with pytest.raises(RelayError) as err:
                await relay.reserve(b_host, info)
            assert err.value.status == StatusCode.RESOURCE_LIMIT_EXCEEDED
            # A leaves: its slot is freed for the next reservation, without waiting an hour.
            await a_host.get_network().close_peer(r_host.get_id())
            await eventually(lambda: not r_host.get_network().get_connections(a_host.get_id()), 5)
            res = await relay.reserve(b_host, info)
            assert res.relay_id == str(r_host.get_id()) and res.expires_at > time.time() + 3000
            assert r_relay.reserved_peers() == {b_id}

    run(main)


def test_reservation_is_renewed_after_the_relay_connection_drops() -> None:
    async def main() -> None:
        async with (
            serving_relay() as (r_host, _, r_addr),
            natted_target(r_addr) as (t_host, t_relay, seen),
            dialer() as d_host,
        ):
            circuits = t_relay.circuit_addrs
            assert seen == [circuits]
            await t_host.get_network().close_peer(r_host.get_id())
            # The keeper notices within a second or two, withdraws the address, reserves again.
            with trio.fail_after(15):
                while len(seen) < 3:
                    await t_relay.changed.wait()
            assert seen == [circuits, (), circuits]
            await relay.connect(d_host, str(t_host.get_id()), circuits)
            assert await echo_round_trip(d_host, t_host.get_id(), b"again") == b"again"

    run(main)


def test_stop_from_a_peer_that_is_not_our_relay_is_refused() -> None:
    async def main() -> None:
        async with (
            serving_relay() as (_, _, r_addr),
            natted_target(r_addr, listen=True) as (t_host, _, _),
            dialer() as x_host,
        ):
            await x_host.connect(PeerInfo(t_host.get_id(), t_host.get_addrs()))
            stream = await x_host.new_stream(t_host.get_id(), [relay.STOP])
            x_pb = PbPeerId(id=x_host.get_id().to_bytes())
            offer = StopMessage(type=StopMessage.CONNECT, peer=x_pb)
            with pytest.raises(Exception):  # noqa: B017 - reset or EOF, either is a refusal
                await write_delimited_msg(stream, offer)
                await read_delimited_msg(stream, StopMessage)
            await trio.sleep(0.2)
            assert len(t_host.get_network().get_connections(x_host.get_id())) == 1

    run(main)


@pytest.mark.parametrize("cap", ["data", "duration"])
def test_circuit_is_cut_at_the_relays_caps_and_its_slot_freed(cap: str) -> None:
    async def main() -> None:
        if cap == "data":
            limits, payload, wait = HopLimits(circuit_data=128 * 1024), 512 * 1024, 0.0
        else:
            limits, payload, wait = HopLimits(circuit_duration=1), 1024, 1.5
        async with (
            serving_relay(limits) as (_, r_relay, r_addr),
            natted_target(r_addr) as (t_host, t_relay, _),
            dialer() as d_host,
        ):
            await relay.connect(d_host, str(t_host.get_id()), t_relay.circuit_addrs)
            assert await echo_round_trip(d_host, t_host.get_id(), b"small") == b"small"
            await trio.sleep(wait)
            with pytest.raises(Exception):  # noqa: B017 - whichever way the cut shows first
                with trio.fail_after(10):
                    await echo_round_trip(d_host, t_host.get_id(), os.urandom(payload))
            await eventually(lambda: not d_host.get_network().get_connections(t_host.get_id()), 10)
            # The relay frees the circuit too (the library alone left it taken: see _BoundedHop),
            # so the same pair can have a new circuit at once.
            await eventually(lambda: r_relay.circuits_relayed == 0, 10)
            await relay.connect(d_host, str(t_host.get_id()), t_relay.circuit_addrs)
            assert await echo_round_trip(d_host, t_host.get_id(), b"again") == b"again"

    run(main)


# ----- network namespaces ------------------------------------------------------------------------


class Procs:
    """Processes of one test, each killed at the end (by its own pid)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, ns: str, name: str, *args: str) -> subprocess.Popen[bytes]:
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.e2e.relay_probe", *args]
        cmd += ["--out", str(self.out)]
        log = open(self.out / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        self.procs.append((name, proc))
        return proc

    def wait_json(self, name: str, timeout: float) -> dict[str, Any]:
        path = self.out / f"{name}.json"

        def ready() -> bool:
            for pname, proc in self.procs:
                if proc.poll() is not None and not path.exists():
                    raise AssertionError(f"{pname} exited {proc.returncode}:\n{self.log(pname)}")
            return path.exists()

        wait_until(ready, timeout, f"{name}.json is written", interval=0.1)
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def log(self, name: str) -> str:
        try:
            return (self.out / f"{name}.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop_all(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@pytest.mark.netns
def test_natted_worker_is_reached_through_a_relay_on_the_router(
    topology: Topology, tmp_path: Path
) -> None:
    lan_a = topology.add_lan("a", hosts=1)
    lan_b = topology.add_lan("b", hosts=1)
    topology.masquerade(lan_b)
    (a0,), (b0,) = lan_a.hosts, lan_b.hosts
    procs = Procs(tmp_path)
    try:
        # The NAT lets B's connections out to A...
        procs.start(a0, "tcp-listen", "tcp-listen", "--port", "5001")
        procs.wait_json("tcp-listen", 20)
        res = topology.exec(
            b0,
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(('{lan_a.ip(10)}', 5001), timeout=5)",
        )
        assert res.returncode == 0
        accepted = procs.wait_json("tcp-accepted", 10)
        assert accepted["from"] == lan_a.ip(1), "B's connection was not masqueraded"

        # ...the relay listens on the router's LAN A address, the worker on B reserves there...
        relay_home = tmp_path / "relay"
        relay_id = load_or_create(relay_home).peer_id
        relay_addr = f"/ip4/{lan_a.ip(1)}/tcp/4001/p2p/{relay_id}"
        procs.start(
            topology.router,
            "relay",
            "relay",
            "--home",
            str(relay_home),
            "--listen",
            f"/ip4/{lan_a.ip(1)}/tcp/4001",
        )
        procs.wait_json("relay", 30)
        procs.start(
            b0,
            "target",
            "target",
            "--home",
            str(tmp_path / "target"),
            "--listen",
            f"/ip4/{lan_b.ip(10)}/tcp/4001",
            "--relay-via",
            relay_addr,
        )
        target = procs.wait_json("target", 45)
        circuit = f"{relay_addr}/p2p-circuit/p2p/{target['peer_id']}"
        assert target["circuit_addrs"] == [circuit]
        direct = target["addrs"][0]
        assert direct.startswith(f"/ip4/{lan_b.ip(10)}/tcp/4001/")

        # ...and a dialer on A cannot reach the worker directly, only through the relay.
        dial = procs.start(
            a0,
            "dial",
            "dial",
            "--home",
            str(tmp_path / "dialer"),
            "--listen",
            f"/ip4/{lan_a.ip(10)}/tcp/4001",
            "--target",
            target["peer_id"],
            "--direct",
            direct,
            "--circuit",
            circuit,
        )
        dial.wait(timeout=90)
        assert dial.returncode == 0, procs.log("dial")
        result = procs.wait_json("dial", 1)
        print(json.dumps(result, indent=2))
        assert result["direct_tcp"] == "timeout", result
        assert result["direct_libp2p"] != "ok", result
        assert result["ok"] and result["relayed"], result
        assert result["connection_types"] == ["RELAYED"], result
    finally:
        procs.stop_all()
