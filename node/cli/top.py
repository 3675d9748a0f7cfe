"""`rain top`: the panel in the terminal, refreshed each second.

It asks the node for the panel's view (the control request `view`: node.panel.view, the same
view the web page draws) and draws it with rich (`rich.live.Live`): this node and its credit and
policy, every node it sees as a row of lights (or load bars, `--load`, as the hardware's
toggle), our jobs, the guests' jobs, MPI groups and the recent exchanges. `--once` prints one
frame and exits (for scripts, and for tests without a terminal). Ctrl-C leaves.

rich, not textual: textual runs on asyncio, and this is a plain blocking loop over the control
socket (one request a second; no trio, no libp2p), which rich's Live draws without a loop.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from node.cli import CliError
from node.cli.status import ask
from node.panel.view import Section

LOAD_STEPS = 8
LIGHT_COLORS = {"up": "green", "net": "green", "temp": "red", "user1": "blue", "user2": "magenta"}
STATE_COLORS = {"idle": "green", "busy": "yellow", "owner": "grey62", "suspended": "red"}
JOB_COLORS = {"done": "green", "failed": "red", "cancelled": "red", "running": "yellow"}


def register(sub: Any) -> None:
    p = sub.add_parser("top", help="the panel in the terminal: nodes, lights, jobs, credit, live")
    p.add_argument("--load", action="store_true", help="load bars instead of status lights")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (1 s)"
    )
    p.set_defaults(func=cmd_top)


def fetch(args: argparse.Namespace) -> dict[str, Any]:
    view: dict[str, Any] = ask(args, "view")["view"]
    return view


def cmd_top(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    if not 0.2 <= args.interval <= 60:
        raise CliError("--interval: from 0.2 to 60 seconds")
    console = Console()
    view = fetch(args)
    if args.once:
        console.print(render(view, load_bars=args.load, height=10**6))
        return 0
    try:
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                live.update(render(view, args.load, console.size.height), refresh=True)
                time.sleep(args.interval)
                try:
                    view = fetch(args)
                except CliError:
                    view = {}  # the node went away: say so, keep trying
    except KeyboardInterrupt:
        pass
    return 0


def render(view: dict[str, Any], load_bars: bool = False, height: int = 40) -> Any:
    """One frame of the view (a rich renderable); at most about `height` lines of nodes."""
    from rich.console import Group
    from rich.text import Text

    if not view:
        return Text("rain top: the node does not answer (is rain-node running?)", style="red")
    info = view.get(Section.INFO, {})
    nodes = sorted(view.get(Section.NODES, {}).values(), key=_node_order)
    jobs = sorted(view.get(Section.JOBS, {}).values(), key=lambda j: -j["since"])
    guests = list(view.get(Section.GUESTS, {}).values())
    groups = list(view.get(Section.MPI, {}).values())
    exchanges = sorted(view.get(Section.EXCHANGES, {}).values(), key=lambda x: -x["seq"])
    room = max(3, height - 12 - min(len(jobs), 8) - min(len(exchanges), 5) - len(guests))
    parts = [_header(info, nodes), _nodes(nodes[:room], len(nodes), load_bars)]
    parts.append(_jobs(jobs[:8]) if jobs else Text("our jobs: none", style="dim"))
    if guests:
        parts.append(_guests(guests))
    parts.append(
        _groups(groups) if groups else Text("MPI groups: none", style="dim"),
    )
    if exchanges:
        parts.append(_exchanges(exchanges[:5]))
    return Group(*parts)


def _node_order(n: dict[str, Any]) -> tuple[int, str]:
    return (0 if n["me"] else 1 if n["up"] else 2), n["id"]


def _short(peer_id: str | None) -> str:
    return "…" + peer_id[-8:] if peer_id else "-"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if value >= 10 or unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def _header(info: dict[str, Any], nodes: list[dict[str, Any]]) -> Any:
    from rich.text import Text

    me, credit, policy = info.get("self", {}), info.get("credit", {}), info.get("policy", {})
    up = sum(n["up"] for n in nodes)
    t = Text()
    t.append("rain top  ", style="bold")
    t.append(f"{me.get('peer_id', '?')}  ")
    t.append(str(me.get("state", "?")), style=STATE_COLORS.get(me.get("state", ""), ""))
    t.append(f"  ·  {up} up" + (f", {len(nodes) - up} left" if len(nodes) > up else ""))
    t.append(
        f"\ncredit {credit.get('balance', 0):.2f} (earned {credit.get('earned', 0):.2f}, "
        f"spent {credit.get('spent', 0):.2f})  ·  lending: {policy.get('lend', '?')}, "
        + ("accepts guests" if policy.get("accepts") else "refuses guests")
        + f": {policy.get('reason', '')}"
    )
    return t


def _lights(n: dict[str, Any]) -> Any:
    from rich.text import Text

    values = {
        "up": "on" if n["up"] else "off",
        "net": {"direct": "on", "relay": "blink", "off": "off"}[n["net"]],
        "temp": "on" if n["hot"] else "off",
        "user1": n["user1"],
        "user2": n["user2"],
    }
    t = Text()
    for name, value in values.items():
        color = "yellow" if name == "net" and n["net"] == "relay" else LIGHT_COLORS[name]
        if value == "off":
            t.append("○ ", style="grey42")
        else:
            t.append("● ", style=color + (" blink" if value == "blink" else ""))
    return t


def _bar(load: int) -> Any:
    from rich.text import Text

    t = Text()
    for i in range(LOAD_STEPS):
        style = "grey30" if i >= load else "red" if i >= 7 else "yellow" if i >= 5 else "green"
        t.append("▮" if i < load else "▯", style=style)
    return t


def _nodes(nodes: list[dict[str, Any]], total: int, load_bars: bool) -> Any:
    from rich.table import Table

    title = f"nodes ({total})" if total == len(nodes) else f"nodes ({len(nodes)} of {total})"
    t = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    t.add_column("node")
    t.add_column("load" if load_bars else "up net tmp u1 u2")
    t.add_column("state")
    t.add_column("CPUs", justify="right")
    t.add_column("memory", justify="right")
    t.add_column("GPUs", justify="right")
    if not load_bars:
        t.add_column("load")
    for n in nodes:
        state = n["state"] if n["up"] else "left"
        row = [
            ("* " if n["me"] else "  ") + _short(n["id"]),
            _bar(n["load"]) if load_bars else _lights(n),
            f"[{STATE_COLORS.get(state, 'grey50')}]{state}[/]",
            str(n["cpus"] if n["cpus"] is not None else "-"),
            _size(n["memory"]),
            str(n["gpus"] if n["gpus"] is not None else "-"),
        ]
        if not load_bars:
            row.append(_bar(n["load"]))
        t.add_row(*row, style=None if n["up"] else "dim")
    return t


def _elapsed(since: float, until: float | None) -> str:
    seconds = max(0, int((until or time.time()) - since))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _jobs(jobs: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="our jobs", title_justify="left", pad_edge=False)
    for name, justify in (
        ("job", "left"),
        ("command", "left"),
        ("state", "left"),
        ("worker", "left"),
        ("elapsed", "right"),
        ("CPU-s", "right"),
        ("credit", "right"),
        ("progress", "left"),
    ):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for j in jobs:
        array = j["kind"] == "array"
        finished = j["done"] + j["failed"]
        progress = ""
        if array:
            filled = round(20 * finished / j["tasks"])
            progress = "█" * filled + "░" * (20 - filled) + f" {finished}/{j['tasks']}"
        t.add_row(
            _short(j["id"]),
            (f"[{j['tasks']}] " if array else "") + j["command"][:40],
            f"[{JOB_COLORS.get(j['state'], 'default')}]{j['state']}[/]",
            f"{j['workers']} workers" if array else _short(j["worker"]),
            _elapsed(j["since"], j["until"]),
            f"{j['cpu']:.2f}",
            f"{j['credit']:.2f}",
            progress,
        )
    return t


def _guests(guests: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="running here for others", title_justify="left", pad_edge=False)
    for name in ("job", "for", "CPUs", "memory", "elapsed", "stage"):
        t.add_column(name)
    for g in guests:
        t.add_row(
            _short(g["id"]),
            _short(g["requester"]),
            f"{g['cpus']:.1f}",
            _size(g["memory"]),
            _elapsed(g["since"], None),
            g["stage"],
        )
    return t


def _groups(groups: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="MPI groups", title_justify="left", pad_edge=False)
    for name in ("group", "state", "members"):
        t.add_column(name)
    for g in groups:
        t.add_row(g["id"], g["state"], ", ".join(_short(m) for m in g["members"]))
    return t


def _exchanges(exchanges: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="recent exchanges", title_justify="left", pad_edge=False)
    for name in ("when", "with", "job", "credit", "role"):
        t.add_column(name, justify="right" if name == "credit" else "left")
    for x in exchanges:
        t.add_row(
            time.strftime("%H:%M:%S", time.localtime(x["time"])),
            _short(x["peer"]),
            _short(x["job"]),
            f"{x['amount']:+.2f}",
            x["role"],
        )
    return t
