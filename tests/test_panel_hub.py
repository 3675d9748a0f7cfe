"""The live hub in memory (a mock clock): nothing without listeners, a whole view then deltas,
a new listener served at once, a slow one dropped, a full hub refused."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from node.panel import view as views
from node.panel.hub import Hub, HubFull
from tests.test_panel_view import peer, peer_id, snapshot


def _run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0.01))


class Network:
    """A view source whose peers a test changes; counts the views built."""

    def __init__(self, peers: int) -> None:
        self.peers = [peer(i) for i in range(peers)]
        self.built = 0

    async def build(self) -> views.View:
        self.built += 1
        return views.build(snapshot(peers=tuple(self.peers)))


async def _next(messages: trio.MemoryReceiveChannel[str], within: float = 5) -> dict[str, Any]:
    with trio.fail_after(within):
        message: dict[str, Any] = json.loads(await messages.receive())
    return message


def test_no_listener_no_view() -> None:
    async def main() -> None:
        net = Network(3)
        hub = Hub(net.build)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            await trio.sleep(60)
            assert net.built == 0
            async with hub.listen() as messages:
                first = await _next(messages)
                assert first["type"] == "view" and len(first["view"]["nodes"]) == 4
                assert trio.current_time() < 61  # served at once, not at the next tick
            await trio.sleep(60)
            built = net.built
            await trio.sleep(60)
            assert net.built == built  # (stopped again)
            nursery.cancel_scope.cancel()

    _run(main)


def test_a_whole_view_then_the_changes_each_second() -> None:
    async def main() -> None:
        net = Network(100)
        hub = Hub(net.build)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            async with hub.listen() as messages:
                first = await _next(messages)
                quiet = await _next(messages)
                assert quiet["type"] == "delta" and quiet["changes"] == {}
                assert quiet["seq"] == first["seq"] + 1
                net.peers[7] = peer(7, state="busy", user2="on")
                del net.peers[9]
                change = await _next(messages)
                busy = views.build(snapshot(peers=(net.peers[7],)))[views.Section.NODES]
                assert change["changes"]["nodes"] == {
                    peer_id(7): json.loads(views.encode(busy[peer_id(7)])),
                    peer_id(9): None,
                }
                # A second page joins: it gets a whole view, the first keeps its deltas.
                async with hub.listen() as second:
                    whole = await _next(second)
                    assert whole["type"] == "view" and peer_id(9) not in whole["view"]["nodes"]
                    assert (await _next(messages))["type"] == "delta"
            nursery.cancel_scope.cancel()

    _run(main)


def test_a_listener_that_falls_behind_is_dropped_and_comes_back_whole() -> None:
    async def main() -> None:
        net = Network(2)
        hub = Hub(net.build)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            async with hub.listen() as stalled:
                await trio.sleep(30)  # reads nothing
                assert hub.dropped == 1 and hub.listeners == 0
                received = [json.loads(m) async for m in stalled]  # what was queued, then the end
                assert 0 < len(received) < 30
            async with hub.listen() as again:
                assert (await _next(again))["type"] == "view"
            nursery.cancel_scope.cancel()

    _run(main)


def test_a_full_hub_refuses_another_page() -> None:
    async def main() -> None:
        hub = Hub(Network(1).build, max_listeners=1)
        async with hub.listen():
            with pytest.raises(HubFull):
                async with hub.listen():
                    pass
        async with hub.listen():
            pass  # room again

    _run(main)


def test_a_build_that_hangs_is_skipped() -> None:
    async def main() -> None:
        calls = 0
        net = Network(1)

        async def build() -> views.View:
            nonlocal calls
            calls += 1
            if calls == 1:
                await trio.sleep_forever()
            return await net.build()

        hub = Hub(build)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            async with hub.listen() as messages:
                assert (await _next(messages, within=20))["type"] == "view"
                assert calls == 2
            nursery.cancel_scope.cancel()

    _run(main)
