"""A self-test of every wall of a backend, run by `rain sandbox check`.

Each check runs a small hostile job and looks, from outside, at whether the wall held: the job
tries to reach a port listening on the host's loopback (an MPI rank too, behind its group's
network wall, where the node takes ranks), to write outside its directory, to call
ptrace, mount, keyctl and unshare, to fork past its pids limit, to allocate past its memory limit,
to write past its disk limit in files each under it, to outlast its CPU and wall limits; the
sandbox's own CPU-seconds are compared with the job's own process clock; a suspended job must use
no CPU; a cancelled job must leave nothing behind. Jobs run the host's programs (sh, bash, python3
from /usr) on both backends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from sandbox import cgroups, netwall
from sandbox.job import Backend, Job
from sandbox.result import Reason
from sandbox.spec import JobSpec, Limits, MiB, Network

PYTHON = "/usr/bin/python3"
BASH = "/usr/bin/bash"


@dataclass(frozen=True)
class WallCheck:
    name: str
    passed: bool | None  # None: could not be tested here (the detail says why)
    detail: str


_SYSCALL_PROBE = r"""
import ctypes, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def err(r):
    return 0 if r != -1 else ctypes.get_errno()
out = {}
child = os.fork()
if child == 0:
    time.sleep(10)
    os._exit(0)
out["ptrace"] = err(libc.ptrace(16, child, None, None))  # PTRACE_ATTACH to its own child
os.kill(child, 9)
os.waitpid(child, 0)
out["mount"] = err(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
keyctl = int(sys.argv[1])
out["keyctl"] = err(libc.syscall(keyctl, 0, -3, 1))  # KEYCTL_GET_KEYRING_ID, session, create
out["unshare"] = err(libc.unshare(0x10000000))  # CLONE_NEWUSER
print(json.dumps(out))
"""

_FORK_PROBE = r"""
import os, sys, time
n, kids, failure = 0, [], 0
try:
    while n < int(sys.argv[1]):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        kids.append(pid)
        n += 1
except OSError as e:
    failure = e.errno
for k in kids:
    os.kill(k, 9)
print(n, failure)
"""

_BURN = "import time\nwhile time.process_time() < {0}: pass\n"


def keyctl_number() -> int:
    import pyseccomp

    number = pyseccomp.resolve_syscall(pyseccomp.system_arch(), "keyctl")
    assert isinstance(number, int)
    return number


async def run_all(backend: Backend) -> list[WallCheck]:
    checks: list[Callable[[Backend], Awaitable[WallCheck]]] = [
        check_uid,
        check_network,
        *([check_rank_network] if backend.name == "native" else []),  # (ranks run only there)
        check_filesystem,
        check_disk,
        check_syscalls,
        check_pids,
        check_memory,
        check_cpu_accounting,
        check_cpu_limit,
        check_wall_time,
        check_suspend,
        check_cleanup,
    ]
    out = []
    for check in checks:
        try:
            out.append(await check(backend))
        except Exception as exc:
            out.append(WallCheck(check.__name__.removeprefix("check_"), False, f"error: {exc}"))
    return out


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _need_python(name: str) -> WallCheck | None:
    if not _exists(PYTHON):
        return WallCheck(name, None, f"not tested: no {PYTHON} to probe with")
    return None


async def check_uid(backend: Backend) -> WallCheck:
    r = await backend.run(JobSpec.create(["/bin/sh", "-c", "id -u"]))
    uid = r.stdout.decode().strip()
    ok = r.ok and uid.isdigit() and int(uid) != 0
    return WallCheck("uid", ok, f"job runs as uid {uid or '?'}")


async def check_network(backend: Backend) -> WallCheck:
    return await _reach_loopback(backend, "network", Network.NONE)


async def check_rank_network(backend: Backend) -> WallCheck:
    """An MPI rank (the host's network, behind its group's wall) of a group with no other
    member must not reach a port of the host's that is not a rank's."""
    from sandbox.native import NativeBackend

    assert isinstance(backend, NativeBackend)
    if backend.wall.kind is not netwall.WallKind.FIREWALL:
        return WallCheck("rank network", None, f"MPI ranks: {backend.wall.describe()}")
    return await _reach_loopback(backend, "rank network", Network.GROUP)


async def _reach_loopback(backend: Backend, name: str, network: Network) -> WallCheck:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        if _exists(BASH):
            argv = [BASH, "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED"]
        elif _exists(PYTHON):
            argv = [
                PYTHON,
                "-c",
                f"import socket; socket.create_connection(('127.0.0.1', {port}), 2); "
                "print('CONNECTED')",
            ]
        else:
            return WallCheck("network", None, "not tested: neither bash nor python3 in /usr/bin")
        spec = JobSpec.create(argv, limits=Limits(wall_seconds=20, network=network))
        if network is Network.GROUP:
            from sandbox.native import NativeBackend

            assert isinstance(backend, NativeBackend)
            backend.walls.expect(spec, netwall.Wall(frozenset()))
        r = await backend.run(spec)
    reached = b"CONNECTED" in r.stdout
    return WallCheck(
        name,
        not reached and r.exit_code != 0,
        "connecting to the host's 127.0.0.1 " + ("succeeded" if reached else "failed"),
    )


async def check_filesystem(backend: Backend) -> WallCheck:
    canary = Path(tempfile.mkdtemp(prefix="rainnet-check-"))
    try:
        os.chmod(canary, 0o1777)  # writable by anyone on the host: only invisibility protects it
        targets = ["/usr/rainnet-probe", "/etc/rainnet-probe", "/rainnet-probe", f"{canary}/x"]
        script = "; ".join(f"echo x > {t} 2>/dev/null && echo WROTE {t}" for t in targets)
        r = await backend.run(
            JobSpec.create(["/bin/sh", "-c", script + "; echo ok > /job/ok"], outputs=["ok"])
        )
        wrote = [line for line in r.stdout.decode().splitlines() if line.startswith("WROTE")]
        leaked = [t for t in (targets[0], targets[1], targets[3]) if _exists(t)]
        ok = not wrote and not leaked and len(r.outputs) == 1
        detail = "writes outside /job failed; /job is writable"
        if not ok:
            detail = f"wrote: {wrote + leaked}; /job writable: {bool(r.outputs)}"
        return WallCheck("filesystem", ok, detail)
    finally:
        shutil.rmtree(canary, ignore_errors=True)


async def check_disk(backend: Backend) -> WallCheck:
    # Four files of half the limit each, in /job and /tmp: only a total over both stops them.
    script = "for f in /job/a /tmp/b /job/c /tmp/d; do head -c 524288 </dev/zero >$f || exit; done"
    spec = JobSpec.create(["/bin/sh", "-c", script], limits=Limits(disk=1 * MiB, wall_seconds=20))
    r = await backend.run(spec)
    ok = r.reason is Reason.DISK_LIMIT
    return WallCheck("disk", ok, f"2 MiB in four files under a 1 MiB limit: {r.reason}")


async def check_syscalls(backend: Backend) -> WallCheck:
    if (skip := _need_python("syscalls")) is not None:
        return skip
    r = await backend.run(JobSpec.create([PYTHON, "-c", _SYSCALL_PROBE, str(keyctl_number())]))
    try:
        found = json.loads(r.stdout)
    except ValueError:
        return WallCheck("syscalls", False, f"probe failed: {r.stderr[-300:]!r}")
    denied = {name: code == errno.EPERM for name, code in found.items()}
    detail = ", ".join(f"{k} {'denied' if v else 'ALLOWED'}" for k, v in denied.items())
    return WallCheck("syscalls", all(denied.values()), detail)


async def check_pids(backend: Backend) -> WallCheck:
    if (skip := _need_python("pids")) is not None:
        return skip
    limit = 16
    r = await backend.run(
        JobSpec.create([PYTHON, "-c", _FORK_PROBE, str(limit * 8)], limits=Limits(pids=limit))
    )
    parts = r.stdout.decode().split()
    if len(parts) != 2:
        return WallCheck("pids", False, f"probe failed: {r.stderr[-300:]!r}")
    forked, failure = int(parts[0]), int(parts[1])
    ok = forked < limit and failure == errno.EAGAIN
    return WallCheck("pids", ok, f"limit {limit}: forked {forked} children, then errno {failure}")


async def check_memory(backend: Backend) -> WallCheck:
    if (skip := _need_python("memory")) is not None:
        return skip
    limit = 64 * MiB
    r = await backend.run(
        JobSpec.create([PYTHON, "-c", "b = b'x' * (256 << 20)"], limits=Limits(memory=limit))
    )
    ok = r.reason is Reason.OUT_OF_MEMORY and r.peak_memory <= limit + 8 * MiB
    return WallCheck("memory", ok, f"256 MiB under a 64 MiB limit: {r.reason}")


async def check_cpu_accounting(backend: Backend) -> WallCheck:
    if (skip := _need_python("cpu_accounting")) is not None:
        return skip
    r = await backend.run(JobSpec.create([PYTHON, "-c", _BURN.format(0.5)]))
    ok = r.ok and 0.5 <= r.cpu_seconds <= 0.6
    return WallCheck("cpu_accounting", ok, f"0.5 s busy loop measured {r.cpu_seconds:.3f} s")


async def check_cpu_limit(backend: Backend) -> WallCheck:
    r = await backend.run(
        JobSpec.create(["/bin/sh", "-c", "while :; do :; done"], limits=Limits(cpu_seconds=0.3))
    )
    ok = r.reason is Reason.CPU_LIMIT and 0.3 <= r.cpu_seconds <= 0.45
    return WallCheck("cpu_limit", ok, f"0.3 s CPU limit: {r.reason} at {r.cpu_seconds:.3f} s")


async def check_wall_time(backend: Backend) -> WallCheck:
    r = await backend.run(JobSpec.create(["sleep", "60"], limits=Limits(wall_seconds=0.5)))
    return WallCheck(
        "wall_time", r.reason is Reason.WALL_TIME, f"0.5 s wall limit on sleep 60: {r.reason}"
    )


async def check_suspend(backend: Backend) -> WallCheck:
    if (skip := _need_python("suspend")) is not None:
        return skip
    async with backend.open_job(JobSpec.create([PYTHON, "-c", _BURN.format(0.4)])) as job:
        with trio.fail_after(30):
            while job.cpu_seconds() < 0.1:  # noqa: ASYNC110 - a cgroup counter has no event
                await trio.sleep(0.01)
        await job.suspend()
        before = job.cpu_seconds()
        await trio.sleep(0.3)
        during = job.cpu_seconds() - before
        await job.resume()
        r = await job.wait(timeout=60)
    ok = r.ok and during < 0.005 and r.suspended_seconds >= 0.3
    return WallCheck("suspend", ok, f"{during * 1000:.1f} ms CPU while suspended; then {r.reason}")


async def check_cleanup(backend: Backend) -> WallCheck:
    spec = JobSpec.create(["/bin/sh", "-c", "sleep 60 & sleep 60 & echo up; wait"])
    async with backend.open_job(spec) as job:
        async with contextlib.aclosing(job.output()) as chunks:  # type: ignore[type-var]
            async for _chunk in chunks:
                break  # the children exist once it has spoken
        await job.cancel()
        r = await job.wait(timeout=30)
        uid = job.uid
    left = leftovers(backend, job)
    if uid is not None and uid != os.getuid():
        left += [f"process {p}" for p in processes_of_uid(uid)]
    ok = r.reason is Reason.CANCELLED and not left
    return WallCheck("cleanup", ok, "nothing left after cancel" if ok else f"left: {left}")


def leftovers(backend: Backend, job: Job) -> list[str]:
    """What of a finished job still exists: cgroup directories, its job directory."""
    layout = cgroups.detect_layout()
    left = [str(d) for d in layout.all_dirs(backend.config.cgroup_base / job.id) if d.exists()]
    job_dir = backend.config.workdir / job.id
    if job_dir.exists():
        left.append(str(job_dir))
    return left


def processes_of_uid(uid: int, *, zombies: bool = True) -> list[int]:
    """Pids of the processes whose real uid is `uid` (zombies too, unless told otherwise)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = dict(
                line.split(":", 1) for line in (entry / "status").read_text().splitlines()
            )
            if int(fields["Uid"].split()[0]) != uid:
                continue
            if not zombies and fields["State"].split()[0] == "Z":
                continue
            found.append(int(entry.name))
    return found
