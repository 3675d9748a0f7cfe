"""rainnet.host.open_stream: multistream-select negotiated lazily, against py-libp2p listeners."""

from __future__ import annotations

import contextlib
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import info_from_p2p_addr

from rainnet.host import build_host, open_stream
from rainnet.identity import Identity
from rainnet.streams import ProtocolNotSupported, guarded_handler

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


async def sink(stream: Any) -> None:
    """Reads everything, then says how much."""
    total = 0
    with trio.fail_after(30):
        with contextlib.suppress(StreamEOF):  # py-libp2p's end of stream
            while data := await stream.read(65536):
                total += len(data)
    await stream.write(str(total).encode())
    await stream.close()


def test_credit_goes_back_by_half_windows_and_large_transfers_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    updates: list[int] = []
    original = YamuxStream.send_window_update

    async def counted(self: Any, increment: int, skip_lock: bool = False) -> None:
        updates.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counted)

    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                listener, dialer = await connected_pair(nursery)
                listener.set_stream_handler("/rain/test/sink/1.0.0", guarded_handler("sink", sink))
                for _ in range(5):  # small exchanges: no window update frames at all
                    stream = await open_stream(dialer, listener.get_id(), ECHO)
                    await stream.write(b"x" * 300)
                    assert len(await stream.read(64 * 1024)) == 300
                    await stream.close()
                assert updates == []
                size = 24 << 20  # ~100 windows of 256 KiB: flows only if credit comes back
                stream = await open_stream(dialer, listener.get_id(), "/rain/test/sink/1.0.0")
                for _ in range(size // (1 << 20)):
                    await stream.write(b"y" * (1 << 20))
                await stream.close()
                assert await stream.read(64) == str(size).encode()
                # Half a window at a time, the window doubling each time: few updates.
                assert 1 <= len(updates) <= 16, updates
                assert all(u >= 128 << 10 for u in updates)
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_two_writers_on_one_stream_never_interleave_their_messages() -> None:
    """A job's output (messages larger than the peer's yamux window, written in several pieces)
    and its progress reports go out from two tasks on one stream, to a reader slow enough that
    the window fills: every message must arrive whole (7 of 8 busy job streams were corrupted)."""
    from rainnet import jobproto
    from rainnet.streams import FramedStream, StreamGone

    received: list[str] = []
    failure: list[BaseException] = []
    finished = trio.Event()

    async def slow_reader(stream: Any) -> None:
        fs = FramedStream(stream, (jobproto.Output, jobproto.Progress), jobproto.JOB_MAX_FRAME)
        try:
            while True:
                received.append((await fs.receive(20)).TYPE)
                await trio.sleep(0.002)
        except StreamGone:
            pass
        except BaseException as exc:
            failure.append(exc)
        finally:
            finished.set()

    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                listener, dialer = await connected_pair(nursery)
                listener.set_stream_handler(ECHO, guarded_handler("reader", slow_reader))
                raw = await open_stream(dialer, listener.get_id(), ECHO)
                fs = FramedStream(raw, (), jobproto.JOB_MAX_FRAME)

                async def output() -> None:
                    for _ in range(40):
                        await fs.send(jobproto.Output("stdout", b"x" * jobproto.CHUNK), 30)

                async def progress() -> None:
                    for _ in range(300):
                        await fs.send(jobproto.Progress("running", 1.0, 1.0), 30)
                        await trio.sleep(0.005)

                async with trio.open_nursery() as writers:
                    writers.start_soon(output)
                    writers.start_soon(progress)
                await fs.close()
                await finished.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert failure == []
    assert received.count("job-output") == 40 and received.count("job-progress") == 300
