"""rainnet.host.open_stream: multistream-select negotiated lazily, against py-libp2p listeners."""

from __future__ import annotations

from typing import Any

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from rainnet.host import ProtocolNotSupported, build_host, open_stream
from rainnet.identity import Identity
from rainnet.streams import guarded_handler

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
ECHO = "/rain/test/echo/1.0.0"


async def echo(stream: Any) -> None:
    with trio.fail_after(10):
        data = await stream.read(65536)
    await stream.write(data)
    await stream.close()


async def connected_pair(nursery: trio.Nursery) -> tuple[Any, Any]:
    """A listener serving ECHO and a dialer connected to it, both running in `nursery`."""
    hosts = [build_host(Identity.generate()) for _ in range(2)]
    hosts[0].set_stream_handler(ECHO, guarded_handler("echo", echo))
    ready = [trio.Event(), trio.Event()]

    async def run(host: Any, started: trio.Event) -> None:
        async with host.run([LOOPBACK]):
            started.set()
            await trio.sleep_forever()

    for host, started in zip(hosts, ready, strict=True):
        nursery.start_soon(run, host, started)
        await started.wait()
    listener, dialer = hosts
    await dialer.connect(info_from_p2p_addr(listener.get_addrs()[0]))
    return listener, dialer


def test_our_first_message_goes_out_with_the_protocol_and_the_echo_is_checked() -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                listener, dialer = await connected_pair(nursery)
                stream = await open_stream(dialer, listener.get_id(), ECHO)
                await stream.write(b"hello")  # before the listener has answered anything
                got = b""
                while len(got) < 5:
                    got += await stream.read(64)
                assert got == b"hello"  # the multistream echo was taken off in front
                assert stream.get_protocol() == ECHO

                refused = await open_stream(dialer, listener.get_id(), "/rain/test/none/1.0.0")
                with pytest.raises(ProtocolNotSupported):
                    await refused.read(64)
                await refused.reset()
                nursery.cancel_scope.cancel()

    trio.run(main)
