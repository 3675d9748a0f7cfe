"""The panel's server in the node's nursery: 127.0.0.1 only, started lazily.

Why hypercorn's trio worker and Starlette: the node is one trio program, and the panel must live
on its loop (it reads the node's state in memory, and is cancelled with it); hypercorn serves
ASGI on trio itself (`hypercorn.trio.serve`), with WebSockets, and shuts down by cancellation;
Starlette is a small, well-kept ASGI framework that runs on trio through anyio. (uvicorn and
aiohttp are asyncio only; a thread with its own loop would need locks around the node's state.)

Cost when no page is open: the port is bound at start-up (so the address is known and taken),
but nothing else happens until the first connection arrives: the listening socket is watched for
readability, and only then are hypercorn and Starlette imported (in a worker thread: ~0.2 s and
~9 MB, which a node that nobody looks at never pays) and handed the socket. From then on the
panel serves until the node stops; the hub ticks only while a page listens.

The port: `--panel PORT` (0: any free port), default DEFAULT_PORT. If the default is taken (another
node on this machine, as in test clusters), the panel takes a free port instead and says so in
the log; `rain panel` reads the real one from `HOME/panel.json`. A port given explicitly that is
taken stops the node with the error, as a taken --listen port does.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.panel import access
from node.panel import view as views
from node.panel.front import FrontPanelSpec
from node.panel.hub import Hub
from node.snapshot import NodeSnapshot

log = logging.getLogger("rainnet.panel")

DEFAULT_PORT = 4080
HOST = "127.0.0.1"
BACKLOG = 64

Control = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class PanelConfig:
    port: int | None = DEFAULT_PORT  # None: no panel
    port_given: bool = False  # an explicit port: taken is an error, not a fallback
    front_panel: FrontPanelSpec | None = None


def bind(port: int, fallback: bool) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:`port` (any free port if it is taken and `fallback`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if not (fallback and exc.errno == errno.EADDRINUSE):
                raise OSError(exc.errno, f"panel port {port}: {exc.strerror}") from None
            log.warning("panel port %d is taken: using a free port instead", port)
            sock.bind((HOST, 0))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Panel:
    def __init__(
        self,
        config: PanelConfig,
        home: Path,
        snapshot: Callable[[], Awaitable[NodeSnapshot]],
        control: Control,
    ) -> None:
        assert config.port is not None
        self.config = config
        self.home = home
        self._snapshot = snapshot
        self._control = control
        self.hub = Hub(self.view)
        self.url = ""
        self.serving = False  # the stack is loaded and serving (a page came)

    async def view(self) -> views.View:
        return views.build(await self._snapshot())

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, then serve from the first connection on, until cancelled; `task_status
        .started(url)` once bound."""
        assert self.config.port is not None
        sock = bind(self.config.port, fallback=not self.config.port_given)
        port = sock.getsockname()[1]
        self.url = f"http://{HOST}:{port}"
        try:
            token = access.load_or_create_token(self.home)
            access.write_info(self.home, access.PanelInfo(self.url, os.getpid()))
            log.info("panel on %s (`rain panel` prints its URL with the token)", self.url)
            task_status.started(self.url)
            await trio.lowlevel.wait_readable(sock.fileno())
            serve, make_config = await trio.to_thread.run_sync(_load_stack)
            from node.panel.app import build_app
            from node.panel.guard import Access

            app = build_app(self.hub, self._control, self.view, Access(token, port))
            config = make_config()
            config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
            self.serving = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.hub.run)
                await serve(app, config)
        finally:
            sock.close()  # (a no-op once detached)
            access.remove_info(self.home)


def _load_stack() -> tuple[Callable[..., Awaitable[None]], Callable[[], Any]]:
    """Import the ASGI stack (off the event loop: it takes a while) and its settings."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    import node.panel.app  # noqa: F401  (Starlette's import, here too)

    def make_config() -> Config:
        config = Config()
        config.accesslog = None
        http_log = logging.getLogger("rainnet.panel.http")
        if not http_log.isEnabledFor(logging.DEBUG):
            http_log.setLevel(logging.WARNING)  # (not hypercorn's "Running on ..., CTRL + C")
        config.errorlog = http_log
        config.include_server_header = False
        config.keep_alive_timeout = 5.0
        config.graceful_timeout = 1.0
        config.backlog = BACKLOG
        config.h11_max_incomplete_size = 16 * 1024
        config.websocket_max_message_size = 4096  # the page sends nothing
        config.alpn_protocols = ["http/1.1"]
        return config

    return serve, make_config
