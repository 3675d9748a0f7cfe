"""Where a node keeps its state: `--home DIR`, else `$RAIN_HOME`, else the XDG data dir.

The same rule serves rain-node and the rain CLI, so both find the same identity, ledger and socket.
"""

from __future__ import annotations

import os
from pathlib import Path

NODE_INFO_FILE = "node.json"
CONTROL_SOCKET = "control.sock"


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get("RAIN_HOME")
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser().absolute() / "rainnet"


def ensure_home(home: Path) -> Path:
    """Create the home (user-only) if needed and return it."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home
