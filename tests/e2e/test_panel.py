"""The panel of real rain-node processes, without a browser: who gets in (403 on every path,
the live channel included, without the token; a cross-origin change refused), where it listens
(127.0.0.1 only), its port when taken, the user lights travelling in the records (set by
`rain light` and by a guest job), `rain panel` and `rain top`. The page in Chromium is in
test_panel_browser.py."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import wsproto
import wsproto.events

from node.panel import access
from tests.e2e.nodes import LOOPBACK, WORKER, Cluster, NodeProcess, wait_until

PANEL_NODE = ("--listen", LOOPBACK, "--no-mdns", "--panel", "0")
TIMEOUT = 10.0


@dataclass(frozen=True)
class Panel:
    """Where a node's panel is, and its token (read from the node's home, as `rain panel`)."""

    host: str
    port: int
    token: str

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def login_url(self) -> str:
        return f"{self.origin}/?token={self.token}"


def panel_of(node: NodeProcess) -> Panel:
    info = access.read_info(node.home)
    assert info is not None, f"no panel.json in {node.home}:\n{node.log()}"
    token = (node.home / access.TOKEN_FILE).read_text().strip()
    host, port = info.url.removeprefix("http://").rsplit(":", 1)
    return Panel(host, int(port), token)


def request(
    panel: Panel,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request (no redirects followed): status, headers, body."""
    conn = http.client.HTTPConnection(panel.host, panel.port, timeout=TIMEOUT)
    try:
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=data, headers=all_headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def websocket(panel: Panel, headers: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
    """Open /live: the handshake's status, and the first message if it was accepted."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    extra = [(k.encode(), v.encode()) for k, v in headers.items()]
    with socket.create_connection((panel.host, panel.port), timeout=TIMEOUT) as sock:
        host = f"{panel.host}:{panel.port}"
        sock.sendall(
            ws.send(wsproto.events.Request(host=host, target="/live", extra_headers=extra))
        )
        text = ""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, wsproto.events.RejectConnection):
                    return event.status_code, None
                if isinstance(event, wsproto.events.TextMessage):
                    text += event.data
                    if event.message_finished:
                        return 101, json.loads(text)
            if not data:
                break
    raise AssertionError("no answer on /live")


def bearer(panel: Panel) -> dict[str, str]:
    return {"Authorization": f"Bearer {panel.token}"}


@pytest.fixture
def node(cluster: Cluster) -> Iterator[NodeProcess]:
    n = cluster.start(*PANEL_NODE)
    n.wait_ready()
    yield n


PATHS = ["/", "/static/panel.js", "/static/panel.css", "/api/view", "/nope", "/?token=wrong"]


def test_without_the_token_every_path_is_403(node: NodeProcess) -> None:
    panel = panel_of(node)
    for path in PATHS:
        assert request(panel, "GET", path)[0] == 403, path
        assert request(panel, "GET", path, {"Cookie": "rain_panel_1=" + panel.token})[0] == 403
    for path in ("/api/light", "/api/jobs/x/cancel"):
        status = request(panel, "POST", path, {"Origin": panel.origin}, {"which": "user1"})[0]
        assert status == 403, path
    assert websocket(panel, {"Origin": panel.origin}) == (403, None)
    # The token in the URL counts for a GET only, and never for the live channel.
    url_token = f"/api/light?token={panel.token}"
    assert request(panel, "POST", url_token, {"Origin": panel.origin}, {})[0] == 403


def test_with_the_token_the_page_its_view_and_the_live_channel(node: NodeProcess) -> None:
    panel = panel_of(node)
    status, headers, _ = request(panel, "GET", f"/?token={panel.token}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    status, headers, page = request(panel, "GET", "/", {"Cookie": cookie})
    assert status == 200 and b"/static/panel.js" in page
    assert "script-src 'self'" in headers["content-security-policy"]
    for name in ("panel.js", "panel.css"):
        assert request(panel, "GET", f"/static/{name}", {"Cookie": cookie})[0] == 200
    status, _, body = request(panel, "GET", "/api/view", bearer(panel))
    view = json.loads(body)
    assert status == 200 and view["nodes"][node.peer_id]["me"] is True
    # The live channel: the whole view first (the Origin must be the panel's own).
    assert websocket(panel, {"Cookie": cookie})[0] == 403
    assert websocket(panel, {"Cookie": cookie, "Origin": "http://evil.example"})[0] == 403
    status, first = websocket(panel, {"Cookie": cookie, "Origin": panel.origin})
    assert status == 101 and first is not None and first["type"] == "view"
    assert node.peer_id in first["view"]["nodes"]


def test_a_change_needs_the_panels_own_origin(node: NodeProcess) -> None:
    panel = panel_of(node)
    change = {"which": "user1", "light": "blink"}
    for origin in (None, "http://evil.example", f"http://127.0.0.1:{panel.port + 1}", "null"):
        headers = bearer(panel) | ({"Origin": origin} if origin else {})
        assert request(panel, "POST", "/api/light", headers, change)[0] == 403, origin
    assert node.rain_json("status")["user1"] == "off"
    # A page served from another host name that resolves here (DNS rebinding): refused.
    rebound = bearer(panel) | {"Host": f"evil.example:{panel.port}"}
    assert request(panel, "GET", "/api/view", rebound)[0] == 403
    own = bearer(panel) | {"Origin": panel.origin}
    status, _, body = request(panel, "POST", "/api/light", own, change)
    assert status == 200 and json.loads(body) == change
    assert node.rain_json("status")["user1"] == "blink"
    status, _, body = request(panel, "POST", "/api/light", own, {"which": "user3"})
    assert status == 400 and b"user1 or user2" in body
    assert request(panel, "POST", "/api/light", own | {"Content-Type": "text/plain"}, {})[0] == 400
    status, _, body = request(panel, "POST", "/api/jobs/nosuchjob/cancel", own)
    assert status == 400 and b"no job" in body
    # Nothing changes on a GET.
    assert request(panel, "GET", "/api/light", own)[0] == 405


def test_the_panel_listens_on_127_0_0_1_only(node: NodeProcess) -> None:
    panel = panel_of(node)
    assert node.proc is not None
    listening = [
        c.laddr
        for c in psutil.Process(node.proc.pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == panel.port
    ]
    # One socket, bound to 127.0.0.1: the kernel gives it no connection to any other address
    # of this machine (its interfaces' are not tried here: tests reach loopback only). The rest
    # of the loopback range and IPv6's loopback are refused.
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", panel.port)]
    for family, address in ((socket.AF_INET, "127.0.0.2"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            with pytest.raises(OSError):
                s.connect((address, panel.port))


@pytest.mark.alone  # (the default port is the machine's: another test's node may hold it)
def test_a_taken_port(cluster: Cluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Asked for explicitly: the node says so and stops, as for a taken --listen port.
        explicit = cluster.start("--listen", LOOPBACK, "--no-mdns", "--panel", str(port))
        assert explicit.proc is not None and explicit.proc.wait(30) == 1
        assert f"panel port {port}" in explicit.log()
    # The default port taken (here by us, or by another node of this machine): a free one.
    with socket.socket() as default:
        default.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            default.bind(("127.0.0.1", 4080))
            default.listen()
        fallback = cluster.start("--listen", LOOPBACK, "--no-mdns")
        fallback.wait_ready()
        panel = panel_of(fallback)
        assert panel.port != 4080 and "4080 is taken" in fallback.log()
        assert request(panel, "GET", "/api/view", bearer(panel))[0] == 200
        assert fallback.rain("panel").stdout.strip() == panel.login_url


def test_no_panel(cluster: Cluster) -> None:
    node = cluster.start("--listen", LOOPBACK, "--no-mdns", "--no-panel")
    node.wait_ready()
    assert access.read_info(node.home) is None
    res = node.rain("panel", check=False)
    assert res.returncode == 1 and "no panel is running" in res.stderr


def test_rain_panel_prints_the_url_and_the_file_goes_with_the_node(node: NodeProcess) -> None:
    panel = panel_of(node)
    assert node.rain("panel").stdout.strip() == panel.login_url
    assert (node.home / access.TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    assert node.stop() == 0
    assert not (node.home / access.PANEL_INFO_FILE).exists()


def _peer(node: NodeProcess, peer_id: str) -> dict[str, Any]:
    return next((p for p in node.peers() if p["peer_id"] == peer_id), {})


def test_user_lights_travel_to_the_other_nodes(cluster: Cluster) -> None:
    a = cluster.start(*PANEL_NODE, "--lend", "never")
    a.wait_ready()
    b = cluster.start(*WORKER, "--panel", "0", "--bootstrap", a.addr)
    b.wait_ready()
    wait_until(lambda: bool(_peer(a, b.peer_id).get("backends")), 30, "a sees b's sandbox")
    assert b.rain("light", "user1", "on").stdout.strip() == "user1: on"
    wait_until(lambda: _peer(a, b.peer_id).get("user1") == "on", 15, "a sees b's user 1 on")
    top = a.rain("top", "--once").stdout
    assert b.peer_id[-8:] in top and "nodes (2)" in top
    # A guest job sets its worker's lights while it runs (its .rain-lights file).
    job = a.rain(
        "submit", "--", "sh", "-c", "echo user2=blink > .rain-lights; sleep 6"
    ).stdout.strip()
    wait_until(lambda: _peer(a, b.peer_id).get("user2") == "blink", 20, "the job's light shows")
    assert _peer(a, b.peer_id)["user1"] == "on"  # (the owner's choice for the other one)
    wait_until(lambda: a.rain_json("jobs")[0]["state"] == "done", 30, f"job {job} ends")
    wait_until(lambda: _peer(a, b.peer_id).get("user2") == "off", 30, "the owner's back")
    res = b.rain("light", "user3", "on", check=False)
    assert res.returncode != 0 and "invalid choice" in res.stderr
