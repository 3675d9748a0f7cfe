"""Who gets into the panel (node.panel.guard), request by request, in memory: the token as
cookie, bearer or URL (GET only), the Host and Origin checks, the redirect that sets the cookie,
the WebSocket refused before it is accepted. The real server is in tests/e2e/test_panel.py."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from node.panel import access
from node.panel.guard import Access, Guard, Message, Receive, Request, Scope, Send, Verdict

TOKEN = "t" * 43
PORT = 4321
ORIGIN = f"http://127.0.0.1:{PORT}"
RULES = Access(TOKEN, PORT)


def req(
    method: str = "GET",
    websocket: bool = False,
    query: tuple[tuple[str, str], ...] = (),
    **headers: str,
) -> Request:
    base = {"host": f"127.0.0.1:{PORT}"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return Request(websocket, method, base, query)


COOKIE = f"{RULES.cookie_name}={TOKEN}"


@pytest.mark.parametrize(
    ("request_", "verdict"),
    [
        (req(), Verdict.REFUSE),
        (req(cookie=COOKIE), Verdict.ALLOW),
        (req(cookie=f"other=1; {COOKIE}"), Verdict.ALLOW),
        (req(cookie=f"rain_panel_9999={TOKEN}"), Verdict.REFUSE),  # another port's cookie
        (req(cookie=f"{RULES.cookie_name}={TOKEN}x"), Verdict.REFUSE),
        (req(authorization=f"Bearer {TOKEN}"), Verdict.ALLOW),
        (req(authorization=f"Basic {TOKEN}"), Verdict.REFUSE),
        (req(query=(("token", TOKEN),)), Verdict.LOGIN),
        (req(query=(("token", "nope"),)), Verdict.REFUSE),
        (req("HEAD", query=(("token", TOKEN),)), Verdict.LOGIN),
        # a state change: the token in the URL does not count, the Origin must be ours
        (req("POST", query=(("token", TOKEN),), origin=ORIGIN), Verdict.REFUSE),
        (req("POST", cookie=COOKIE), Verdict.REFUSE),
        (req("POST", cookie=COOKIE, origin="http://evil.example"), Verdict.REFUSE),
        (req("POST", cookie=COOKIE, origin=f"http://127.0.0.1:{PORT + 1}"), Verdict.REFUSE),
        (req("POST", cookie=COOKIE, origin=ORIGIN), Verdict.ALLOW),
        (
            req("DELETE", authorization=f"Bearer {TOKEN}", origin=f"http://localhost:{PORT}"),
            Verdict.ALLOW,
        ),
        # the WebSocket: token and Origin
        (req(websocket=True, cookie=COOKIE), Verdict.REFUSE),
        (req(websocket=True, cookie=COOKIE, origin="null"), Verdict.REFUSE),
        (req(websocket=True, cookie=COOKIE, origin=ORIGIN), Verdict.ALLOW),
        (req(websocket=True, query=(("token", TOKEN),), origin=ORIGIN), Verdict.REFUSE),
        # DNS rebinding: a name that resolves to 127.0.0.1 but is not ours
        (req(cookie=COOKIE, host=f"evil.example:{PORT}"), Verdict.REFUSE),
        (req(cookie=COOKIE, host="127.0.0.1"), Verdict.REFUSE),
        (req(cookie=COOKIE, host=f"LOCALHOST:{PORT}"), Verdict.ALLOW),
    ],
)
def test_the_rules(request_: Request, verdict: Verdict) -> None:
    assert RULES.decide(request_).verdict is verdict


async def _call(guard: Guard, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await guard(scope, receive, send)
    return sent


def _scope(kind: str, path: str, query: bytes = b"", **headers: str) -> Scope:
    return {
        "type": kind,
        "method": "GET",
        "path": path,
        "query_string": query,
        "headers": [(b"host", f"127.0.0.1:{PORT}".encode())]
        + [(k.encode(), v.encode()) for k, v in headers.items()],
    }


class Inner:
    """The app behind the guard: records that it was reached."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(scope["path"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


def test_the_middleware_refuses_logs_in_and_passes_on() -> None:
    async def main() -> None:
        inner = Inner()
        guard = Guard(inner, RULES)
        refused = await _call(guard, _scope("http", "/api/view"))
        assert refused[0]["status"] == 403 and b"forbidden" in refused[1]["body"]
        ws = await _call(guard, _scope("websocket", "/live", cookie=COOKIE))
        assert ws == [{"type": "websocket.close", "code": 1008}]  # before accept: HTTP 403
        login = await _call(guard, _scope("http", "/", f"token={TOKEN}&x=1".encode()))
        head = dict(login[0]["headers"])
        assert login[0]["status"] == 303 and head[b"location"] == b"/?x=1"
        cookie = head[b"set-cookie"].decode()
        assert cookie.startswith(f"{RULES.cookie_name}={TOKEN};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert inner.reached == []
        ok = await _call(guard, _scope("http", "/", cookie=COOKIE))
        assert inner.reached == ["/"] and ok[0]["status"] == 200
        names = {k for k, _ in ok[0]["headers"]}
        assert {b"content-security-policy", b"x-frame-options", b"cache-control"} <= names
        lifespan: Scope = {"type": "lifespan", "path": "(lifespan)"}
        await guard(lifespan, _never, _discard)
        assert inner.reached == ["/", "(lifespan)"]  # passed on as it is

    trio.run(main)


async def _never() -> Message:
    raise AssertionError("not read")


async def _discard(message: Message) -> None:
    pass


def test_the_token_is_kept_user_only_and_replaced_if_not(tmp_path: Any) -> None:
    token = access.load_or_create_token(tmp_path)
    path = tmp_path / access.TOKEN_FILE
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert access.load_or_create_token(tmp_path) == token
    path.chmod(0o644)
    fresh = access.load_or_create_token(tmp_path)
    assert fresh != token and path.stat().st_mode & 0o777 == 0o600


def test_panel_info_names_a_live_node_only(tmp_path: Any) -> None:
    info = access.PanelInfo("http://127.0.0.1:5", os.getpid())
    access.write_info(tmp_path, info)
    assert access.read_info(tmp_path) == info
    assert (tmp_path / access.PANEL_INFO_FILE).stat().st_mode & 0o777 == 0o600
    access.write_info(tmp_path, access.PanelInfo("http://127.0.0.1:5", 2**22 + 12345))
    assert access.read_info(tmp_path) is None  # (no such process)
    access.write_info(tmp_path, info)
    access.remove_info(tmp_path)
    assert access.read_info(tmp_path) is None
