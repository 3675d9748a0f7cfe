"""Where a node keeps its state: `--home DIR`, else `$RAIN_HOME`, else the XDG data dir.

The same rule serves rain-node and the rain CLI, so both find the same identity, ledger and socket.
"""

from __future__ import annotations

import os
from pathlib import Path

NODE_INFO_FILE = "node.json"
CONTROL_SOCKET = "control.sock"
MPI_LOGS_DIR = "mpi-logs"  # each MPI group's output, as `rain mpi run` saw it (`rain logs`)


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get("RAIN_HOME")
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser().absolute() / "rainnet"


class HomeError(OSError):
    """The home cannot be ours alone (another user's directory)."""


def ensure_home(home: Path) -> Path:
    """The home, created if need be, and made the user's alone: it holds the identity key, the
    ledger, job environments and results, and a home that existed with mode 0755 (made by hand,
    or by another tool) showed them all to every local user. Its mode is set to 0700 at every
    start; one that belongs to another user is refused."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = home.stat()
    if st.st_uid != os.geteuid():
        raise HomeError(
            f"{home} belongs to uid {st.st_uid}, not to this user: give a home of your own"
        )
    if st.st_mode & 0o077:
        os.chmod(home, 0o700)
    return home
