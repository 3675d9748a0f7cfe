"""`rain light user1|user2 off|on|blink`: set one of this node's user lights.

Like the programmer-chosen LEDs of a hardware front panel: the light travels in the node's
signed record, so every panel (the web page, `rain top`, a hardware front panel) shows it. A
guest job sets its worker's lights by writing `user1=on` to `.rain-lights` in its working
directory (node.panel.lights); while it runs, its choice is shown instead of this one.
"""

from __future__ import annotations

import argparse
from typing import Any

from node.cli.status import ask

WHICH = ("user1", "user2")
LIGHTS = ("off", "on", "blink")


def register(sub: Any) -> None:
    p = sub.add_parser("light", help="set one of this node's user lights: off, on or blink")
    p.add_argument("which", choices=WHICH, help="which light")
    p.add_argument("light", choices=LIGHTS, help="what it shows")
    p.set_defaults(func=cmd_light)


def cmd_light(args: argparse.Namespace) -> int:
    answer = ask(args, "light", which=args.which, light=args.light)
    print(f"{answer['which']}: {answer['light']}")
    return 0
