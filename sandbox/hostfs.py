"""What of the host's file system a job sees: /usr and a few /etc files, read-only, nothing else.

Both backends show an argv-only job the same view: the host's /usr (its programs and libraries),
the top-level links or directories that lead into it (/bin, /lib...), and the handful of /etc files
programs need to start (the dynamic linker's cache, Debian's alternatives links, time zone, TLS
roots). No home directories, no /var, not the host's /etc/passwd (the job gets a minimal one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


@dataclass(frozen=True)
class HostFs:
    links: tuple[tuple[str, str], ...]  # (path, target) of top-level symlinks, e.g. /bin -> usr/bin
    dirs: tuple[str, ...]  # top-level directories outside /usr (systems without merged /usr)
    etc: tuple[str, ...]  # /etc entries to show read-only


def scan(root: Path = Path("/")) -> HostFs:
    links, dirs = [], []
    for top in TOP_LEVEL:
        p = root / top.lstrip("/")
        if p.is_symlink():
            links.append((top, os.readlink(p)))
        elif p.is_dir():
            dirs.append(top)
    etc = tuple(e for e in ETC_FILES if (root / e.lstrip("/")).exists())
    return HostFs(tuple(links), tuple(dirs), etc)


def passwd_lines(uid: int, gid: int) -> tuple[bytes, bytes]:
    """/etc/passwd and /etc/group for a job: itself and nobody."""
    passwd = f"job:x:{uid}:{gid}:job:/job:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    group = f"job:x:{gid}:\nnogroup:x:65534:\n"
    return passwd.encode(), group.encode()


def job_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment a job starts with: a small fixed base, then the spec's variables."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": "/job",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "USER": "job",
    }
    env.update(extra)
    return env
