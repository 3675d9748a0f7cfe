"""The panel's page in headless Chromium (Debian's, driven by Playwright; no browser download)
against a real 4-node network on 127.0.0.1: every node with its state, a node killed with
kill -9 dimmed within the peer timeout plus 2 s and lit again after its restart, an array's
progress bar moving to done and the credit plot and exchanges changing after it, a user light
set on one node shown on another's page, the page's own actions, and a page of another origin
refused. No test sees a JavaScript error.

RAIN_PANEL_SCREENSHOT=path.png also saves the page of the 4-node network (the README's).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, expect, sync_playwright

from tests.e2e.nodes import LOOPBACK, Cluster, NodeProcess, all_see_each_other, wait_until
from tests.e2e.test_panel import Panel, panel_of

CHROMIUM = "/usr/bin/chromium"
# Quiet and reliable headless Chromium as root here; without the background-networking ones it
# keeps trying to reach the outside. Each context is a fresh profile.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PEER_TIMEOUT = 4.0
NODE = (
    "--listen", LOOPBACK, "--no-mdns", "--panel", "0",
    "--peer-timeout", str(PEER_TIMEOUT), "--heartbeat", "1",
)  # fmt: skip


@dataclass
class Network:
    cluster: Cluster
    nodes: list[NodeProcess]

    def restart(self, node: NodeProcess) -> None:
        node.start()
        node.wait_ready()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    cluster = Cluster(tmp_path_factory.mktemp("panel"))
    try:
        first = cluster.start(*NODE, "--lend", "never", name="req")
        first.wait_ready()
        workers = [
            cluster.start(*NODE, "--lend", "always", "--bootstrap", first.addr, name=f"w{i}")
            for i in range(3)
        ]
        nodes = [first, *workers]
        for node in workers:
            node.wait_ready()
        wait_until(lambda: all_see_each_other(nodes), 60, "the network forms")
        wait_until(lambda: all(p["backends"] for p in first.peers()), 30, "workers' sandboxes")
        yield Network(cluster, nodes)
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/bootstrap --test installs it")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


OpenPage = Callable[[NodeProcess], Page]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """Open a node's panel (through the URL `rain panel` prints) in a fresh browser context;
    at the end, no page may have had a JavaScript error."""
    contexts = []
    errors: list[str] = []

    def open_(node: NodeProcess) -> Page:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(15_000)
        contexts.append(ctx)
        page = ctx.new_page()

        def page_error(error: Error) -> None:
            errors.append(f"{node.home.name}: {error}")

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                errors.append(f"{node.home.name}: {message.text}")

        page.on("pageerror", page_error)
        page.on("console", console)
        page.goto(node.rain("panel").stdout.strip())
        assert "token=" not in page.url  # the redirect dropped it from the address bar
        expect(page.locator("#conn")).to_have_attribute("data-conn", "live")
        return page

    yield open_
    for ctx in contexts:
        ctx.close()
    assert errors == []


def test_every_node_with_its_state_and_a_killed_one_dims_then_lights_again(
    network: Network, open_page: OpenPage
) -> None:
    first, *workers = network.nodes
    page = open_page(first)
    expect(page.locator(".node")).to_have_count(4)
    expect(page.locator('.node[data-up="true"]')).to_have_count(4)
    expect(page.locator(".node[data-me]")).to_have_attribute("data-peer", first.peer_id)
    for peer in first.peers():
        panel = page.locator(f'.node[data-peer="{peer["peer_id"]}"]')
        expect(panel.locator(".state")).to_have_text(peer["state"])
        expect(panel.locator('.led[data-light="net"]')).to_have_attribute("data-value", "direct")
    expect(page.locator(".node[data-me] .state")).to_have_text("owner")  # (lend never)

    victim = workers[-1]
    victim_panel = page.locator(f'.node[data-peer="{victim.peer_id}"]')
    victim.kill9()
    expect(victim_panel).to_have_attribute("data-up", "false", timeout=(PEER_TIMEOUT + 2) * 1000)
    expect(victim_panel.locator(".state")).to_have_text("left")
    expect(page.locator('.node[data-up="true"]')).to_have_count(3)
    network.restart(victim)
    expect(victim_panel).to_have_attribute("data-up", "true", timeout=30_000)
    expect(page.locator('.node[data-up="true"]')).to_have_count(4)


def test_an_array_moves_to_done_and_the_credit_follows(
    network: Network, open_page: OpenPage, tmp_path: Path
) -> None:
    first = network.nodes[0]
    wait_until(lambda: all_see_each_other(network.nodes), 60, "the network is whole")
    page = open_page(first)
    plot_before = page.inner_html("#plot")
    exchanges_before = page.locator("#exchanges tbody tr").count()
    n = 16
    array = first.rain(
        "submit", "--array", f"0-{n - 1}", "--", "sh", "-c", "sleep 1.5", timeout=60
    ).stdout.strip()
    row = page.locator(f'#jobs tr[data-job="{array}"]')
    expect(row).to_have_attribute("data-kind", "array")
    expect(row.locator(".cmd")).to_contain_text(f"[{n}] sh -c sleep 1.5")
    seen: list[float] = []
    deadline = time.monotonic() + 120
    while row.get_attribute("data-state") != "done":
        assert time.monotonic() < deadline, f"the array did not end: {seen}"
        progress = float(row.locator(".progress").get_attribute("data-progress") or 0)
        if not seen or progress != seen[-1]:
            seen.append(progress)
        time.sleep(0.1)
    expect(row.locator(".progress")).to_have_attribute("data-progress", "1")
    expect(row.locator(".progress-text")).to_have_text(f"{n}/{n}")
    assert seen == sorted(seen) and any(0 < p < 1 for p in seen), seen  # it moved
    # The exchanges that paid for it, and the plot drawn from them.
    expect(page.locator("#exchanges tbody tr")).not_to_have_count(exchanges_before)
    wait_until(lambda: page.inner_html("#plot") != plot_before, 10, "the plot changes")
    assert page.locator('#plot polyline[data-series="balance"]').count() == 1
    expect(page.locator("#credit-spent")).not_to_have_text("0.00")
    page.screenshot(path=str(tmp_path / "panel.png"), full_page=True)
    if os.environ.get("RAIN_PANEL_SCREENSHOT"):  # the README's, with a user light or two on
        lit = network.nodes[1:3]
        for node, light in zip(lit, ("user1", "user2"), strict=True):
            node.rain("light", light, "on")
        for node, light in zip(lit, ("user1", "user2"), strict=True):
            led = page.locator(f'.node[data-peer="{node.peer_id}"] .led[data-light="{light}"]')
            expect(led).to_have_attribute("data-value", "on")
        page.screenshot(path=os.environ["RAIN_PANEL_SCREENSHOT"], full_page=True)
        for node, light in zip(lit, ("user1", "user2"), strict=True):
            node.rain("light", light, "off")


def test_a_user_light_set_on_one_node_shows_on_anothers_page(
    network: Network, open_page: OpenPage
) -> None:
    first, w0, w1, _ = network.nodes
    page = open_page(first)
    led = page.locator(f'.node[data-peer="{w1.peer_id}"] .led[data-light="user1"]')
    expect(led).to_have_attribute("data-value", "off")
    w1.rain("light", "user1", "on")
    expect(led).to_have_attribute("data-value", "on", timeout=15_000)
    # The page's own buttons: they post to the node with the page's own Origin.
    own = open_page(w0)
    own.locator('[data-user="user2"] button[data-light="blink"]').click()
    far = page.locator(f'.node[data-peer="{w0.peer_id}"] .led[data-light="user2"]')
    expect(far).to_have_attribute("data-value", "blink", timeout=15_000)
    assert w0.rain_json("status")["user2"] == "blink"
    expect(own.locator('[data-user="user2"] button[data-light="blink"]')).to_have_attribute(
        "aria-pressed", "true"
    )
    own.locator('[data-user="user2"] button[data-light="off"]').click()
    expect(far).to_have_attribute("data-value", "off", timeout=15_000)
    w1.rain("light", "user1", "off")
    # The switch turns every panel's row of lights into a load bar.
    page.locator(".switch").click()
    expect(page.locator("body")).to_have_class("mode-load")
    expect(page.locator(".node .bar").first).to_be_visible()
    expect(page.locator(".node .lights").first).to_be_hidden()


class _Evil(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another site</title><p>hello</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def other_site() -> Iterator[str]:
    """A page of another origin on this machine (127.0.0.1, another port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Evil)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_without_the_token_or_from_another_origin_nothing_gets_in(
    network: Network, browser: Browser, other_site: str
) -> None:
    node = network.nodes[1]
    panel: Panel = panel_of(node)
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        for path in ("/", "/static/panel.js", "/api/view"):
            response = page.goto(panel.origin + path)
            assert response is not None and response.status == 403, path
        # Logged in (the cookie is in this browser), then a page of another origin tries.
        response = page.goto(panel.login_url)
        assert response is not None and response.status == 200
        page.goto(other_site)
        outcome = page.evaluate(
            """async (origin) => {
                const post = await fetch(origin + "/api/light", {method: "POST", mode: "no-cors",
                    credentials: "include", headers: {"Content-Type": "text/plain"},
                    body: JSON.stringify({which: "user1", light: "blink"})})
                    .then((r) => r.type, (e) => "refused: " + e);
                const ws = await new Promise((done) => {
                    const s = new WebSocket(origin.replace("http", "ws") + "/live");
                    s.onopen = () => done("open");
                    s.onerror = () => done("refused");
                    setTimeout(() => done("timeout"), 5000);
                });
                return {post, ws};
            }""",
            panel.origin,
        )
        assert outcome["ws"] == "refused", outcome
        time.sleep(2)  # (a record change would take a second to show)
        assert node.rain_json("status")["user1"] == "off", outcome
    finally:
        ctx.close()
