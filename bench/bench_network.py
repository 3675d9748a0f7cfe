"""Benchmarks of the peer network, printed, not asserted: .venv/bin/python bench/bench_network.py

- discovery: time from a node's start until every other node lists it, by mDNS and by bootstrap
  (median of several joins), against the goal of 2 s (a known libp2p-based peer took ~30 s);
- convergence: time until 20 nodes on one bootstrap all list one another;
- DHT: provider lookup latency among 50 DHT nodes in one process (median of 20 lookups);
- `rain status` wall time, against bare `python -c pass` (ratio of medians);
- an idle node's CPU share and resident memory over 20 s, with 4 peers (goal < 1% and < 150 MB).

Everything runs on 127.0.0.1. Pass --quick for fewer repetitions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.e2e.nodes import LOOPBACK, Cluster, NodeProcess, all_see_each_other, wait_until


def _sees(node: NodeProcess, peer_id: str) -> bool:
    return peer_id in node.peer_ids()


def bench_join(mode: str, joins: int) -> list[float]:
    """Seconds from starting one more node until all existing ones list it."""
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            extra = ["--no-mdns"] if mode == "bootstrap" else []
            first = cluster.start("--listen", LOOPBACK, *extra)
            first.wait_ready()
            boot = ["--bootstrap", first.addr] if mode == "bootstrap" else []
            base = [first] + [cluster.start("--listen", LOOPBACK, *extra, *boot) for _ in range(3)]
            for n in base:
                n.wait_ready()
            wait_until(lambda: all_see_each_other(base), 60, "base cluster")
            times = []
            for _ in range(joins):
                started = time.monotonic()
                newcomer = cluster.start("--listen", LOOPBACK, *extra, *boot)
                newcomer.wait_ready()
                pid = newcomer.peer_id

                def joined(pid: str = pid) -> bool:
                    return all(_sees(n, pid) for n in base)

                wait_until(joined, 60, "join", 0.05)
                times.append(time.monotonic() - started)
                newcomer.stop()
            return times
        finally:
            cluster.stop_all()


def bench_convergence(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            first = cluster.start("--listen", LOOPBACK, "--no-mdns")
            first.wait_ready()
            started = time.monotonic()
            nodes = [first] + [
                cluster.start("--listen", LOOPBACK, "--no-mdns", "--bootstrap", first.addr)
                for _ in range(n - 1)
            ]
            for node in nodes:
                node.wait_ready(120)
            wait_until(lambda: all_see_each_other(nodes), 180, f"{n} nodes converge", 0.5)
            return time.monotonic() - started
        finally:
            cluster.stop_all()


def bench_dht(n: int, lookups: int) -> tuple[float, list[float], int]:
    """Settle time, provider lookup latencies and hits, for n DHT nodes in one process."""
    import logging

    import multiaddr
    import trio
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.tools.anyio_service import background_trio_service

    from rainnet.discovery import WORKERS_KEY
    from rainnet.host import build_dht, build_host
    from rainnet.identity import Identity

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    rng = random.Random(1)
    latencies: list[float] = []
    hits = 0
    settle = 0.0

    async def main() -> None:
        nonlocal hits, settle
        from contextlib import AsyncExitStack

        hosts = [build_host(Identity.generate()) for _ in range(n)]
        dhts = [build_dht(h) for h in hosts]
        async with AsyncExitStack() as stack:
            for h in hosts:
                await stack.enter_async_context(h.run([multiaddr.Multiaddr(LOOPBACK)]))
            for d in dhts:
                await stack.enter_async_context(background_trio_service(d))
            t0 = time.monotonic()
            # Each node knows a few others (as after bootstrap), not everyone.
            for i, h in enumerate(hosts):
                for j in rng.sample([k for k in range(n) if k != i], 4):
                    addr = f"{hosts[j].get_addrs()[0]}"
                    with trio.move_on_after(10):
                        await h.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
                        await dhts[i].add_peer(hosts[j].get_id(), skip_server_mode_check=True)
                        await dhts[j].add_peer(h.get_id(), skip_server_mode_check=True)
            providers = rng.sample(range(n), 10)
            for i in providers:
                with trio.move_on_after(30):
                    await dhts[i].provide(WORKERS_KEY)
            settle = time.monotonic() - t0
            from libp2p.kad_dht.kad_dht import _encode_key

            # Only nodes that hold no provider record themselves: their lookups cross the network
            # (py-libp2p answers from the local store first, in ~0 ms).
            key = _encode_key(WORKERS_KEY)
            remote = [
                k
                for k in range(n)
                if k not in providers and not dhts[k].provider_store.get_providers(key)
            ]
            print(f"dht: {n - len(remote)} of {n} nodes hold the provider records locally")
            for _ in range(lookups):
                i = rng.choice(remote)
                start = time.monotonic()
                with trio.move_on_after(30):
                    found = await dhts[i].find_providers(WORKERS_KEY, 10)
                    hits += bool(found)
                latencies.append(time.monotonic() - start)

    trio.run(main)
    return settle, latencies, hits


def bench_status(repeats: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            node = cluster.start("--listen", LOOPBACK, "--no-mdns")
            node.wait_ready()
            rain = [sys.executable, "-m", "node.cli", "--home", str(node.home), "status"]
            bare = [sys.executable, "-c", "pass"]
            status_t: list[float] = []
            bare_t: list[float] = []
            for _ in range(repeats):
                for cmd, out in ((rain, status_t), (bare, bare_t)):
                    start = time.monotonic()
                    subprocess.run(cmd, check=True, capture_output=True)
                    out.append(time.monotonic() - start)
            return statistics.median(status_t), statistics.median(bare_t)
        finally:
            cluster.stop_all()


def bench_idle(seconds: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            nodes = [cluster.start("--listen", LOOPBACK) for _ in range(5)]
            for n in nodes:
                n.wait_ready()
            wait_until(lambda: all_see_each_other(nodes), 60, "idle cluster")
            time.sleep(5)  # let start-up work (DHT publish, self-lookups) pass
            assert nodes[0].proc is not None
            proc = psutil.Process(nodes[0].proc.pid)
            before = proc.cpu_times()
            time.sleep(seconds)
            after = proc.cpu_times()
            cpu = (after.user + after.system - before.user - before.system) / seconds
            return cpu * 100, proc.memory_info().rss / 2**20
        finally:
            cluster.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    joins = 3 if args.quick else 7

    for mode in ("mdns", "bootstrap"):
        times = bench_join(mode, joins)
        med = statistics.median(times)
        print(
            f"discovery/{mode}: start -> listed by 4 peers: median {med:.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)}); "
            f"goal 2 s (ratio {med / 2:.2f}); known libp2p peer ~30 s (ratio {med / 30:.3f})"
        )

    conv = bench_convergence(20)
    print(f"convergence: 20 nodes (one bootstrap) all list one another {conv:.1f} s after start")

    settle, lat, hits = bench_dht(50, 10 if args.quick else 20)
    print(
        f"dht: 50 nodes in one process, wired + 10 providers in {settle:.1f} s; provider lookup "
        f"median {statistics.median(lat) * 1000:.0f} ms (max {max(lat) * 1000:.0f} ms), "
        f"{hits}/{len(lat)} found"
    )

    status, bare = bench_status(10 if args.quick else 20)
    print(
        f"rain status: median {status * 1000:.0f} ms; bare python -c pass {bare * 1000:.0f} ms "
        f"(ratio {status / bare:.2f}); goal well under 300 ms"
    )

    cpu, rss = bench_idle(10 if args.quick else 20)
    print(
        f"idle node (4 peers): {cpu:.2f}% of a core, {rss:.0f} MiB resident; "
        f"goal < 1% (ratio {cpu / 1:.2f}) and < 150 MB (ratio {rss / 143:.2f})"
    )


if __name__ == "__main__":
    main()
