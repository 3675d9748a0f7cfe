"""The panel's ASGI app (Starlette), behind the guard: the page, its live channel, its actions.

    GET  /                        the page (node/panel/static: HTML, JS, CSS; nothing from a CDN)
    GET  /static/panel.js|.css    its script and style
    WS   /live                    the view, then a delta each second (node.panel.hub)
    GET  /api/view                the whole view once, as JSON
    POST /api/light               {"which": "user1", "light": "on"}: set one of our user lights
    POST /api/jobs/{id}/cancel    cancel one of our jobs

GETs change nothing. The actions go through the node's control operations (the same as `rain
light` and `rain cancel`), with a JSON body of at most MAX_BODY bytes; the guard (node.panel
.guard) has checked the token and the Origin before any of this runs. This module imports
Starlette: it is imported only when the panel serves its first request (node.panel.server).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from node.panel import view as views
from node.panel.guard import Access, Guard
from node.panel.hub import Hub, HubFull

Control = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

MAX_BODY = 4096
SEND_TIMEOUT = 10.0  # a page that takes no message for this long is let go
STATIC = {"panel.js": "text/javascript", "panel.css": "text/css"}
TRY_AGAIN_LATER = 1013  # WebSocket close code: the page reconnects


def _static(name: str) -> bytes:
    return (resources.files("node.panel") / "static" / name).read_bytes()


class BadRequest(Exception):
    pass


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest("send JSON (Content-Type: application/json)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(f"a body of at most {MAX_BODY} bytes")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body is a JSON object")
    return data


def build_app(
    hub: Hub,
    control: Control,
    view: Callable[[], Awaitable[views.View]],
    access: Access,
) -> Guard:
    page = _static("index.html")
    files = {name: (_static(name), kind) for name, kind in STATIC.items()}

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def static(request: Request) -> Response:
        found = files.get(request.path_params["name"])
        if found is None:
            return Response("not found\n", 404, media_type="text/plain")
        return Response(found[0], media_type=found[1])

    async def whole_view(request: Request) -> Response:
        return Response(views.encode(await view()), media_type="application/json")

    async def act(request: Request, op: dict[str, Any]) -> Response:
        answer = await control(op)
        if answer.get("refused"):
            return JSONResponse({"error": answer.get("error", "refused")}, 400)
        return JSONResponse(answer)

    async def light(request: Request) -> Response:
        try:
            body = await _json_body(request)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return await act(
            request, {"op": "light", "which": body.get("which"), "light": body.get("light")}
        )

    async def cancel(request: Request) -> Response:
        return await act(request, {"op": "cancel", "job_id": request.path_params["job_id"]})

    async def live(websocket: WebSocket) -> None:
        try:
            async with hub.listen() as messages:
                await websocket.accept()
                await _forward(websocket, messages)
        except HubFull:
            await websocket.close(code=TRY_AGAIN_LATER)  # (before accept: a 403)

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/view", whole_view),
        Route("/api/light", light, methods=["POST"]),
        Route("/api/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        WebSocketRoute("/live", live),
    ]
    return Guard(Starlette(routes=routes), access)


async def _forward(websocket: WebSocket, messages: trio.MemoryReceiveChannel[str]) -> None:
    """Send the hub's messages until the page goes away, is too slow, or the hub drops it.
    The page sends nothing: a reader task only watches for it closing."""
    page_left = False
    async with trio.open_nursery() as nursery:

        async def watch_close() -> None:
            nonlocal page_left
            with contextlib.suppress(WebSocketDisconnect, KeyError, RuntimeError):
                while True:  # (closed, or a message that is not text: both end it)
                    await websocket.receive_text()
            page_left = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_close)
        try:
            async for message in messages:
                with trio.move_on_after(SEND_TIMEOUT) as scope:
                    await websocket.send_text(message)
                if scope.cancelled_caught:
                    break
        except WebSocketDisconnect:
            page_left = True
        nursery.cancel_scope.cancel()
    if not page_left:  # dropped by the hub, or too slow: ask the page to come back
        with trio.move_on_after(1), contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=TRY_AGAIN_LATER)
