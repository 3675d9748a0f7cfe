"""Control groups: where each controller lives (v1, v2 or both, mixed), a job's cgroup, its limits,
its counters, freezing it, and removing it with everything in it.

The layout is read from /proc/self/mountinfo, not assumed: on hybrid machines memory, pids, CPU
accounting and freezer are bound to v1 hierarchies while the cgroup2 mount has almost nothing; on
current desktops everything is v2. A controller bound to a v1 hierarchy cannot be used on v2, so a
v1 binding wins and v2 is used for the rest. A job's cgroup is then one directory per hierarchy
used, at the same relative path (`rainnet/<job-id>`) in each.

The path math, the mountinfo parsing, what to write for a limit and how to read each counter are
plain functions over strings (tested against fake trees); `JobCgroup` does the few file operations.
cgroupfs reads and writes are in-kernel and take microseconds, so they are done directly, even from
trio code. Counters stay readable after the job's processes are gone, until `remove()`; the shared
parent (`rainnet`) keeps accumulating its dead children's CPU time, which is how the idle policy
learns the guests' total CPU use.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sandbox.errors import BackendUnavailable, SandboxFailure

# The functions the sandbox needs, and the controller providing each on v1 and v2.
MEMORY = "memory"
PIDS = "pids"
CPU = "cpu"  # bandwidth (quota)
CPUACCT = "cpuacct"  # usage counter; on v2 `cpu.stat` exists in every cgroup
FREEZER = "freezer"  # on v2 `cgroup.freeze` is core (kernel >= 5.2)
# Not a controller: a place in the v2 hierarchy, which sockets are tagged with (an MPI rank's
# network wall matches it: sandbox.netwall); on hybrid machines a v2 directory of its own.
FIREWALL = "firewall"
NEEDED = (MEMORY, PIDS, CPU, CPUACCT, FREEZER)

_V1_CONTROLLERS = frozenset(
    {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "net_prio",
        "blkio",
        "perf_event",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    }
)
_V2_CORE = frozenset({CPUACCT, FREEZER, FIREWALL})  # every v2 cgroup has them (not listed)
CFS_PERIOD_US = 100_000


# -- layout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fstype: str
    super_options: tuple[str, ...]


@dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    mount: Path
    controllers: frozenset[str]  # v1: bound here (and `name=...`); v2: available at its root


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The cgroup mounts in /proc/self/mountinfo text (see proc(5) for the format)."""
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        entries.append(MountEntry(_unescape(fields[4]), tail[0], tuple(tail[2].split(","))))
    return entries


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1 : i + 4].isdigit() and len(path[i + 1 : i + 4]) == 3:
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class CgroupLayout:
    """Every mounted cgroup hierarchy, and which one provides each controller."""

    hierarchies: tuple[Hierarchy, ...]

    @classmethod
    def from_mounts(
        cls, entries: Iterable[MountEntry], v2_controllers: Callable[[Path], frozenset[str]]
    ) -> CgroupLayout:
        found: list[Hierarchy] = []
        seen: set[frozenset[str]] = set()
        for entry in entries:
            mount = Path(entry.mount_point)
            if entry.fstype == "cgroup":
                names = frozenset(
                    o for o in entry.super_options if o in _V1_CONTROLLERS or o.startswith("name=")
                )
                if names in seen:  # the same hierarchy mounted twice
                    continue
                seen.add(names)
                found.append(Hierarchy(1, mount, names))
            elif not any(h.version == 2 for h in found):
                found.append(Hierarchy(2, mount, v2_controllers(mount)))
        return cls(tuple(found))

    def hierarchy_for(self, controller: str) -> Hierarchy | None:
        for h in self.hierarchies:
            if h.version == 1 and controller in h.controllers:
                return h
        v2 = self.v2
        if v2 is None:
            return None
        if controller in v2.controllers:
            return v2
        if controller in _V2_CORE:
            # cpu.stat and cgroup.freeze are core v2 files, but only usable where the v1 controller
            # of the same job is not bound elsewhere (checked above).
            return v2
        return None

    @property
    def v2(self) -> Hierarchy | None:
        return next((h for h in self.hierarchies if h.version == 2), None)

    def missing(self, controllers: Iterable[str] = NEEDED) -> list[str]:
        return [c for c in controllers if self.hierarchy_for(c) is None]

    def job_dirs(
        self, relpath: PurePosixPath, controllers: Iterable[str] = NEEDED
    ) -> dict[str, Path]:
        """controller -> the job's directory for it (several controllers may share one)."""
        dirs = {}
        for c in controllers:
            h = self.hierarchy_for(c)
            if h is not None:
                dirs[c] = h.mount / relpath
        return dirs

    def all_dirs(self, relpath: PurePosixPath) -> list[Path]:
        """The path in every hierarchy, including ones the sandbox does not use (for cleanup)."""
        return [h.mount / relpath for h in self.hierarchies]

    def describe(self) -> dict[str, str]:
        """controller -> "v1 <mount>" / "v2 <mount>" / "missing", for `rain sandbox check`."""
        out = {}
        for c in NEEDED:
            h = self.hierarchy_for(c)
            out[c] = "missing" if h is None else f"v{h.version} {h.mount}"
        return out


def detect_layout(mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupLayout:
    def v2_controllers(mount: Path) -> frozenset[str]:
        try:
            return frozenset((mount / "cgroup.controllers").read_text().split())
        except OSError:
            return frozenset()

    return CgroupLayout.from_mounts(parse_mountinfo(mountinfo.read_text()), v2_controllers)


# -- limits (what to write) -------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupLimits:
    memory: int | None = None  # bytes, memory + swap
    pids: int | None = None
    cpus: float | None = None  # cores of CFS bandwidth


@dataclass(frozen=True)
class Setting:
    file: str
    value: str
    optional: bool = False  # skip quietly if the kernel does not have the file (e.g. no swap)


def limit_settings(version: int, controller: str, limits: CgroupLimits) -> list[Setting]:
    """The files to write, in order, to apply `limits` for one controller on one cgroup version."""
    out: list[Setting] = []
    if controller == MEMORY and limits.memory is not None:
        m = str(limits.memory)
        if version == 1:
            # memsw is memory+swap and must be set after (and be >= ) the memory limit; it exists
            # only with swap accounting. Without it, swappiness 0 keeps the job out of swap.
            out += [
                Setting("memory.limit_in_bytes", m),
                Setting("memory.memsw.limit_in_bytes", m, optional=True),
                Setting("memory.swappiness", "0", optional=True),
            ]
        else:
            out += [
                Setting("memory.max", m),
                Setting("memory.swap.max", "0", optional=True),
                # Kill the whole job on OOM, not a random process of it: a clean verdict.
                Setting("memory.oom.group", "1", optional=True),
            ]
    elif controller == PIDS and limits.pids is not None:
        out.append(Setting("pids.max", str(limits.pids)))
    elif controller == CPU and limits.cpus is not None:
        quota = max(1000, round(limits.cpus * CFS_PERIOD_US))
        if version == 1:
            out += [
                Setting("cpu.cfs_period_us", str(CFS_PERIOD_US)),
                Setting("cpu.cfs_quota_us", str(quota)),
            ]
        else:
            out.append(Setting("cpu.max", f"{quota} {CFS_PERIOD_US}"))
    return out


def v2_enable_line(controllers: Iterable[str]) -> str:
    """What to write to a v2 parent's cgroup.subtree_control to give its children `controllers`."""
    real = sorted({c for c in controllers if c not in _V2_CORE})
    return " ".join(f"+{c}" for c in real)


# -- counters (how to read) -------------------------------------------------------------------


def parse_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.events, cpu.stat, pids.events, memory.oom_control)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


@dataclass(frozen=True)
class Mkdir:
    path: Path
    exist_ok: bool = False


@dataclass(frozen=True)
class Write:
    path: Path
    value: str
    optional: bool = False


def creation_plan(
    layout: CgroupLayout, relpath: PurePosixPath, limits: CgroupLimits, controllers: Iterable[str]
) -> list[Mkdir | Write]:
    """The directories to make and files to write, in order, to create a job's cgroup."""
    steps: list[Mkdir | Write] = []
    dirs = layout.job_dirs(relpath, controllers)
    v2 = layout.v2
    v2_controllers = [c for c, d in dirs.items() if v2 is not None and d.is_relative_to(v2.mount)]
    mounts = {h.mount for c in dirs if (h := layout.hierarchy_for(c)) is not None}
    for mount in sorted(mounts):
        enable = v2_enable_line(v2_controllers) if v2 is not None and mount == v2.mount else ""
        current = mount
        for part in relpath.parts[:-1]:
            if enable:
                # A v2 child only gets the controllers its parent lists in subtree_control, all
                # the way down from the root (optional: the root may refuse, having them already).
                steps.append(Write(current / "cgroup.subtree_control", enable, optional=True))
            current = current / part
            steps.append(Mkdir(current, exist_ok=True))
        if enable:
            steps.append(Write(current / "cgroup.subtree_control", enable, optional=True))
        steps.append(Mkdir(mount / relpath))
    for controller, d in dirs.items():
        version = 2 if controller in v2_controllers else 1
        for s in limit_settings(version, controller, limits):
            steps.append(Write(d / s.file, s.value, s.optional))
    return steps


# -- a job's cgroup ----------------------------------------------------------------------------


@dataclass
class JobCgroup:
    """One job's cgroup: a directory per hierarchy in use, all at the same relative path."""

    layout: CgroupLayout
    relpath: PurePosixPath
    dirs: dict[str, Path] = field(default_factory=dict)  # controller -> directory

    @classmethod
    def create(
        cls,
        layout: CgroupLayout,
        relpath: PurePosixPath,
        limits: CgroupLimits,
        controllers: Iterable[str] = NEEDED,
    ) -> JobCgroup:
        """Make the job's directories and apply `limits`; undo everything if any step fails."""
        wanted = list(controllers)
        missing = layout.missing(wanted)
        if missing:
            raise BackendUnavailable(
                f"no cgroup controller for {', '.join(missing)} on this machine"
            )
        cg = cls(layout, relpath, layout.job_dirs(relpath, wanted))
        try:
            for step in creation_plan(layout, relpath, limits, wanted):
                if isinstance(step, Mkdir):
                    if step.exist_ok:
                        step.path.mkdir(exist_ok=True)
                    else:
                        step.path.mkdir()
                else:
                    _write(step.path, step.value, optional=step.optional)
        except FileExistsError:
            raise SandboxFailure(
                f"cgroup {relpath} already exists (a job id used twice?)"
            ) from None
        except OSError as exc:
            cg.remove()
            raise SandboxFailure(f"cannot set up cgroup {relpath}: {exc}") from exc
        return cg

    def unique_dirs(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def _is_v2(self, controller: str) -> bool:
        v2 = self.layout.v2
        return v2 is not None and self.dirs[controller].is_relative_to(v2.mount)

    def attach(self, pid: int) -> None:
        """Move process `pid` (not yet forked further) into every directory of the job."""
        for d in self.unique_dirs():
            _write(d / "cgroup.procs", str(pid))

    # counters

    def cpu_ns(self) -> int:
        """CPU time used by the job's processes, living and dead, in nanoseconds."""
        d = self.dirs[CPUACCT]
        if self._is_v2(CPUACCT):
            return parse_keyed((d / "cpu.stat").read_text()).get("usage_usec", 0) * 1000
        return int((d / "cpuacct.usage").read_text())

    def cpu_seconds(self) -> float:
        return self.cpu_ns() / 1e9

    def memory_peak(self) -> int | None:
        """High-water mark in bytes, or None where the kernel keeps none (v2 before 5.19)."""
        d = self.dirs[MEMORY]
        name = "memory.peak" if self._is_v2(MEMORY) else "memory.max_usage_in_bytes"
        try:
            return int((d / name).read_text())
        except FileNotFoundError:
            return None

    def memory_current(self) -> int:
        d = self.dirs[MEMORY]
        name = "memory.current" if self._is_v2(MEMORY) else "memory.usage_in_bytes"
        return int((d / name).read_text())

    def oom_kills(self) -> int:
        d = self.dirs[MEMORY]
        name = "memory.events" if self._is_v2(MEMORY) else "memory.oom_control"
        return parse_keyed((d / name).read_text()).get("oom_kill", 0)

    def pids_limit_hits(self) -> int:
        return parse_keyed((self.dirs[PIDS] / "pids.events").read_text()).get("max", 0)

    def procs(self) -> list[int]:
        pids: set[int] = set()
        for d in self.unique_dirs():
            pids.update(_read_procs(d))
        return sorted(pids)

    # freezing

    def freeze(self, timeout: float = 5.0) -> None:
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = 5.0) -> None:
        self._set_frozen(False, timeout)

    def is_frozen(self) -> bool:
        d = self.dirs[FREEZER]
        if self._is_v2(FREEZER):
            return parse_keyed((d / "cgroup.events").read_text()).get("frozen", 0) == 1
        return (d / "freezer.state").read_text().strip() == "FROZEN"

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        d = self.dirs[FREEZER]
        if self._is_v2(FREEZER):
            _write(d / "cgroup.freeze", "1" if frozen else "0")
        else:
            _write(d / "freezer.state", "FROZEN" if frozen else "THAWED")
        # Freezing is asynchronous (v1 passes through FREEZING; v2 reports in cgroup.events): the
        # owner is promised the machine back, so wait until the kernel says it is done.
        _poll(lambda: self.is_frozen() == frozen, timeout, f"cgroup {self.relpath} freeze={frozen}")

    # teardown

    def kill_all(self, timeout: float = 5.0, keep: Collection[int] = ()) -> None:
        """SIGKILL every process in the job but `keep`, and wait until no other is left."""
        kill_tree(self.unique_dirs(), self.dirs.get(FREEZER), self._v2_freezer(), timeout, keep)

    def _v2_freezer(self) -> bool:
        return FREEZER in self.dirs and self._is_v2(FREEZER)

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and remove every directory of the job in every hierarchy."""
        remove_tree(self.layout, self.relpath, timeout)


def kill_tree(
    dirs: list[Path],
    freezer: Path | None,
    v2_freezer: bool,
    timeout: float,
    keep: Collection[int] = (),
) -> None:
    """SIGKILL every process in `dirs` (and their child cgroups) but `keep`, until none is left."""
    deadline = time.monotonic() + timeout
    for d in dirs if not keep else ():
        if (d / "cgroup.kill").exists():
            # v2 (kernel >= 5.14) kills the whole subtree atomically, frozen or not.
            _write(d / "cgroup.kill", "1", optional=True)
    state_file = "cgroup.freeze" if v2_freezer else "freezer.state"
    while True:
        # Freeze first so that a fork bomb cannot outrun the kill loop: frozen tasks cannot fork,
        # and their pids cannot be reused while we signal them. A v1-frozen task only dies once
        # thawed, so thaw right after signalling (a v2-frozen one dies at once).
        use_freezer = freezer is not None and freezer.exists()
        if use_freezer and freezer is not None:
            with contextlib.suppress(OSError):
                _write(freezer / state_file, "1" if v2_freezer else "FROZEN")
                if not v2_freezer:
                    with contextlib.suppress(SandboxFailure):
                        _poll(lambda: _v1_frozen(freezer), 0.5, "freeze before kill")
        pids = sorted({p for d in dirs if d.exists() for p in _read_procs_tree(d)} - set(keep))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if use_freezer and freezer is not None:
            with contextlib.suppress(OSError):
                _write(freezer / state_file, "0" if v2_freezer else "THAWED")
        if not pids:
            return
        if time.monotonic() > deadline:
            raise SandboxFailure(f"processes {pids[:10]} survived SIGKILL for {timeout:g}s")
        time.sleep(0.005)


def _v1_frozen(freezer: Path) -> bool:
    try:
        return (freezer / "freezer.state").read_text().strip() == "FROZEN"
    except FileNotFoundError:
        return True


def remove_tree(layout: CgroupLayout, relpath: PurePosixPath, timeout: float = 5.0) -> None:
    """Remove `relpath` and everything under it in every hierarchy, killing what is inside.

    Covers the directories other software made under it too (runc creates the container's cgroup
    below the job's in every hierarchy, including ones the sandbox does not use).
    """
    deadline = time.monotonic() + timeout
    roots = [d for d in layout.all_dirs(relpath) if d.exists()]
    if not roots:
        return
    freezer_h = layout.hierarchy_for(FREEZER)
    freezer = freezer_h.mount / relpath if freezer_h is not None else None
    v2 = layout.v2
    v2_freezer = freezer_h is not None and v2 is not None and freezer_h is v2
    kill_tree(roots, freezer, v2_freezer, max(0.1, deadline - time.monotonic()))
    for root in roots:
        for d in sorted(_walk_dirs(root), key=lambda p: len(p.parts), reverse=True):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY while a killed task is still exiting; anything else is real.
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise SandboxFailure(f"cannot remove cgroup {d}: {exc}") from exc
                    time.sleep(0.005)


def children(layout: CgroupLayout, base: PurePosixPath) -> set[str]:
    """Names of the cgroups directly under `base` in any hierarchy (for sweeping stale jobs)."""
    names: set[str] = set()
    for d in layout.all_dirs(base):
        try:
            names.update(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            continue
    return names


def ensure_parent(layout: CgroupLayout, base: PurePosixPath, controllers: Iterable[str]) -> None:
    """Create the shared parent (`rainnet`) of job cgroups where it is missing."""
    for c in controllers:
        h = layout.hierarchy_for(c)
        if h is not None:
            (h.mount / base).mkdir(parents=True, exist_ok=True)


def total_cpu_ns(layout: CgroupLayout, base: PurePosixPath) -> int:
    """CPU time of every job ever run under `base` since boot (dead children included)."""
    h = layout.hierarchy_for(CPUACCT)
    if h is None:
        return 0
    d = h.mount / base
    try:
        if h.version == 2:
            return parse_keyed((d / "cpu.stat").read_text()).get("usage_usec", 0) * 1000
        return int((d / "cpuacct.usage").read_text())
    except FileNotFoundError:
        return 0


# -- helpers ---------------------------------------------------------------------------------


def _write(path: Path, value: str, *, optional: bool = False) -> None:
    try:
        # No O_CREAT: cgroupfs makes its interface files itself; a missing one is a missing feature.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except (FileNotFoundError, PermissionError):
        if optional:
            return
        raise
    try:
        os.write(fd, value.encode())
    except OSError:
        if not optional:
            raise
    finally:
        os.close(fd)


def _read_procs(d: Path) -> list[int]:
    try:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        # A cgroup removed between opening its file and reading it reads ENODEV: it holds
        # no process any more (seen when a job is cancelled as its sandbox starts).
        if exc.errno == errno.ENODEV:
            return []
        raise


def _walk_dirs(root: Path) -> Iterator[Path]:
    yield root
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            yield from _walk_dirs(Path(e.path))


def _read_procs_tree(root: Path) -> list[int]:
    return [p for d in _walk_dirs(root) for p in _read_procs(d)]


def _poll(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not done():
        if time.monotonic() > deadline:
            raise SandboxFailure(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
