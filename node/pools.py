"""The pools a home has joined: their secrets, one file each in `HOME/pools/`, the user's alone.

`rain pool create` and `rain pool join` store a pool here; `rain-node --pool NAME` reads it back.
The files hold the key that admits a machine to the pool, so the directory is 0700 and each file
0600, written whole (a temporary file renamed) so a node never reads half a key.
"""

from __future__ import annotations

import os
from pathlib import Path

from node.home import ensure_home
from rainnet.pool import PoolError, PoolSecret, check_name, parse

POOLS_DIR = "pools"
SUFFIX = ".pool"


def pool_path(home: Path, name: str) -> Path:
    return home / POOLS_DIR / f"{check_name(name)}{SUFFIX}"


def write_secret_file(path: Path, secret: PoolSecret) -> None:
    """`secret` in pool-file form at `path`, mode 0600 from its creation."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.render())
    os.replace(tmp, path)


def read_secret_file(path: Path) -> PoolSecret:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise PoolError(f"{path} is not a pool file") from None
    return parse(text)


def join(home: Path, secret: PoolSecret) -> Path:
    """Store `secret` in `home`; PoolError if the home holds another key under the same name."""
    ensure_home(home)
    folder = home / POOLS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    path = pool_path(home, secret.name)
    if path.exists():
        held = read_secret_file(path)
        if held.key == secret.key:
            return path
        raise PoolError(
            f"{home} already holds a different pool named {secret.name!r} "
            f"(fingerprint {held.fingerprint()}): leave it first (`rain pool leave {secret.name}`)"
        )
    write_secret_file(path, secret)
    return path


def load(home: Path, name: str) -> PoolSecret:
    """The secret of pool `name` in `home`; PoolError telling how to join it if missing."""
    path = pool_path(home, name)
    if not path.exists():
        raise PoolError(
            f"this home ({home}) has not joined pool {name!r}: run `rain pool join FILE` with "
            f"the file `rain pool create {name}` wrote"
        )
    secret = read_secret_file(path)
    if secret.name != name:
        raise PoolError(f"{path} is the secret of pool {secret.name!r}, not {name!r}")
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return secret


def joined(home: Path) -> list[PoolSecret]:
    """Every pool the home has joined (unreadable files skipped), by name."""
    out = []
    for path in sorted((home / POOLS_DIR).glob(f"*{SUFFIX}")):
        try:
            out.append(read_secret_file(path))
        except (OSError, PoolError):
            continue
    return out


def leave(home: Path, name: str) -> bool:
    path = pool_path(home, name)
    if not path.exists():
        return False
    path.unlink()
    return True
