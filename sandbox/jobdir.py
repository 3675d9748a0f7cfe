"""A job's directory on the host: inputs placed before, outputs hashed and kept after, then gone;
and the file system that bounds it.

Everything a job can write is on a file system of its own: a tmpfs, mounted by the node on
`WORKDIR/<job-id>`, holding the job directory (`job/`, which is `/job` inside the sandbox) and its
`/tmp` (`tmp/`). The tmpfs's size and inode count are the job's disk limits, so the kernel refuses
(ENOSPC) the write that would go past them, for /job and /tmp together: no per-file cap to get round
with many files, no watcher to outrun. It costs a mount and an unmount (~0.2 ms); unmounting frees
everything at once, however many files the job left. One page and one inode of slack beyond the
limits tell a job that went past them (`exceeded()`) from one that filled them exactly.
A tmpfs lives in memory, and its pages are charged to the memory cgroup of the process that writes
them (measured on cgroup v1 here: memory.stat `shmem`, inodes in kmem): the job's files count
against the job's memory limit, so its disk allowance can never take more of the worker's memory
than its memory limit; inputs, written by the node, are charged to the node, bounded by the disk
limit. Mounting needs root; a node that is not root gets a plain directory, bounded per file only.

The directory is the one place a job may write, so everything read back out of it is hostile: an
output path may have become a symlink to /etc/shadow, a FIFO that blocks a reader forever, or a
directory of a million files. Collection therefore runs after every process of the job is dead,
opens each path component with O_NOFOLLOW relative to the directory above it (never by a resolved
path), takes regular files only, and is bounded in files and bytes. This is blocking file I/O; the
backends run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sandbox.errors import SandboxFailure, SpecError
from sandbox.result import OutputFile
from sandbox.spec import InputFile, Limits

MAX_OUTPUT_FILES = 10_000
MAX_OUTPUT_BYTES = 16 << 30
MAX_OUTPUT_DEPTH = 64
_CHUNK = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
OWN_INODES = 3  # of the job's file system itself: its root, job/ and tmp/
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class DiskLimits:
    """A job's file system: its bytes (whole pages) and its files, directories and links."""

    pages: int
    files: int

    @classmethod
    def of(cls, limits: Limits) -> DiskLimits:
        return cls(pages=-(-limits.disk // PAGE), files=limits.disk_files)

    def tmpfs_options(self) -> str:
        # One page and one inode of slack: using them is going past the limit (see exceeded()).
        return (
            f"size={(self.pages + 1) * PAGE},nr_inodes={self.files + OWN_INODES + 1},"
            "mode=0711,uid=0,gid=0"
        )


@dataclass(frozen=True)
class DiskUsage:
    bytes: int
    files: int


@dataclass(frozen=True)
class JobDir:
    path: Path  # the host directory that is `/job` in the sandbox
    uid: int
    gid: int
    tmp: Path | None = None  # the host directory that is `/tmp`, when it is on the job's own fs
    disk: DiskLimits | None = None  # the limits of the job's own fs (mounted on `path.parent`)


def prepare(
    workdir: Path,
    job_id: str,
    inputs: tuple[InputFile, ...],
    uid: int,
    gid: int,
    staged: tuple[tuple[str, Path], ...] = (),
    disk: DiskLimits | None = None,
) -> JobDir:
    """Create the job's directory holding its inputs, all owned by the job's uid.

    `staged` are inputs already on the node's disk (received over the network in chunks, too big
    to travel inline in the spec): (path in the job, file on the host), copied in by streaming.
    With `disk` (and root), the directory and a /tmp beside it are on a file system of their own
    with those limits; without, `WORKDIR/<job-id>` is the plain directory itself.
    """
    # 0711: job uids must walk through to their own directory, but not list the others.
    workdir.mkdir(parents=True, exist_ok=True, mode=0o711)
    root = workdir / job_id
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        raise SandboxFailure(
            f"job directory {root} already exists (a job id used twice?)"
        ) from None
    if disk is None or os.geteuid() != 0:
        jobdir = JobDir(root, uid, gid)
    else:
        jobdir = JobDir(root / "job", uid, gid, root / "tmp", disk)
    try:
        if jobdir.disk is not None:
            _mount_tmpfs(root, jobdir.disk.tmpfs_options())
            jobdir.path.mkdir(mode=0o700)
            assert jobdir.tmp is not None
            jobdir.tmp.mkdir()
            jobdir.tmp.chmod(0o1777)
            _chown(jobdir.tmp, uid, gid)
        _chown(jobdir.path, uid, gid)
        for item in inputs:
            with _create(jobdir, item.path, item.executable) as f:
                f.write(item.data)
        for rel, source in staged:
            with _create(jobdir, rel, False) as f, open(source, "rb") as src:
                shutil.copyfileobj(src, f, _CHUNK)
        if exceeded(jobdir):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as exc:
        remove(jobdir)
        if exc.errno == errno.ENOSPC and jobdir.disk is not None:
            # The submitter's to fix: the staged inputs are more than the job asked room for.
            raise SpecError(
                "inputs", f"do not fit in limits.disk and limits.disk_files: {exc}"
            ) from None
        raise SandboxFailure(f"cannot prepare the job directory {root}: {exc}") from exc
    return jobdir


def usage(jobdir: JobDir) -> DiskUsage | None:
    """What the job's files take on its own file system (None without one). A syscall: cheap."""
    if jobdir.disk is None:
        return None
    st = os.statvfs(jobdir.path.parent)
    return DiskUsage(
        bytes=(st.f_blocks - st.f_bfree) * st.f_frsize, files=st.f_files - st.f_ffree - OWN_INODES
    )


def exceeded(jobdir: JobDir) -> bool:
    """Whether the job's files went past its disk limits (into the slack: a write was refused)."""
    used = usage(jobdir)
    disk = jobdir.disk
    if used is None or disk is None:
        return False
    return used.bytes > disk.pages * PAGE or used.files > disk.files


def collect(
    jobdir: JobDir,
    outputs: tuple[str, ...],
    result_dir: Path | None,
    *,
    max_files: int = MAX_OUTPUT_FILES,
    max_bytes: int = MAX_OUTPUT_BYTES,
) -> tuple[tuple[OutputFile, ...], tuple[str, ...]]:
    """Hash (and copy into `result_dir`, if given) the regular files at `outputs`.

    Returns (files found, requested paths that held no regular file). Only call once the job's
    processes are all dead: nothing may change the directory while it is read.
    """
    found: dict[str, OutputFile] = {}
    missing: list[str] = []
    files_left, bytes_left = max_files, max_bytes
    root_fd = os.open(jobdir.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for wanted in outputs:
            taken = 0
            fd = _open_beneath(root_fd, wanted)
            if fd is None:
                missing.append(wanted)
                continue
            with contextlib.closing(_Fd(fd)):
                for rel, file_fd in _regular_files(fd, wanted, depth=0):
                    with contextlib.closing(_Fd(file_fd)):
                        size = os.fstat(file_fd).st_size
                        if rel in found or files_left <= 0 or size > bytes_left:
                            # Beyond the bounds: not collected (the job is dead, so st_size is
                            # final). Over-budget paths show up in `missing`.
                            continue
                        found[rel] = _take(file_fd, rel, result_dir)
                        files_left -= 1
                        bytes_left -= size
                        taken += 1
            if not taken:
                missing.append(wanted)
    finally:
        os.close(root_fd)
    return tuple(found.values()), tuple(missing)


def remove(jobdir: JobDir) -> None:
    """Delete the job's directory and everything the job left in it."""
    if jobdir.disk is not None:
        # Unmounting frees every file at once; the empty mount point is all that is left.
        root = jobdir.path.parent
        unmount(root)
        with contextlib.suppress(FileNotFoundError):
            root.rmdir()
        if root.exists():
            raise SandboxFailure(f"cannot remove job directory {root}")
        return

    def allow_and_retry(func: object, path: str, exc: object) -> None:
        # A job may have chmod'ed its own directories to 000; as their owner (non-root mode) we
        # can give ourselves access back. Root needs no such help.
        parent = os.path.dirname(path)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
            os.chmod(path, 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    if jobdir.path.exists():
        shutil.rmtree(jobdir.path, onerror=allow_and_retry)
    if jobdir.path.exists():
        raise SandboxFailure(f"cannot remove job directory {jobdir.path}")


def unmount(path: Path) -> None:
    """Detach the job file system mounted at `path`, if there is one."""
    if not os.path.ismount(path):
        return
    # Lazily (MNT_DETACH): a container being torn down may still hold it; it is freed when the
    # last user lets go, and the mount point is free at once.
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise SandboxFailure(f"cannot unmount {path}: {os.strerror(code)}")


# -- helpers ---------------------------------------------------------------------------------


def _mount_tmpfs(path: Path, options: str) -> None:
    flags = _MS_NOSUID | _MS_NODEV
    if _libc.mount(b"rainnet-job", os.fsencode(path), b"tmpfs", flags, options.encode()) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mounting the job's file system: {os.strerror(code)}")


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def _open_beneath(root_fd: int, rel: str) -> int | None:
    """Open `rel` under `root_fd` following no symlink; None if it is absent or a symlink."""
    parts = rel.split("/")
    current = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=current)
            os.close(current)
            current = nxt
        # O_NONBLOCK: opening a FIFO the job left must not wait for a writer.
        fd = os.open(
            parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=current
        )
    except OSError:
        return None
    finally:
        os.close(current)
    return fd


def _regular_files(fd: int, rel: str, depth: int) -> Iterator[tuple[str, int]]:
    """(relative path, open fd) of each regular file at `fd`: itself, or under it if a directory."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        yield rel, os.dup(fd)
    elif stat.S_ISDIR(st.st_mode) and depth < MAX_OUTPUT_DEPTH:
        for name in sorted(os.listdir(fd)):
            try:
                child = os.open(
                    name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=fd
                )
            except OSError:
                continue  # symlinks (ELOOP), vanished entries
            try:
                yield from _regular_files(child, f"{rel}/{name}", depth + 1)
            finally:
                os.close(child)


def _take(fd: int, rel: str, result_dir: Path | None) -> OutputFile:
    digest = hashlib.sha256()
    size = 0
    sink = None
    if result_dir is not None:
        target = result_dir.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        sink = open(target, "wb")  # noqa: SIM115 - closed in the finally below
    try:
        while chunk := os.read(fd, _CHUNK):
            size += len(chunk)
            digest.update(chunk)
            if sink is not None:
                sink.write(chunk)
    finally:
        if sink is not None:
            sink.close()
    return OutputFile(rel, size, digest.hexdigest())


@contextlib.contextmanager
def _create(jobdir: JobDir, rel: str, executable: bool) -> Iterator[BinaryIO]:
    """A new file at `rel` in the job directory (and its parents), owned by the job's uid."""
    path, uid, gid = jobdir.path, jobdir.uid, jobdir.gid
    target = path.joinpath(*rel.split("/"))
    # Parents in order, each owned by the job (paths were validated: no `..`, no leading `/`).
    for parent in reversed(target.relative_to(path).parents[:-1]):
        d = path / parent
        if not d.is_dir():
            d.mkdir(mode=0o755)
            _chown(d, uid, gid)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        yield f
        os.fchmod(f.fileno(), 0o755 if executable else 0o644)
        if os.geteuid() == 0:
            os.fchown(f.fileno(), uid, gid)


def _chown(path: Path, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, gid, follow_symlinks=False)
