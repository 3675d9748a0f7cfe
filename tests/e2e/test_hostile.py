"""A hostile or broken peer cannot take a node down: plaintext and secio dialers are refused, and
fuzzed, oversized or unexpected messages on every /rain/ protocol only close that stream."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import msgpack
import multiaddr
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.secio import transport as secio

from rainnet import jobproto, protocols, wire
from rainnet.host import build_host
from rainnet.identity import Identity
from rainnet.ledgerproto import LEDGER
from tests.e2e.nodes import LOOPBACK, Cluster, NodeProcess
from tests.e2e.raw_peer import hello_round

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

RAIN_PROTOCOLS = [protocols.HELLO, protocols.HEARTBEAT, LEDGER, jobproto.JOB, jobproto.RESULT]


class TrioPortal:
    """A trio loop on a thread, running one libp2p host, that sync test code can call into."""

    def __init__(self, host_factory: Callable[[], Any]) -> None:
        self.host = host_factory()
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("client host did not start")

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with self.host.run([multiaddr.Multiaddr(LOOPBACK)]):
            self._ready.set()
            await self._stop.wait()

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def close(self) -> None:
        if self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    # Hostile strangers of the open network: the target is in it too.
    cluster = Cluster(tmp_path_factory.mktemp("hostile"), open_network=True)
    node = cluster.start("--listen", LOOPBACK, "--no-mdns")
    node.wait_ready()
    yield node
    cluster.stop_all()


@pytest.fixture(scope="module")
def client() -> Iterator[TrioPortal]:
    portal = TrioPortal(lambda: build_host(Identity.generate()))
    yield portal
    portal.close()


def _dial_with(sec_opt: dict[Any, Any], addr: str) -> bool:
    """True if a host offering only `sec_opt` manages to connect to `addr`."""

    async def attempt() -> bool:
        key_pair = create_new_key_pair()
        host = new_host(key_pair=key_pair, sec_opt=sec_opt)
        async with host.run([multiaddr.Multiaddr(LOOPBACK)]):
            with trio.move_on_after(10):
                try:
                    await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
                    return True
                except Exception:
                    return False
        return False

    return trio.run(attempt)


def test_plaintext_only_dialer_is_refused(target: NodeProcess) -> None:
    insecure = {PLAINTEXT_PROTOCOL_ID: InsecureTransport(create_new_key_pair())}
    assert not _dial_with(insecure, target.addr)
    target.rain("status")


def test_secio_only_dialer_is_refused(target: NodeProcess) -> None:
    assert not _dial_with({secio.ID: secio.Transport(create_new_key_pair())}, target.addr)
    target.rain("status")


async def _send_raw(portal: TrioPortal, addr: str, proto: str, payload: bytes) -> None:
    host = portal.host
    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    with trio.move_on_after(5):
        try:
            await host.connect(info)
            stream = await host.new_stream(info.peer_id, [proto])
            await stream.write(payload)
            # Give the node time to read and react; it closes or resets the stream.
            with trio.move_on_after(0.5):
                while await stream.read(65536):
                    pass
            await stream.reset()
        except Exception:
            pass  # a reset from the node is the expected outcome


def _frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return wire.encode_uvarint(len(body)) + body


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
typed_maps = st.fixed_dictionaries(
    {
        "t": st.sampled_from([*wire._REGISTRY, "x"]),
        "v": st.integers(0, 2),
    },
    # Any field name any message has, with values of any shape.
    optional={
        name: msgpack_values
        for cls in wire._REGISTRY.values()
        # Every registered message is a dataclass (@wire.message checks), which type[Message]
        # cannot say.
        for name in cast("type[DataclassInstance]", cls).__dataclass_fields__
    },
)
payloads = st.one_of(
    st.binary(max_size=300),
    msgpack_values.map(_frame),
    typed_maps.map(_frame),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(proto=st.sampled_from(RAIN_PROTOCOLS), payload=payloads)
def test_fuzzed_messages_leave_the_node_serving(
    target: NodeProcess, client: TrioPortal, proto: str, payload: bytes
) -> None:
    client.run(_send_raw, client, target.addr, proto, payload)
    assert target.proc is not None and target.proc.poll() is None


@pytest.mark.parametrize("proto", RAIN_PROTOCOLS)
def test_oversized_messages_close_the_stream_not_the_node(
    target: NodeProcess, client: TrioPortal, proto: str
) -> None:
    huge_prefix = wire.encode_uvarint(1 << 30) + b"\x00" * 1000
    client.run(_send_raw, client, target.addr, proto, huge_prefix)
    over_cap = _frame({"t": "ping", "v": 1, "nonce": 1, "record_seq": 1, "pad": b"x" * 300_000})
    client.run(_send_raw, client, target.addr, proto, over_cap)
    assert target.proc is not None and target.proc.poll() is None
    assert "over the cap" in target.log()


def test_node_still_answers_a_proper_peer_after_abuse(
    target: NodeProcess, client: TrioPortal
) -> None:
    """After everything above, a well-formed hello from the same client still works."""
    me = Identity.generate()

    async def hello() -> str:
        # A fresh, well-behaved peer: its own host and identity.
        host = build_host(me)
        async with host.run([multiaddr.Multiaddr(LOOPBACK)]):
            info = info_from_p2p_addr(multiaddr.Multiaddr(target.addr))
            with trio.fail_after(10):
                await host.connect(info)
                return await hello_round(host, me, info.peer_id)

    assert trio.run(hello) == target.peer_id
    assert ID.from_base58(target.peer_id)
    target.rain("status")


def test_a_job_id_that_is_a_path_is_declined(target: NodeProcess, client: TrioPortal) -> None:
    """The job id names directories on the worker: `..` and friends are refused up front."""
    from rainnet.streams import FramedStream
    from sandbox import JobSpec

    spec = msgpack.packb(JobSpec.create(["true"]).to_wire(), use_bin_type=True)

    async def offer(job_id: str) -> wire.Message:
        info = info_from_p2p_addr(multiaddr.Multiaddr(target.addr))
        with trio.fail_after(30):
            await client.host.connect(info)
            stream = await client.host.new_stream(info.peer_id, [jobproto.JOB])
            fs = FramedStream(stream, jobproto.TO_REQUESTER, jobproto.JOB_MAX_FRAME)
            await fs.send(jobproto.Offer(job_id, 1, spec, (), 15.0, b""))
            reply = await fs.receive(25)
            await fs.reset()
            return reply

    for job_id in ("..", "../../etc", "/tmp/x", "a/b"):
        reply = client.run(offer, job_id)
        assert isinstance(reply, jobproto.Decline), reply
        assert "job_id" in reply.reason
    target.rain("status")


def test_hints_do_not_make_a_node_dial_an_address_the_attacker_chose(cluster: Cluster) -> None:
    """Hole 10 of issue 14, dial reflection: hellos whose hints name made-up peers, all at an
    address the attacker chose (a socket this test listens on), made a node dial it over and
    over (135 connections within 90 s). Now that address gets at most its dial budget."""
    from rainnet.hints import DIALS_PER_ADDRESS

    node = cluster.start("--listen", LOOPBACK, "--no-mdns", "--lend", "never")
    node.wait_ready()
    victim = socket.socket()
    victim.bind(("127.0.0.1", 0))
    victim.listen(128)
    victim.settimeout(0.2)
    port = victim.getsockname()[1]
    accepted = 0
    me = Identity.generate()

    async def attack() -> None:
        host = build_host(me, cluster.pool)  # an insider: a pool member turned hostile
        async with host.run([multiaddr.Multiaddr(LOOPBACK)]):
            info = info_from_p2p_addr(multiaddr.Multiaddr(node.addr))
            with trio.fail_after(20):
                await host.connect(info)
                for _ in range(3):  # three hellos, 16 made-up peers each, one address
                    hints = tuple(
                        protocols.PeerHint(
                            Identity.generate().peer_id, (f"/ip4/127.0.0.1/tcp/{port}",)
                        )
                        for _ in range(protocols.MAX_HINTS)
                    )
                    assert await hello_round(host, me, info.peer_id, hints) == node.peer_id

    try:
        trio.run(attack)
        # Count the node's dials at the address for a while (it dials a candidate at once, then
        # backs off from 0.5 s: unbounded, this passed the budget within a second).
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and accepted <= DIALS_PER_ADDRESS:
            try:
                conn, _ = victim.accept()
            except TimeoutError:
                continue
            conn.close()
            accepted += 1
    finally:
        victim.close()
    assert accepted <= DIALS_PER_ADDRESS, f"{accepted} dials at the attacker's address"
    assert node.proc is not None and node.proc.poll() is None
