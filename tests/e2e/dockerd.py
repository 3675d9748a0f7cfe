"""A private Docker engine for tests and benchmarks, started and stopped by this process.

`dockerd` (Debian `docker.io`) runs inside `unshare --net --fork`, so its bridge and iptables rules
live in a network namespace of its own, with a private data root, exec root, pid file and unix
socket in a fresh directory. Images are made locally with `docker import` from a busybox-static
root file system: no registry is ever contacted. `stop()` ends it by pid and removes the cgroup
directories and mounts it left.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
BUSYBOX_IMAGE = "rainnet-test/busybox:1"


def missing_tools() -> list[str]:
    """Programs the private engine needs that this machine lacks."""
    need = {"dockerd": "docker.io", "unshare": "util-linux", "busybox": "busybox-static"}
    missing = [f"{tool} ({pkg})" for tool, pkg in need.items() if shutil.which(tool) is None]
    if BUSYBOX.exists() and _is_dynamic_elf(BUSYBOX):
        missing.append("a static /bin/busybox (busybox-static, not busybox)")
    return missing


def _is_dynamic_elf(path: Path) -> bool:
    """Whether an ELF64 little-endian executable asks for a program interpreter (PT_INTERP)."""
    data = path.read_bytes()[:65536]
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return True
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off : off + 4], "little") == 3:  # PT_INTERP
            return True
    return False


class Dockerd:
    def __init__(self) -> None:
        # Short path: the socket's path must fit in sun_path (108 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="rn-dockerd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.pidfile = self.root / "dockerd.pid"
        self.log = self.root / "dockerd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._cgroups_before = _cgroup_dirs()

    def start(self, timeout: float = 60.0) -> None:
        cmd = [
            "unshare",
            "--net",
            "--fork",
            "--",
            "dockerd",
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.pidfile),
            "-H",
            self.url,
            "--storage-driver",
            "overlay2",
        ]
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dockerd exited at start:\n{self.log_tail()}")
            if self.socket.exists() and self._ping():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd not ready after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _ping(self) -> bool:
        import docker

        try:
            client = docker.APIClient(base_url=self.url, version="1.41", timeout=2)
            return bool(client.ping())
        except Exception:
            return False

    def api(self) -> Any:
        import docker

        return docker.APIClient(base_url=self.url, version="auto", timeout=60)

    def import_busybox(self, tag: str = BUSYBOX_IMAGE) -> str:
        """Make a busybox-static image locally (`docker import`), with /tmp 1777 and nobody."""
        self.api().import_image_from_data(
            busybox_rootfs_tar(), repository=tag.split(":")[0], tag=tag.split(":")[1]
        )
        return tag

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the engine by pid (SIGTERM, then SIGKILL), then remove what it left."""
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().strip())
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # The whole session (unshare, dockerd, containerd, shims) was started by us.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        if pid is not None:
            _wait_gone(pid, 10.0)
        _unmount_under(self.root)
        # Only the engine's own cgroups (named `docker`), and only ones it made: other software on
        # this machine may be creating cgroups of its own at the same time.
        for d in sorted(_cgroup_dirs() - self._cgroups_before, key=len, reverse=True):
            if "/docker" in d:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
        shutil.rmtree(self.root, ignore_errors=True)


def busybox_rootfs_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.linkname = link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "etc", "job", "proc", "sys", "dev"):
            add(d, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        applets = subprocess.run(
            [str(BUSYBOX), "--list"], capture_output=True, check=True, text=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, b"nobody:x:65534:65534:nobody:/:/bin/sh\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"nogroup:x:65534:\n")
    return buf.getvalue()


def _cgroup_dirs() -> set[str]:
    """Top two levels of cgroup directories in every hierarchy (where an engine makes its own)."""
    out: set[str] = set()
    root = Path("/sys/fs/cgroup")
    for h in root.iterdir() if root.exists() else ():
        if not h.is_dir():
            continue
        for d in h.iterdir():
            if d.is_dir():
                out.add(str(d))
                out.update(str(e) for e in d.iterdir() if e.is_dir())
    return out


def _unmount_under(root: Path) -> None:
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(str(root) + "/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
