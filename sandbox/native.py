"""The native backend: bubblewrap, cgroups, rlimits and seccomp, for machines without Docker.

The walls, outermost first:
- a distinct unprivileged uid per job (the launcher drops to it before bwrap runs: bwrap run by root
  with `--uid` would leave the job kernel-uid 0, RLIMIT_NPROC not biting, its files owned by root);
- bubblewrap with every namespace unshared (its own network with only a loopback, pids, mounts,
  IPC, UTS, cgroup, user), no capabilities, a read-only view of /usr and a few /etc files, and
  the job directory as /job and a private /tmp, both on the job's own file system of its disk
  limits (`sandbox.jobdir`); nothing else of the host;
- the job's cgroup: memory+swap limit (less the worker's buffers for its output), pids limit,
  CPU quota; the CPU-time counter credit is paid
  by; the freezer that suspends it;
- rlimits as a backstop (file size, core dumps, processes per uid, CPU time);
- a seccomp filter (`sandbox.seccomp_filter`) loaded by bwrap last, just before the job's exec.

The process is started stopped: a tiny shell waits on its stdin until the sandbox has moved it into
the job's cgroup and set its rlimits, and only then execs the rest of the chain, so not a single
process of the job ever runs outside its cgroup.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from sandbox import cgroups, child, hostfs, jobdir, netwall, seccomp_filter, startfail
from sandbox.config import SandboxConfig, untraversable
from sandbox.errors import BackendUnavailable, SandboxFailure
from sandbox.job import Accounting, Backend, Job
from sandbox.output import Stream
from sandbox.spec import JobSpec, Limits, Network
from sandbox.uids import UidPool, pool

# The launcher (unshare), bwrap's monitor and bwrap's init in the job's pid namespace are in the
# job's cgroup too; the job's own `pids` limit comes on top.
OVERHEAD_PIDS = 3
SMALL_INPUTS = 256 << 10
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Waits for the go-ahead on stdin (a pipe from the sandbox), then gives the job /dev/null as stdin.
# If the sandbox dies first, the pipe closes, `read` fails and nothing runs.
_LAUNCHER = 'read -r _ || exit 125; exec </dev/null; exec "$@"'
_LAUNCH_ENV = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
# Binds pairs of (source, mount point) read-only until `--`, then execs the rest.
_BINDER = (
    'while [ "$1" != -- ]; do mount -o bind,ro "$1" "$2" || exit 125; shift 2; done; '
    'shift; exec "$@"'
)


@dataclass(frozen=True)
class BwrapFds:
    """File descriptors the sandbox hands bwrap (numbers as seen by bwrap)."""

    seccomp: int
    passwd: int
    group: int
    job_dir: int
    tmp_dir: int | None = None  # /tmp on the job's own file system; None: a tmpfs of bwrap's


def bwrap_argv(
    bwrap: str,
    spec: JobSpec,
    host: hostfs.HostFs,
    uid: int,
    gid: int,
    fds: BwrapFds,
    runtime: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """The bubblewrap command line for `spec` (pure: no I/O). `runtime`: an MPI rank's
    read-only view of the node's environment, (where bwrap finds it, where the job sees it)."""
    argv = [
        bwrap,
        "--unshare-all",
        # An MPI rank keeps the host's network: it talks TCP to the group's other members
        # (only to them, and its launcher: the job's firewall, sandbox.netwall).
        *(["--share-net"] if spec.limits.network is Network.GROUP else []),
        "--unshare-user",  # --unshare-all only *tries* a user namespace; insist
        "--disable-userns",  # no nested user namespaces inside (seccomp denies them too)
        "--die-with-parent",
        "--new-session",  # no controlling terminal: no TIOCSTI into the owner's shell
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--hostname",
        "rainnet-job",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for path, target in host.links:
        argv += ["--symlink", target, path]
    for path in host.dirs:
        argv += ["--ro-bind", path, path]
    for path in host.etc:
        argv += ["--ro-bind-try", path, path]
    argv += [
        "--ro-bind-data",
        str(fds.passwd),
        "/etc/passwd",
        "--ro-bind-data",
        str(fds.group),
        "/etc/group",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    if fds.tmp_dir is None:
        # No file system of the job's own (a node that is not root): /tmp bounded by itself.
        argv += ["--size", str(spec.limits.disk), "--perms", "1777", "--tmpfs", "/tmp"]
    else:
        argv += ["--bind-fd", str(fds.tmp_dir), "/tmp"]
    argv += [
        "--bind-fd",  # by descriptor: the job's uid need not be able to walk to the directory
        str(fds.job_dir),
        "/job",
    ]
    # After the job's own /tmp and /job: the node's environment may live below /tmp (a clone
    # there), and a bind made before them would be hidden by them.
    for source, path in runtime:
        argv += ["--ro-bind", source, path]
    argv += ["--chdir", "/job", "--clearenv"]
    for name, value in hostfs.job_env(spec.env_dict).items():
        argv += ["--setenv", name, value]
    # Last of the mounts: the root itself (a tmpfs holding the mount points) becomes read-only,
    # so /job and /tmp are the only writable places.
    argv += ["--remount-ro", "/"]
    argv += ["--cap-drop", "ALL", "--seccomp", str(fds.seccomp), "--", *spec.argv]
    return argv


@dataclass(frozen=True)
class RuntimeMount:
    """One directory of the node's environment an MPI rank sees read-only."""

    source: str  # on the host
    seen_at: str  # where bwrap finds it (a mount point the launch chain binds `source` on)
    path: str  # where the job sees it


def launcher_argv(
    tools: LaunchTools | None, uid: int, gid: int, runtime: Sequence[RuntimeMount] = ()
) -> list[str]:
    """The command that waits for the go-ahead, then runs bwrap (its argv follows) as the job.

    As root (`tools` given): `setpriv --pdeathsig` makes the chain die with the node, and
    `unshare --pid --fork` switches to the job's uid and runs bwrap as the init of a pid namespace
    of its own. That outer namespace is there for reaping: bwrap's monitor exits without waiting
    for the init of the (inner) namespace it makes, which is then orphaned, and stays a zombie
    wherever the machine's pid 1 does not reap (containers, VMs with a custom init). As an init,
    the monitor takes everything below it down and reaped when it exits. The inner namespace is
    still needed: only one owned by bwrap's user namespace lets it mount a /proc of its own (bwrap
    otherwise falls back to showing the host's /proc).
    """
    argv = ["/bin/sh", "-c", _LAUNCHER, "rainnet-job"]
    if tools is not None:
        argv += [
            tools.setpriv,
            "--pdeathsig",
            "KILL",
            "--",
        ]
        binds = [m for m in runtime if m.seen_at != m.source]
        if binds:
            # Still root, in a mount namespace of its own: the binds bwrap could not make.
            argv += [tools.unshare, "--mount", "--", "/bin/sh", "-c", _BINDER, "rainnet-binds"]
            for m in binds:
                argv += [m.source, m.seen_at]
            argv += ["--"]
        argv += [
            tools.unshare,
            "--pid",
            "--fork",
            "--kill-child=KILL",
            f"--setgid={gid}",  # also drops the supplementary groups
            f"--setuid={uid}",
            "--",
        ]
    return argv


@dataclass(frozen=True)
class LaunchTools:
    setpriv: str
    unshare: str


def rlimits(limits: Limits, *, uid_per_job: bool) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) backstops for a job; the cgroup limits are the real walls."""
    out = [
        (resource.RLIMIT_FSIZE, limits.disk, limits.disk),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, 1024, 65536),
    ]
    if uid_per_job:
        # Counted per uid: only meaningful when the uid is the job's alone.
        n = limits.pids + OVERHEAD_PIDS + 8
        out.append((resource.RLIMIT_NPROC, n, n))
    if limits.cpu_seconds is not None:
        # Per process, and it fires up to a third early on some VMs: set well above the limit the
        # cgroup watcher enforces, so it only ever catches a watcher that failed.
        soft = math.ceil(2 * limits.cpu_seconds + 5)
        out.append((resource.RLIMIT_CPU, soft, soft + 5))
    return out


def clamp_rlimit(soft: int, hard: int, current: tuple[int, int]) -> tuple[int, int]:
    """(soft, hard) no higher than the `current` (soft, hard) limits of the sandbox itself."""
    inf = resource.RLIM_INFINITY
    cur_hard = current[1]
    if cur_hard != inf:
        hard = cur_hard if hard == inf else min(hard, cur_hard)
    if hard != inf:
        soft = hard if soft == inf else min(soft, hard)
    return soft, hard


class NativeBackend(Backend):
    name = "native"
    launcher_words = startfail.LauncherWords(
        start=b"bwrap: execvp ", before=rb"bwrap: execvp ", after=rb": ", exit_codes=frozenset({1})
    )

    def __init__(
        self,
        config: SandboxConfig,
        *,
        bwrap: str,
        tools: LaunchTools | None,
        layout: cgroups.CgroupLayout,
        host: hostfs.HostFs,
    ) -> None:
        super().__init__(config)
        self.bwrap = bwrap
        self.tools = tools  # None when not root: no uid switch, bwrap makes the namespaces
        self.layout = layout
        self.host = host
        self.uids: UidPool = pool(config.uid_base, config.uid_count)
        self.walls = netwall.Walls()  # the walls of group jobs admitted (node.mpi.member)
        self.wall = netwall.WallStatus(netwall.WallKind.HOST_NETWORK, "MPI ranks not taken")

    @classmethod
    async def open(cls, config: SandboxConfig) -> NativeBackend:
        """The backend, after checking every part of it works here; else BackendUnavailable."""
        bwrap = shutil.which("bwrap", path=SYSTEM_PATH)
        if bwrap is None:
            raise BackendUnavailable("bubblewrap is not installed (Debian package: bubblewrap)")
        tools = None
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv", path=SYSTEM_PATH)
            unshare = shutil.which("unshare", path=SYSTEM_PATH)
            if setpriv is None or unshare is None:
                raise BackendUnavailable("setpriv/unshare are missing (Debian package: util-linux)")
            tools = LaunchTools(setpriv, unshare)
        try:
            layout = cgroups.detect_layout()
        except OSError as exc:
            raise BackendUnavailable(f"cannot read the cgroup mounts: {exc}") from exc
        missing = layout.missing()
        if missing:
            raise BackendUnavailable(f"no cgroup controller for {', '.join(missing)}")
        try:
            cgroups.ensure_parent(layout, config.cgroup_base, cgroups.NEEDED)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot create cgroups under {config.cgroup_base} ({exc.strerror}): "
                "run the node as root or give it a delegated cgroup"
            ) from exc
        if tools is not None and (blocked := untraversable(config.workdir)) is not None:
            raise BackendUnavailable(
                f"job directories under {config.workdir} are out of the job users' reach "
                f"({blocked} is closed to other users): choose a work directory they can walk to"
            )
        try:
            seccomp_filter.bpf_program()
        except Exception as exc:
            raise BackendUnavailable(f"cannot build the seccomp filter: {exc}") from exc
        backend = cls(config, bwrap=bwrap, tools=tools, layout=layout, host=hostfs.scan())
        if config.policy.allow_group:
            backend.wall = await trio.to_thread.run_sync(backend._probe_wall)
        await backend._smoke_test()
        return backend

    def _probe_wall(self) -> netwall.WallStatus:
        v2 = self.layout.v2
        try:
            # The v2 parent of our jobs exists from the start, so that the walls of other nodes'
            # ranks on this machine (members of one group) let their ranks reach ours.
            cgroups.ensure_parent(self.layout, self.config.cgroup_base, (cgroups.FIREWALL,))
        except OSError as exc:
            return netwall.WallStatus(netwall.WallKind.HOST_NETWORK, f"cgroup v2: {exc}")
        return netwall.probe(None if v2 is None else v2.mount, self.config.cgroup_base)

    def wall_target(self, job_id: str) -> netwall.Target:
        """Where a group job's wall goes: its table and its cgroup v2 (blocking: it lists the
        v2 root for the parents of every node's ranks here)."""
        v2 = self.layout.v2
        relpath = self.config.cgroup_base / job_id
        cgroup = None if v2 is None else netwall.nft_cgroup(v2.mount, relpath)
        if v2 is None or cgroup is None:
            raise SandboxFailure("no cgroup v2 that nftables can name: no rank's wall here")
        table = netwall.table_name(self.config.cgroup_name, job_id)
        try:
            names = [e.name for e in os.scandir(v2.mount) if e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            raise SandboxFailure(f"cannot list {v2.mount}: {exc}") from exc
        parents = netwall.rank_parents(v2.mount, names)
        return netwall.Target(table, cgroup, len(relpath.parts), parents, netwall.mark_of(table))

    async def _smoke_test(self) -> None:
        # The whole chain once (uid switch, user namespace, mounts, seccomp, cgroup): bwrap
        # fails here, not in the middle of a stranger's job, when user namespaces are disabled.
        spec = JobSpec.create(["/bin/sh", "-c", "exit 0"], limits=Limits(wall_seconds=30))
        try:
            result = await self.run(spec, job_id=f"probe-{os.getpid()}", _own_probe=True)
        except (SandboxFailure, OSError) as exc:
            raise BackendUnavailable(f"bubblewrap sandbox does not start: {exc}") from exc
        if not result.ok:
            err = result.stderr.decode(errors="replace").strip()
            raise BackendUnavailable(f"bubblewrap sandbox does not start: {err or result.reason}")

    def _check_supported(self, spec: JobSpec) -> None:
        if spec.image is not None:
            raise BackendUnavailable(
                "the native backend runs the host's programs, not images; this job needs docker"
            )
        if spec.limits.network is Network.GROUP and self.wall.kind is not netwall.WallKind.FIREWALL:
            # No rank runs with the host's whole network: it could reach the node's own ports,
            # the owner's LAN (router, printer, NAS) and beyond, which the owner lending idle CPU
            # never agreed to. Such a node does not advertise MPI at all (node.daemon).
            raise BackendUnavailable(f"MPI ranks: {self.wall.describe()}")
        if spec.limits.network not in (Network.NONE, Network.GROUP):
            raise BackendUnavailable(
                "the native backend cannot give a job network access without the host's loopback"
            )
        if spec.limits.gpus:
            raise BackendUnavailable("GPU jobs are not supported by the native backend")

    def _new_job(self, spec: JobSpec, job_id: str, result_dir: Path | None) -> Job:
        return NativeJob(self, spec, job_id, result_dir)


class NativeJob(Job):
    backend: NativeBackend

    def __init__(
        self, backend: NativeBackend, spec: JobSpec, job_id: str, result_dir: Path | None
    ) -> None:
        super().__init__(backend, spec, job_id, result_dir)
        self.backend = backend
        self._cgroup: cgroups.JobCgroup | None = None
        self._proc: child.ChildProcess | None = None
        self._peak_sampled = 0
        self._wall_table: str | None = None

    async def _launch(self) -> None:
        b = self.backend
        lim = self.spec.limits
        rank = lim.network is Network.GROUP
        wall = b.walls.take(self.spec) if rank else None
        if rank and wall is None:
            raise SandboxFailure("an MPI rank job without its group's network wall")
        uid = self.uid = b.uids.acquire()
        gid = uid
        args = (
            self._config.workdir,
            self.id,
            self.spec.inputs,
            uid,
            gid,
            self.staged_inputs,
            jobdir.DiskLimits.of(lim),
        )
        if self.staged_inputs or sum(len(f.data) for f in self.spec.inputs) > SMALL_INPUTS:
            self._dir = await trio.to_thread.run_sync(jobdir.prepare, *args)
        else:
            # A few small files take microseconds to write: not worth a thread round trip,
            # which is most of a trivial job's start-up cost.
            self._dir = jobdir.prepare(*args)
        self._cgroup = cgroups.JobCgroup.create(
            b.layout,
            self.cgroup_path,
            cgroups.CgroupLimits(
                memory=lim.job_memory, pids=lim.pids + OVERHEAD_PIDS, cpus=lim.cpus
            ),
            (*cgroups.NEEDED, cgroups.FIREWALL) if rank else cgroups.NEEDED,
        )
        passwd, group = hostfs.passwd_lines(uid, gid)
        child_fds: list[int] = []
        go_read, go_write = os.pipe()
        try:
            child_fds.append(go_read)
            fds = BwrapFds(
                seccomp=_data_fd(seccomp_filter.bpf_program(), child_fds),
                passwd=_data_fd(passwd, child_fds),
                group=_data_fd(group, child_fds),
                job_dir=_keep(_open_dir(self._dir.path), child_fds),
                tmp_dir=None
                if self._dir.tmp is None
                else _keep(_open_dir(self._dir.tmp), child_fds),
            )
            runtime = self._runtime_mounts()
            argv = launcher_argv(b.tools, uid, gid, runtime) + bwrap_argv(
                b.bwrap, self.spec, b.host, uid, gid, fds, [(m.seen_at, m.path) for m in runtime]
            )
            # From this thread, not a worker thread: the chain's parent-death signal follows
            # the thread that forks it (sandbox.child).
            self._proc = child.spawn(argv, stdin=go_read, pass_fds=child_fds[1:], env=_LAUNCH_ENV)
        finally:
            for fd in child_fds:
                os.close(fd)
        cgroup, pid = self._cgroup, self._proc.pid

        def confine_and_go() -> None:
            if wall is not None:
                # Before the go: not one packet of the job's leaves without its wall.
                target = b.wall_target(self.id)
                self._wall_table = target.table
                netwall.install(netwall.render(wall, target))
            # The launcher is blocked in `read`: it has not forked, so moving it moves the job.
            # In a thread: moving a task between cgroup v1 hierarchies waits for RCU grace
            # periods in the kernel: ~11 ms a job on this 2-core machine while nodes worked
            # beside it (the whole start takes 2.4 ms on an idle one), all of it a stall of
            # the node's event loop if done there.
            cgroup.attach(pid)
            for res, soft, hard in rlimits(lim, uid_per_job=b.tools is not None):
                # Only ever lower: without CAP_SYS_RESOURCE (root in a container) raising fails.
                soft, hard = clamp_rlimit(soft, hard, resource.getrlimit(res))
                resource.prlimit(pid, res, (soft, hard))
            os.write(go_write, b"go\n")

        try:
            await trio.to_thread.run_sync(confine_and_go)
        finally:
            os.close(go_write)

    def _runtime_mounts(self) -> list[RuntimeMount]:
        """An MPI rank's view of the node's environment: where bwrap (as the job's uid) finds
        each directory. The node's Python may sit under a directory the job's uid cannot walk
        (/root is 0700), which bwrap's own binds (even by descriptor) refuse: as root, the
        launch chain binds it first onto a mount point of the job's own, in a mount namespace
        of the chain's own (gone with the job; nothing is mounted on the host)."""
        if self.spec.limits.network is not Network.GROUP:
            return []
        paths = self._config.group_runtime
        if self.backend.tools is None:  # not root: the job runs as our user, who can walk there
            return [RuntimeMount(p, p, p) for p in paths]
        base = self._runtime_dir()
        base.mkdir(mode=0o755, exist_ok=True)
        mounts = []
        for i, path in enumerate(paths):
            point = base / str(i)
            point.mkdir(mode=0o755, exist_ok=True)
            mounts.append(RuntimeMount(path, str(point), path))
        return mounts

    def _runtime_dir(self) -> Path:
        return self._config.workdir / f"{self.id}.runtime"

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        self._on_exit(await self._proc.wait())

    async def _read_output(self, feed: Callable[[Stream, bytes], None]) -> None:
        assert self._proc is not None
        proc = self._proc

        async def pump(source: trio.lowlevel.FdStream | None, stream: Stream) -> None:
            if source is None:
                return
            while not self._output.truncated(stream):
                data = await source.receive_some(READ_SIZE)
                if not data:
                    return
                feed(stream, data)
            await self._discard(source)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, proc.stdout, Stream.STDOUT)
            nursery.start_soon(pump, proc.stderr, Stream.STDERR)

    async def _discard(self, source: trio.lowlevel.FdStream) -> None:
        """Drain a pipe until the job closes it, keeping nothing: past its cap a stream is
        dropped, but still read, so a chatty job never blocks on a full pipe. Spliced to
        /dev/null in the kernel, its bytes are never copied to us, and the CPU that costs is
        billed with the job's (`drain_ns`): draining 2 GB of stdout cost the worker 1.6
        CPU-seconds billed to nobody (the job itself used 1.4)."""
        fd = source.fileno()
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)
                began = time.thread_time_ns()
                try:
                    if os.splice(fd, null, READ_SIZE, flags=os.SPLICE_F_NONBLOCK) == 0:
                        return  # the job closed it
                except BlockingIOError:
                    continue
                finally:
                    self.drain_ns += time.thread_time_ns() - began
        finally:
            os.close(null)

    async def _kill(self) -> None:
        proc = self._proc
        cg = self._cgroup
        if cg is None:
            return
        if proc is None or self.backend.tools is None:
            await trio.to_thread.run_sync(cg.kill_all)
            return
        # Everything but the launcher and bwrap's monitor: the monitor sees its init die and
        # exits with the usual 128+9, and the launcher lives to reap it (see launcher_argv).
        # Killed itself, unshare would exit 1 with a complaint in the job's stderr, and the
        # monitor would be left a zombie. Repeated, because a job killed just after its start
        # may still be growing its chain.
        deadline = trio.current_time() + 5.0
        while proc.returncode is None and trio.current_time() < deadline:
            keep = {proc.pid, *_children(proc.pid)}
            await trio.to_thread.run_sync(cg.kill_all, 5.0, keep)
            with trio.move_on_after(0.05):
                await self._exited.wait()
        if proc.returncode is None:
            proc.kill()

    async def _reap(self) -> None:
        if self._proc is None:
            return
        with trio.move_on_after(10.0):
            self._on_exit(await self._proc.wait())

    async def _freeze(self) -> None:
        assert self._cgroup is not None
        await trio.to_thread.run_sync(self._cgroup.freeze)

    async def _thaw(self) -> None:
        assert self._cgroup is not None
        await trio.to_thread.run_sync(self._cgroup.thaw)

    def _read_cpu_ns(self) -> int:
        assert self._cgroup is not None
        return self._cgroup.cpu_ns()

    def _sample(self) -> None:
        if self._cgroup is not None:
            with contextlib.suppress(OSError, ValueError):
                self._peak_sampled = max(self._peak_sampled, self._cgroup.memory_current())

    async def _account(self) -> Accounting:
        cg = self._cgroup
        assert cg is not None
        # bwrap's exit took its pid namespace down with it, but a job must never outlive its end:
        # make sure, before reading the counters and the job directory.
        if cg.procs():
            await trio.to_thread.run_sync(cg.kill_all)
        peak = cg.memory_peak()
        return Accounting(
            cpu_ns=cg.cpu_ns(),
            peak_memory=max(peak if peak is not None else 0, self._peak_sampled),
            oom_kills=cg.oom_kills(),
            pids_limit_hits=cg.pids_limit_hits(),
        )

    async def _teardown(self) -> None:
        errors: list[BaseException] = []
        if self._proc is not None:
            if self._proc.returncode is None:
                self._proc.kill()
                with trio.move_on_after(5.0):
                    await self._proc.wait()
            await self._proc.aclose()
        errors += await trio.to_thread.run_sync(self._remove_cgroup_and_dir)
        if self.uid is not None and not errors:
            # A uid whose processes or files might have survived is not handed out again.
            self.backend.uids.release(self.uid)
        if errors:
            raise errors[0]

    def _remove_cgroup_and_dir(self) -> list[BaseException]:
        # Blocking (rmtree, rmdir retries): one worker-thread trip for both.
        errors: list[BaseException] = []
        try:
            cgroups.remove_tree(self.backend.layout, self.cgroup_path)
        except Exception as exc:
            errors.append(exc)
        if self._dir is not None:
            try:
                jobdir.remove(self._dir)
            except Exception as exc:
                errors.append(exc)
        # (Mounted only in the launch chain's own namespace: here they are empty directories.)
        shutil.rmtree(self._runtime_dir(), ignore_errors=True)
        if self._wall_table is not None:
            try:
                netwall.remove(self._wall_table)
            except Exception as exc:
                errors.append(exc)
        return errors


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _data_fd(data: bytes, keep: list[int]) -> int:
    """A pipe's read end already holding `data` (small: it must fit the pipe buffer)."""
    if len(data) > 60_000:
        raise SandboxFailure(f"{len(data)} bytes do not fit a pipe buffer")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
    finally:
        os.close(write_end)
    keep.append(read_end)
    return read_end


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)


def _keep(fd: int, keep: list[int]) -> int:
    keep.append(fd)
    return fd


# A job's output is read this much at a time (its pipes are made as large: sandbox.child).
READ_SIZE = 1 << 20
