"""Where the panel's secret and address live in the home: `panel.token` and `panel.json`.

The token is made once (32 random bytes, URL-safe) and kept in `HOME/panel.token`, mode 0600, so
a bookmarked panel URL (and the browser's cookie) outlives restarts. A token file that anyone but
its owner may read is not trusted: a new token replaces it. `panel.json` (mode 0600) says where
the running node's panel listens; the node writes it once it listens and removes it when it
stops, and `rain panel` reads both to print the URL. Plain files and the standard library only:
the CLI reads them without trio.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("rainnet.panel")

TOKEN_FILE = "panel.token"
PANEL_INFO_FILE = "panel.json"


def load_or_create_token(home: Path) -> str:
    path = home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return _new_token(path)
    with os.fdopen(fd) as f:
        mode = os.fstat(f.fileno()).st_mode
        token = f.read().strip()
    if mode & (stat.S_IRWXG | stat.S_IRWXO) or not stat.S_ISREG(mode) or len(token) < 32:
        log.warning("%s was readable by others or malformed: made a new panel token", path)
        path.unlink()
        return _new_token(path)
    return token


def _new_token(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


@dataclass(frozen=True)
class PanelInfo:
    url: str  # http://127.0.0.1:PORT
    pid: int

    def login_url(self, token: str) -> str:
        return f"{self.url}/?token={token}"


def write_info(home: Path, info: PanelInfo) -> None:
    path = home / PANEL_INFO_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": info.url, "pid": info.pid}, f)
        f.write("\n")
    tmp.replace(path)


def read_info(home: Path) -> PanelInfo | None:
    """The running panel's address; None if no panel's file is there, or its node is gone."""
    try:
        data = json.loads((home / PANEL_INFO_FILE).read_text())
        info = PanelInfo(url=str(data["url"]), pid=int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return info


def remove_info(home: Path) -> None:
    path = home / PANEL_INFO_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
