"""Benchmarks of the panel, printed, not asserted: .venv/bin/python bench/bench_panel.py [--quick]

- time from a change to the page showing it, in headless Chromium (Playwright, Debian's
  chromium): a peer killed with kill -9 (from the viewing node logging "peer left", and from the
  kill, which adds the peer timeout), a job ending (from the requester's end time), a user light
  set on a peer (`rain light`: its record travels with the next heartbeat);
- the viewing node's CPU with one page open against the same node with none (the baseline of
  the same run), with 4 real peers, and with 1,000 simulated peers in its view (this script
  runs a real rain-node whose membership view holds 1,000 signed records, 1% of them changing
  each second, as a peer would see them after hellos; `--sim-peers N`), with the page's own
  figures: first view and delta sizes, the time to apply them, and how long the page takes to
  answer while they arrive.

Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
from playwright.sync_api import Browser, Page, sync_playwright

from tests.e2e.nodes import LOOPBACK, Cluster, NodeProcess, all_see_each_other, wait_until
from tests.e2e.test_panel_browser import CHROMIUM, CHROMIUM_ARGS

PEER_TIMEOUT = 4.0
NODE = (
    "--listen", LOOPBACK, "--no-mdns", "--panel", "0",
    "--peer-timeout", str(PEER_TIMEOUT), "--heartbeat", "1",
)  # fmt: skip


def cpu_seconds(node: NodeProcess) -> float:
    assert node.proc is not None
    t = psutil.Process(node.proc.pid).cpu_times()
    return t.user + t.system


def cpu_share(node: NodeProcess, seconds: float) -> float:
    """Percent of one core the node used over `seconds` from now."""
    c0, t0 = cpu_seconds(node), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(node) - c0) / (time.monotonic() - t0)


def open_page(browser: Browser, node: NodeProcess) -> Page:
    # (bypass_csp: wait_for_function evaluates its string in the page, which the panel's CSP
    # forbids: right for the panel, in the way of a benchmark's probes.)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = ctx.new_page()
    page.goto(node.rain("panel").stdout.strip())
    page.wait_for_function("window.__rain && window.__rain.messages > 0", timeout=60_000)
    return page


def log_time(node: NodeProcess, needle: str) -> float | None:
    """The time of the last log line of the node that contains `needle`."""
    found = None
    for line in node.log_path.read_text(errors="replace").splitlines():
        if needle in line:
            stamp = line[:23]  # 2026-01-01 12:00:00,123
            found = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return found


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


def bench_latency(browser: Browser, cluster: Cluster, nodes: list[NodeProcess], reps: int) -> None:
    viewer, *peers = nodes
    page = open_page(browser, viewer)
    # A peer leaves.
    from_log, from_kill = [], []
    victim = peers[-1]
    for _ in range(reps):
        wait_until(lambda: all_see_each_other(nodes), 60, "all up")
        page.wait_for_function(
            f"window.__rain.view.nodes[{victim.peer_id!r}]?.up === true", timeout=30_000
        )
        killed = time.time()
        victim.kill9()
        page.wait_for_function(
            f"window.__rain.view.nodes[{victim.peer_id!r}]?.up === false", timeout=30_000
        )
        shown = page.evaluate(
            f"window.__rain.events.filter(e => e.peer === {victim.peer_id!r} && !e.up).pop().at"
        )
        noticed = log_time(viewer, f"peer left: {victim.peer_id}")
        from_kill.append(shown - killed)
        if noticed is not None:
            from_log.append(shown - noticed)
        victim.start()
        victim.wait_ready()
    print(f"  a peer leaves: from the node noticing: {summary(from_log)}")
    print(
        f"  a peer leaves: from kill -9 (peer timeout {PEER_TIMEOUT:.0f} s): {summary(from_kill)}"
    )
    # A job ends.
    ended = []
    for _ in range(reps):
        job_id = viewer.rain("submit", "--", "sh", "-c", "sleep 0.5").stdout.strip()
        page.wait_for_function(
            f"window.__rain.view.jobs[{job_id!r}]?.state === 'done'", timeout=60_000
        )
        seen = page.evaluate(
            f"window.__rain.events.filter(e => e.job === {job_id!r} && e.state === 'done').pop().at"
        )
        until = page.evaluate(f"window.__rain.view.jobs[{job_id!r}].until")
        ended.append(seen - until)
    print(f"  a job ends: from its end on the requester: {summary(ended)}")
    # A user light on a peer.
    lit = []
    for i in range(reps):
        value = "on" if i % 2 == 0 else "off"
        start = time.time()
        peers[0].rain("light", "user1", value)
        page.wait_for_function(
            f"window.__rain.view.nodes[{peers[0].peer_id!r}]?.user1 === {value!r}",
            timeout=30_000,
            polling=20,
        )
        lit.append(time.time() - start)
    print(f"  rain light on a peer, to another node's page: {summary(lit)}")
    page.context.close()


def page_figures(page: Page) -> str:
    applied = page.evaluate("window.__rain.applied")
    whole = [a for a in applied if a["type"] == "view"]
    deltas = [a for a in applied if a["type"] == "delta"]
    answers = []
    for _ in range(20):
        t0 = time.perf_counter()
        page.evaluate("1")
        answers.append(1000 * (time.perf_counter() - t0))
        time.sleep(0.1)
    parts = []
    if whole:
        parts.append(f"first view {whole[0]['bytes'] / 1024:.0f} KiB in {whole[0]['ms']:.0f} ms")
    if deltas:
        parts.append(
            f"deltas median {statistics.median(d['bytes'] for d in deltas) / 1024:.1f} KiB, "
            f"applied in median {statistics.median(d['ms'] for d in deltas):.1f} ms "
            f"(max {max(d['ms'] for d in deltas):.1f})"
        )
    parts.append(
        f"page answers in median {statistics.median(answers):.1f} ms (max {max(answers):.1f})"
    )
    return "; ".join(parts)


def bench_cpu(browser: Browser, node: NodeProcess, label: str, seconds: float) -> None:
    time.sleep(2)
    idle = cpu_share(node, seconds)
    page = open_page(browser, node)
    time.sleep(3)  # (the stack's import, the first view)
    watched = cpu_share(node, seconds)
    print(
        f"  {label}: node CPU {idle:.2f}% of a core with no page, {watched:.2f}% with one page "
        f"open (+{watched - idle:.2f}%, over {seconds:.0f} s)"
    )
    print(f"  {label}: {page_figures(page)}")
    page.context.close()


# ----- a node with simulated peers (this script, run as a node: --sim-peers N) --------------


def sim_node(argv: list[str]) -> None:
    """A real rain-node (the daemon, its panel) whose membership view also holds N simulated
    peers: signed records, refreshed as heartbeats would, 1% of them changing each second."""
    import trio

    from node.daemon import Node, NodeConfig
    from node.panel.server import PanelConfig
    from rainnet import records
    from rainnet.identity import Identity
    from rainnet.network import NetworkConfig

    p = argparse.ArgumentParser()
    p.add_argument("--home", required=True)
    p.add_argument("--sim-peers", type=int, required=True)
    args = p.parse_args(argv)
    config = NodeConfig(
        home=Path(args.home),
        network=NetworkConfig(listen=("/ip4/127.0.0.1/tcp/0",), mdns=False),
        sandbox="none",
        panel=PanelConfig(port=0, port_given=True),
    )
    rng = random.Random(7)
    states = ("idle", "idle", "busy", "owner")
    lights = ("off", "off", "on", "blink")

    def record(me: Identity, seq: int) -> records.NodeRecord:
        return records.NodeRecord(
            peer_id=me.peer_id,
            addrs=(),
            cpus=rng.choice((2, 4, 8, 16)),
            memory=rng.choice((4, 8, 16, 32)) << 30,
            gpus=rng.choice((0, 0, 0, 1)),
            backends=("native",),
            version="0.1.0",
            state=rng.choice(states),
            seq=seq,
            issued_at=time.time(),
            ttl=300.0,
            user1=rng.choice(lights),
            user2=rng.choice(lights),
            load=rng.randrange(9),
        )

    async def simulate(node: Node) -> None:
        membership = node.network.membership
        ids = [Identity.generate() for _ in range(args.sim_peers)]
        recs = {me.peer_id: record(me, 1) for me in ids}
        while True:
            now = time.time()
            for me in rng.sample(ids, max(1, len(ids) // 100)):
                recs[me.peer_id] = record(me, recs[me.peer_id].seq + 1)
            for peer_id, rec in recs.items():
                membership.contacted(peer_id, now, rec, rtt=0.001)
            await trio.sleep(1)

    async def main() -> None:
        node = Node(config)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)
            await node.ready.wait()
            nursery.start_soon(simulate, node)

    trio.run(main)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions, shorter windows")
    p.add_argument("--peers", type=int, default=1000, help="simulated peers (1000)")
    args = p.parse_args()
    reps, window = (3, 10.0) if args.quick else (6, 30.0)
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        cluster = Cluster(Path(tmp))
        try:
            viewer = cluster.start(*NODE, "--lend", "never", name="viewer")
            viewer.wait_ready()
            peers = [
                cluster.start(*NODE, "--lend", "always", "--bootstrap", viewer.addr)
                for _ in range(4)
            ]
            for node in peers:
                node.wait_ready()
            nodes = [viewer, *peers]
            wait_until(lambda: all_see_each_other(nodes), 60, "the network forms")
            print("time from a change to the page (4 peers, one page open):")
            bench_latency(browser, cluster, nodes, reps)
            print("node CPU while one page is open:")
            bench_cpu(browser, viewer, "4 peers", window)
            cluster.stop_all()
            sim = cluster.start("--sim-peers", str(args.peers), name="sim", module=SELF)
            sim.wait_ready(60)
            wait_until(lambda: len(sim.peers()) >= args.peers, 60, "the simulated peers")
            bench_cpu(browser, sim, f"{args.peers} simulated peers", window)
            view = json.loads(sim.rain("status", "--json").stdout)
            print(f"  ({view['peers']} peers in the view)")
        finally:
            cluster.stop_all()
            browser.close()


SELF = "bench.bench_panel"

if __name__ == "__main__":
    if "--sim-peers" in sys.argv:
        sim_node(sys.argv[1:])
    else:
        main()
