"""The node's control operations: what `rain` (and the panel) may ask of its own node.

`ControlOps.handle(request)` answers one request of the control channel (node.control.channel):
status and peers (views of node.snapshot), the whole snapshot, the lending policy's report,
another peer's chain fetched and verified, workers found in the DHT, the job operations
(node.control.jobs), MPI groups' (node.mpi.control), and the panel's: this node's user lights
(`rain light`, the page's buttons) and the panel's view (`rain top`). Requests come from this
node's user only (a user-only Unix socket, or the token-guarded panel).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from node.control import jobs as job_control
from node.control.channel import refusal
from node.jobs.requester import Requester
from node.ledger_link import LedgerLink
from node.mpi import control as mpi_control
from node.mpi.groups import Groups
from node.panel.lights import UserLight
from node.snapshot import NodeSnapshot
from rainnet import identity, records, wire
from rainnet.ledgerproto import LEDGER, LEDGER_MAX_FRAME, LedgerFrame
from rainnet.streams import FramedStream, StreamGone


class NodeView(Protocol):
    """What the control operations need of the node."""

    requester: Requester
    ledger: LedgerLink
    groups: Groups

    async def snapshot(self, detail: bool = False) -> NodeSnapshot: ...

    def set_user_light(self, which: UserLight, light: records.Light) -> None: ...

    def policy_report(self) -> dict[str, Any] | None: ...

    async def open_stream(self, peer_id: str, protocol: str) -> Any: ...

    async def find_workers(self) -> list[records.NodeRecord]: ...


class ControlOps:
    def __init__(self, node: NodeView) -> None:
        self._node = node
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "status": self._status,
            "peers": self._peers,
            "snapshot": self._snapshot,
            "policy": self._policy,
            "fetch-chain": self._fetch_chain,
            "workers": self._workers,
            "light": self._light,
            "view": self._view,
        }

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op in job_control.OPS:
            return await job_control.OPS[op](self._node.requester, req)
        if op in mpi_control.OPS:
            return await mpi_control.OPS[op](self._node.groups, req)
        if op in self._ops:
            return await self._ops[op](req)
        return refusal(f"unknown operation {op!r}")

    async def _status(self, req: dict[str, Any]) -> dict[str, Any]:
        return (await self._node.snapshot()).status()

    async def _peers(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"peers": (await self._node.snapshot()).peer_list()}

    async def _snapshot(self, req: dict[str, Any]) -> dict[str, Any]:
        return (await self._node.snapshot()).as_dict()

    async def _light(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            which = UserLight(str(req.get("which")))
            light = records.Light(str(req.get("light")))
        except ValueError:
            return refusal("light: which is user1 or user2, light is off, on or blink")
        self._node.set_user_light(which, light)
        return {"which": which, "light": light}

    async def _view(self, req: dict[str, Any]) -> dict[str, Any]:
        """The panel's view (node.panel.view) of the node now: what `rain top` draws."""
        from node.panel import view

        return {"view": view.as_json(view.build(await self._node.snapshot(detail=True)))}

    async def _policy(self, req: dict[str, Any]) -> dict[str, Any]:
        report = self._node.policy_report()
        return report if report is not None else refusal("starting")

    async def _workers(self, req: dict[str, Any]) -> dict[str, Any]:
        found = await self._node.find_workers()
        return {"workers": [r.as_dict() for r in found]}

    async def _fetch_chain(self, req: dict[str, Any]) -> dict[str, Any]:
        """Fetch and verify a peer's chain from it; its verified balance."""
        peer_id = req.get("peer")
        if not isinstance(peer_id, str):
            return refusal("fetch-chain needs a peer id")
        ledger = self._node.ledger
        try:
            public = identity.public_bytes_from_peer_id(peer_id)
            raw = await self._node.open_stream(peer_id, LEDGER)
            fs = FramedStream(raw, (LedgerFrame,), LEDGER_MAX_FRAME)
            try:
                await ledger.sync_chain(fs, public)
            finally:
                await fs.close()
        except ValueError as exc:
            return refusal(str(exc))
        except (StreamGone, wire.RemoteProtocolError) as exc:
            return refusal(f"could not fetch the chain of {peer_id}: {exc}")
        state = await ledger.verified_state(public)
        assert state is not None  # just fetched and verified
        balance = state.balance
        return {
            "peer_id": peer_id,
            "verified_blocks": state.verified,
            "balance": balance.balance_milli / 1000,
            "earned": balance.earned_milli / 1000,
            "spent": balance.spent_milli / 1000,
        }
