"""`rain panel`: the URL of this node's local panel, with its token (open it in a browser).

It reads `HOME/panel.json` (written by the running node once its panel listens) and the token
in `HOME/panel.token`: no request to the node. The URL carries the token once; the page then
keeps it in a cookie and drops it from the address bar.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from node.cli import CliError
from node.home import resolve_home
from node.panel import access


def register(sub: Any) -> None:
    p = sub.add_parser("panel", help="the URL of this node's local panel (with its token)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_panel)


def cmd_panel(args: argparse.Namespace) -> int:
    home = resolve_home(args.home)
    info = access.read_info(home)
    if info is None:
        raise CliError(
            f"no panel is running with home {home} (start rain-node; --no-panel turns it off)"
        )
    try:
        token = (home / access.TOKEN_FILE).read_text().strip()
    except OSError as exc:
        raise CliError(f"cannot read the panel's token: {exc.strerror}") from None
    url = info.login_url(token)
    if args.json:
        print(json.dumps({"url": info.url, "login_url": url, "pid": info.pid}, indent=2))
    else:
        print(url)
    return 0
