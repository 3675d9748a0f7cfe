"""`rain policy [--json]`: the lending policy's signals, thresholds, the current state and why.

With a node running, it answers the control request `{"op": "policy"}` from its live state (see
`node.owner.signals.PolicyWatch.report`). Without one (or from a node that does not know the
request), the CLI computes the same report from a fresh local sample (0.5 s of CPU times) and
the home's config, as if the current load had lasted: what a node would decide right now. No
trio or libp2p import: only psutil and the standard library.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from node.cli import CliError
from node.control import channel as control
from node.home import CONTROL_SOCKET, resolve_home
from node.owner.config import ConfigError, human_duration, load_policy_config, pct
from node.units import format_size

LOCAL_WINDOW = 0.5  # seconds of CPU times behind a local reading


def register(sub: Any) -> None:
    p = sub.add_parser(
        "policy", help="when this machine is lent: signals, thresholds, state and why"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_policy)


def cmd_policy(args: argparse.Namespace) -> int:
    home = resolve_home(args.home)
    sock = home / CONTROL_SOCKET
    if sock.exists():
        try:
            report = control.request(sock, "policy", timeout=5.0)
        except control.ControlError as exc:
            report = local_report(home, f"the node did not report its policy: {exc}")
    else:
        report = local_report(home, f"no rain-node is running with home {home}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(render(report)))
    return 0


def local_report(home: Any, note: str) -> dict[str, Any]:
    """The report a node with this home's config would give now, from a fresh sample."""
    from node.owner.policy import IdlePolicy, policy_report
    from node.owner.signals import Sampler

    try:
        config = load_policy_config(home)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    sampler = Sampler(config)
    time.sleep(LOCAL_WINDOW)
    signals = sampler.sample()
    policy = IdlePolicy(config)
    policy.assume_steady(signals)
    decision = policy.step(signals, guests_running=False)
    return policy_report(
        config,
        signals,
        decision,
        node_running=False,
        note=f"{note}; computed from a fresh local sample",
    )


def render(r: dict[str, Any]) -> list[str]:
    rows: list[tuple[str, str]] = []
    state = r.get("state") or "unknown"
    if r.get("node_running"):
        since = human_duration(float(r.get("state_for") or 0.0))
        offers = "accepts guests" if r.get("start_allowed") else "refuses guests"
        rows.append(("state", f"{state} for {since} ({offers})"))
    else:
        rows.append(("node", str(r.get("note") or "not running")))
        rows.append(("would be", state))
    rows.append(("why", str(r.get("reason", ""))))
    lines = _table(rows)
    s = r.get("signals")
    if s:
        lines.append("signals:")
        lines += _table(_signal_rows(s), indent="  ")
    describe = r.get("describe") or []
    if describe:
        lines.append("thresholds:")
        lines += _table([(str(k), str(v)) for k, v in describe], indent="  ")
    transitions = r.get("transitions") or []
    if transitions:
        lines.append("recent changes:")
        for t in transitions[-10:]:
            at = time.strftime("%H:%M:%S", time.localtime(float(t.get("at") or 0)))
            action = f" [{t['action']}]" if t.get("action") not in (None, "none") else ""
            lines.append(f"  {at}  {t.get('from') or '-'} -> {t.get('to')}{action}: {t['reason']}")
    return lines


def _signal_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    idle = s.get("input_idle")
    sources = int(s.get("input_sources") or 0)
    battery = s.get("on_battery")
    temp = s.get("temperature")
    window = float(s.get("load_window") or 0.0)
    load = (
        f"{pct(s['owner_load'])} of the machine (all {pct(s.get('host_load', 0.0))}, "
        f"guests {pct(s.get('guest_load', 0.0))}; over {human_duration(window)})"
        if window > 0
        else "not measured yet"
    )
    return [
        ("owner load", load),
        (
            "owner input",
            "none: no input devices (headless)"
            if idle is None
            else f"{human_duration(float(idle))} ago ({sources} input files watched)",
        ),
        ("battery", "none" if battery is None else "ON BATTERY" if battery else "on mains"),
        ("memory", f"{format_size(int(s['memory_available']))} available"),
        ("temperature", "no sensors" if temp is None else f"{float(temp):.0f} °C"),
        ("hours", "within the lending hours" if s.get("in_schedule") else "outside the hours"),
    ]


def _table(rows: list[tuple[str, str]], indent: str = "") -> list[str]:
    width = max((len(k) for k, _ in rows), default=0) + 2
    return [f"{indent}{(k + ':').ljust(width)}{v}" for k, v in rows]
