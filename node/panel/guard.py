"""Who gets into the panel: the rules (`Access`) and the ASGI middleware that applies them
(`Guard`) to every request and WebSocket before the app sees it.

Only this node's user: the panel's secret token (kept in the home, mode 0600: node.panel.access)
must come with every request, as the cookie set when the page was opened with `?token=` (the URL
`rain panel` prints; answered by a redirect that drops the token from the address bar), or as
`Authorization: Bearer TOKEN`. A token in the URL counts for GET only. Without it: 403, on every
path, the live channel included (a WebSocket refused before it is accepted is a 403 too).

Beyond the token, against other web pages the user has open:
- the Host header must be this panel's own (127.0.0.1 or localhost, our port): a page whose
  name was rebound to 127.0.0.1 (DNS rebinding) sends its own name and is refused;
- anything that may change state (any method but GET and HEAD) and the WebSocket must carry an
  Origin that is the panel's own: a cross-site form or fetch is refused even though the browser
  would send the cookie along (it does not: SameSite=Strict; this holds without that too);
- every answer forbids framing, caching and referrers, and allows only the panel's own scripts,
  styles and WebSocket (Content-Security-Policy), so injected markup could not run.
The cookie is named after the port: browsers keep cookies per host, not per port, and several
nodes on one machine each have their own panel and token.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD"})
LOCAL_NAMES = ("127.0.0.1", "localhost")
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class Verdict(enum.Enum):
    ALLOW = "allow"
    LOGIN = "login"  # the token came in the URL: set the cookie, redirect without it
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True)
class Request:
    """What the rules look at, from an ASGI scope."""

    websocket: bool
    method: str
    headers: dict[str, str]  # lower-case names; the last of a repeated header
    query: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, scope: Scope) -> Request:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        websocket = scope["type"] == "websocket"
        return cls(websocket, "GET" if websocket else scope["method"], headers, tuple(query))

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


class Access:
    def __init__(self, token: str, port: int) -> None:
        self._token = token.encode()
        self.port = port
        self.cookie_name = f"rain_panel_{port}"
        self.hosts = frozenset(f"{name}:{port}" for name in LOCAL_NAMES)
        self.origins = frozenset(f"http://{host}" for host in self.hosts)

    def _is_token(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self._token)

    def decide(self, req: Request) -> Decision:
        if req.headers.get("host", "").lower() not in self.hosts:
            return Decision(Verdict.REFUSE, "not this panel's host name")
        changes_state = req.websocket or req.method not in SAFE_METHODS
        if changes_state and req.headers.get("origin", "").lower() not in self.origins:
            return Decision(Verdict.REFUSE, "not from this panel's own page (Origin)")
        bearer = req.headers.get("authorization", "")
        if self._is_token(req.cookie(self.cookie_name)) or (
            bearer.startswith("Bearer ") and self._is_token(bearer[7:].strip())
        ):
            return Decision(Verdict.ALLOW)
        in_url = [v for k, v in req.query if k == "token"]
        if (
            not req.websocket
            and req.method in SAFE_METHODS
            and in_url
            and self._is_token(in_url[-1])
        ):
            return Decision(Verdict.LOGIN)
        return Decision(Verdict.REFUSE, "no valid panel token (open the URL `rain panel` prints)")

    def login_headers(self, req: Request, path: str) -> list[tuple[bytes, bytes]]:
        """The redirect that sets the cookie and drops the token from the URL."""
        rest = [(k, v) for k, v in req.query if k != "token"]
        location = path + ("?" + urlencode(rest) if rest else "")
        cookie = f"{self.cookie_name}={self._token.decode()}; HttpOnly; SameSite=Strict; Path=/"
        return [(b"location", location.encode()), (b"set-cookie", cookie.encode())]


class Guard:
    """The ASGI middleware: refuses, logs in, or passes the request on (with our headers)."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        req = Request.of(scope)
        decision = self.access.decide(req)
        if decision.verdict is Verdict.REFUSE:
            if req.websocket:
                # Closing before accepting: the server answers the handshake with 403.
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _respond(send, 403, [], f"forbidden: {decision.reason}\n".encode())
            return
        if decision.verdict is Verdict.LOGIN:
            await _respond(send, 303, self.access.login_headers(req, scope["path"]), b"")
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    head = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *headers,
        *SECURITY_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
