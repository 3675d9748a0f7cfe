"""One process of the relay tests, run inside a network namespace (or on loopback for `bench`).

    python -m tests.e2e.relay_probe relay  --home H --listen MA --out DIR
    python -m tests.e2e.relay_probe target --home H --listen MA --relay-via MA --out DIR
    python -m tests.e2e.relay_probe dial   --home H --listen MA --target ID --direct MA
                                       --circuit MA --out DIR
    python -m tests.e2e.relay_probe tcp-listen --port N --out DIR
    python -m tests.e2e.relay_probe bench

`relay`, `target` and `tcp-listen` run until killed and write `DIR/<mode>.json` once they are
ready (atomically, so a reader never sees half a file); `dial` writes `DIR/dial.json` and exits;
`bench` prints loopback measurements (relayed vs direct) as JSON. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

ECHO = "/rain/test/echo/1.0.0"


def write_json(out: Path, name: str, data: dict[str, Any]) -> None:
    tmp = out / f".{name}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(out / f"{name}.json")


async def echo(stream: Any) -> None:
    """Echo every chunk back until the writer closes (bounded: 30 s idle ends it)."""
    while True:
        try:
            with trio.fail_after(30):
                data = await stream.read(65536)
        except Exception:  # EOF arrives as StreamEOF, not b""
            break
        if not data:
            break
        await stream.write(data)
    await stream.close()


def build(home: Path | None) -> Any:
    from rainnet.host import build_host
    from rainnet.identity import Identity, load_or_create

    me = load_or_create(home) if home is not None else Identity.generate()
    host = build_host(me)
    from rainnet.streams import guarded_handler

    host.set_stream_handler(ECHO, guarded_handler("echo", echo))
    return host


def listen_addrs(args: argparse.Namespace) -> list[Any]:
    import multiaddr

    return [multiaddr.Multiaddr(a) for a in args.listen]


async def run_relay(args: argparse.Namespace) -> None:
    from rainnet.relay import Relay

    host = build(args.home)
    relay = Relay(host, serve=True)
    relay.install()
    async with host.run(listen_addrs(args)):
        write_json(
            args.out,
            "relay",
            {"peer_id": str(host.get_id()), "addrs": [str(a) for a in host.get_addrs()]},
        )
        await trio.sleep_forever()


async def run_target(args: argparse.Namespace) -> None:
    from rainnet.relay import Relay

    host = build(args.home)
    relay = Relay(host, via=args.relay_via)
    relay.install()
    async with host.run(listen_addrs(args)), trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        circuits = await relay.wait_reserved(30)
        write_json(
            args.out,
            "target",
            {
                "peer_id": str(host.get_id()),
                "addrs": [str(a) for a in host.get_addrs()],
                "circuit_addrs": list(circuits),
            },
        )
        await trio.sleep_forever()


def tcp_connect(addr: str, timeout: float) -> str:
    """'ok', 'timeout' or the error: a plain TCP connect to /ip4/<ip>/tcp/<port>[/...]."""
    parts = addr.split("/")
    try:
        with socket.create_connection((parts[2], int(parts[4])), timeout=timeout):
            return "ok"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error: {exc}"


async def round_trips(host: Any, peer: Any, count: int) -> dict[str, float]:
    """Median milliseconds: one message on a long-lived stream, and a new stream per message."""
    one_stream: list[float] = []
    with trio.fail_after(30):
        stream = await host.new_stream(peer, [ECHO])
        for i in range(count):
            t0 = time.perf_counter()
            payload = b"ping %d" % i
            await stream.write(payload)
            got = b""
            while len(got) < len(payload):
                got += await stream.read(65536)
            assert got == payload, got
            one_stream.append((time.perf_counter() - t0) * 1000)
        await stream.close()
        per_stream: list[float] = []
        for _ in range(max(3, count // 4)):
            t0 = time.perf_counter()
            stream = await host.new_stream(peer, [ECHO])
            await stream.write(b"x")
            assert await stream.read(65536) == b"x"
            await stream.close()
            per_stream.append((time.perf_counter() - t0) * 1000)
    return {
        "rtt_stream_ms": statistics.median(one_stream),
        "rtt_new_stream_ms": statistics.median(per_stream),
    }


async def run_dial(args: argparse.Namespace) -> None:
    from libp2p.connection_types import ConnectionType
    from libp2p.peer.id import ID

    from rainnet import host as rhost
    from rainnet import relay

    result: dict[str, Any] = {}
    # 1. Plain TCP to the target's own address: the NAT must swallow it.
    result["direct_tcp"] = await trio.to_thread.run_sync(tcp_connect, args.direct, 3.0)
    host = build(args.home)
    relay.Relay(host).install()
    target = ID.from_base58(args.target)
    async with host.run(listen_addrs(args)):
        # 2. A libp2p dial to the same address.
        with trio.move_on_after(6):
            try:
                await host.connect(rhost.peer_info(args.target, [args.direct]))
                result["direct_libp2p"] = "ok"
            except Exception as exc:
                result["direct_libp2p"] = f"error: {type(exc).__name__}"
        result.setdefault("direct_libp2p", "timeout")
        # 3. Through the relay: the target's advertised addresses, direct and circuit together,
        # exactly as a node would use them from a signed record.
        t0 = time.perf_counter()
        await relay.connect(host, args.target, [args.direct, args.circuit], timeout=15)
        result["connect_ms"] = (time.perf_counter() - t0) * 1000
        conns = host.get_network().get_connections(target)
        result["connection_types"] = [c.get_connection_type().name for c in conns]
        result["relayed"] = all(c.get_connection_type() == ConnectionType.RELAYED for c in conns)
        result.update(await round_trips(host, target, 20))
        result["ok"] = True
    write_json(args.out, "dial", result)


async def run_tcp_listen(args: argparse.Namespace) -> None:
    """Accept one plain TCP connection (to show the NAT lets connections out)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", args.port))
        srv.listen(1)
        write_json(args.out, "tcp-listen", {"port": args.port})
        tsock = trio.socket.from_stdlib_socket(srv.dup())
        with trio.fail_after(60):
            conn, peer = await tsock.accept()
        conn.close()
        write_json(args.out, "tcp-accepted", {"from": peer[0]})
        await trio.sleep_forever()


async def run_bench(args: argparse.Namespace) -> None:
    """Relayed vs direct on loopback: R relays, T reserves on R and also listens, D dials."""
    import multiaddr
    from libp2p.peer.peerinfo import PeerInfo

    from rainnet.relay import Relay, connect

    lo = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    r, t, d1, d2 = (build(None) for _ in range(4))
    r_relay = Relay(r, serve=True)
    r_relay.install()
    out: dict[str, Any] = {"runs": args.runs}
    dials: dict[str, list[float]] = {"relayed": [], "direct": []}
    rtts: dict[str, list[dict[str, float]]] = {"relayed": [], "direct": []}
    async with r.run(lo), t.run(lo), d1.run(lo), d2.run(lo), trio.open_nursery() as nursery:
        t_relay = Relay(t, via=[str(r.get_addrs()[0])])
        t_relay.install()
        await nursery.start(t_relay.run)
        circuits = await t_relay.wait_reserved(10)
        t_id = str(t.get_id())
        await d1.connect(PeerInfo(r.get_id(), [r.get_addrs()[0]]))  # relay already connected
        for _ in range(args.runs):
            t0 = time.perf_counter()
            await connect(d1, t_id, list(circuits))
            dials["relayed"].append((time.perf_counter() - t0) * 1000)
            rtts["relayed"].append(await round_trips(d1, t.get_id(), 40))
            await d1.get_network().close_peer(t.get_id())
            t0 = time.perf_counter()
            await connect(d2, t_id, [str(a) for a in t.get_addrs()])
            dials["direct"].append((time.perf_counter() - t0) * 1000)
            rtts["direct"].append(await round_trips(d2, t.get_id(), 40))
            await d2.get_network().close_peer(t.get_id())
            await trio.sleep(0.2)
        for kind in ("relayed", "direct"):
            out[kind] = {
                "dial_ms": statistics.median(dials[kind]),
                "rtt_stream_ms": statistics.median(x["rtt_stream_ms"] for x in rtts[kind]),
                "rtt_new_stream_ms": statistics.median(x["rtt_new_stream_ms"] for x in rtts[kind]),
            }
        nursery.cancel_scope.cancel()
    print(json.dumps(out, indent=2))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["relay", "target", "dial", "tcp-listen", "bench"])
    p.add_argument("--home", type=Path)
    p.add_argument("--listen", action="append", default=[])
    p.add_argument("--relay-via", action="append", default=[])
    p.add_argument("--target")
    p.add_argument("--direct")
    p.add_argument("--circuit")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args()
    logging.basicConfig(level=os.environ.get("RAIN_LOG", "WARNING").upper(), stream=sys.stderr)
    import libp2p  # noqa: F401 - importing it resets its logger; quiet it afterwards

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    runner = {
        "relay": run_relay,
        "target": run_target,
        "dial": run_dial,
        "tcp-listen": run_tcp_listen,
        "bench": run_bench,
    }[args.mode]
    trio.run(runner, args)


if __name__ == "__main__":
    main()
