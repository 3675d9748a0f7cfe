"""The Docker backend: each job is a container of a local Docker engine, with every wall set.

A job's container has no network (unless the owner's policy allows and the job asks), a read-only
root, /job and /tmp on the job's own file system of its disk limits (`sandbox.jobdir`),
memory+swap, pids and CPU limits, no capabilities, no-new-privileges, the sandbox's seccomp
profile (the same deny list as the native backend; Docker's default leaves ptrace open), a
distinct unprivileged uid, an init process (so signals such as SIGXCPU reach the job), rlimits,
and no log driver (the sandbox reads the output itself, so a chatty job cannot fill the engine's
disk).

Its cgroup parent is a cgroup the sandbox made for the job (`rainnet/<job-id>`), holding the
memory wall and read for CPU-seconds: the engine removes the container's own cgroup the moment it
stops, but a parent keeps its dead children's usage, so the numbers credit is paid by survive the
job's death. The container's memory limit is a little looser than the parent's so that the parent's
bites first and its OOM counter records it. The pids wall is the container's own (on cgroup v1 a
refused fork is counted in the forking cgroup, whichever limit refused it), sampled while the job
runs and right before any kill.

Images are never pulled implicitly: docker-py's `containers.run()` pulls a missing image, so this
backend uses the low-level API (`inspect_image`, `create_container`, `start`) and pulls only when
the owner's policy allows. Argv-only jobs run in a tiny local image (made here with an import,
never from a registry) with the host's /usr mounted read-only: the same view the native backend
gives. The engine's calls are blocking; they run in worker threads, each bounded by the client's
timeout. Output is read from the attach socket directly with trio.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import socket
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import trio

from sandbox import cgroups, hostfs, jobdir, seccomp_filter, startfail
from sandbox.config import SandboxConfig
from sandbox.errors import BackendUnavailable, ImageUnavailable, SandboxFailure
from sandbox.job import Accounting, Backend, Job
from sandbox.output import Stream
from sandbox.spec import JobSpec, Limits, Network
from sandbox.uids import UidPool, pool

OVERHEAD_PIDS = 1  # the init process (docker-init, i.e. tini) is in the container's cgroup
MEMORY_SLACK = 4 << 20  # the container's memory limit sits above the parent's: the parent bites
LABEL = "rainnet.sandbox"
JOB_LABEL = "rainnet.job"
WAIT_POLL = 30.0  # one `wait` request at most this long; repeated until the container exits
_STREAMS = {1: Stream.STDOUT, 2: Stream.STDERR}

# The trio-stubs package types to_thread.run_sync with the old `cancellable` name; trio >= 0.23
# calls it `abandon_on_cancel`. Pass it untyped.
_run_sync = cast(Callable[..., Awaitable[Any]], trio.to_thread.run_sync)


class FrameDecoder:
    """Docker's multiplexed attach stream, decoded incrementally (pure).

    Each frame is an 8-byte header (stream id, 3 zero bytes, big-endian u32 length) and payload.
    Payload bytes are passed on as they arrive rather than after the whole frame, so a frame that
    claims 4 GiB cannot make the worker buffer it.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._stream = 0
        self._left = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        view = memoryview(data)
        while view:
            if self._left == 0:
                need = 8 - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) < 8:
                    break
                self._stream = self._header[0]
                self._left = int.from_bytes(self._header[4:8], "big")
                self._header.clear()
                continue
            take = view[: self._left]
            view = view[len(take) :]
            self._left -= len(take)
            if out and out[-1][0] == self._stream:
                out[-1] = (self._stream, out[-1][1] + bytes(take))
            else:
                out.append((self._stream, bytes(take)))
        return out


def host_image_tar(host: hostfs.HostFs) -> bytes:
    """A root file system of mount points and links into /usr (deterministic, a few KiB)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.mtime = 0
            info.linkname = link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("job", "usr", "etc", "proc", "sys", "dev"):
            add(d, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)  # the tmpfs takes the image's mode, not `mode=`
        for path, target in host.links:
            if path == "/sbin":
                # The engine mounts its init at /sbin/docker-init; through a link that would land
                # inside the read-only /usr. /usr/sbin stays on PATH.
                add("sbin", tarfile.DIRTYPE, 0o755)
            else:
                add(path.lstrip("/"), tarfile.SYMTYPE, 0o777, link=target)
        for path in host.dirs:
            add(path.lstrip("/"), tarfile.DIRTYPE, 0o755)
        add("etc/passwd", tarfile.REGTYPE, 0o644, b"nobody:x:65534:65534:nobody:/:/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"nogroup:x:65534:\n")
    return buf.getvalue()


def host_binds(host: hostfs.HostFs) -> dict[str, dict[str, str]]:
    binds = {"/usr": {"bind": "/usr", "mode": "ro"}}
    for path in (*host.dirs, *host.etc):
        binds[path] = {"bind": path, "mode": "ro"}
    return binds


def container_config(
    spec: JobSpec,
    *,
    job_id: str,
    uid: int,
    gid: int,
    job_dir: Path,
    cgroup_parent: str,
    host: hostfs.HostFs | None,
    tmp_dir: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(create_container keyword arguments, create_host_config keyword arguments) for `spec`.

    Pure: the backend turns these into API calls. `host` is given for argv-only jobs, which run in
    the host image with the host's /usr.
    """
    lim = spec.limits
    binds: dict[str, dict[str, str]] = {str(job_dir): {"bind": "/job", "mode": "rw"}}
    tmpfs = {}
    if tmp_dir is not None:
        binds[str(tmp_dir)] = {"bind": "/tmp", "mode": "rw"}
    else:
        # No file system of the job's own (a node that is not root): /tmp bounded by itself.
        tmpfs["/tmp"] = f"rw,nosuid,nodev,size={lim.disk}"
    if host is not None:
        binds.update(host_binds(host))
    env = hostfs.job_env(spec.env_dict) if host is not None else spec.env_dict | {"HOME": "/job"}
    ulimits = [
        {"name": "fsize", "soft": lim.disk, "hard": lim.disk},
        {"name": "core", "soft": 0, "hard": 0},
        # A backstop well above the pids wall: were it to bite first, the refused fork would not
        # show in the cgroup's counters.
        {"name": "nproc", "soft": 2 * lim.pids + 16, "hard": 2 * lim.pids + 16},
    ]
    if lim.cpu_seconds is not None:
        soft = math.ceil(2 * lim.cpu_seconds + 5)  # backstop only: the cgroup watcher enforces
        ulimits.append({"name": "cpu", "soft": soft, "hard": soft + 5})
    networked = lim.network is Network.INTERNET
    host_config = {
        "network_mode": "bridge" if networked else "none",
        "read_only": True,
        "tmpfs": tmpfs,
        "mem_limit": lim.job_memory + MEMORY_SLACK,
        "memswap_limit": lim.job_memory + MEMORY_SLACK,
        "pids_limit": lim.pids + OVERHEAD_PIDS,
        "nano_cpus": max(1, round(lim.cpus * 1e9)),
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges", "seccomp=" + seccomp_filter.docker_profile()],
        "init": True,
        "ulimits": ulimits,
        "cgroup_parent": cgroup_parent,
        "binds": binds,
        "log_config": {"type": "none", "config": {}},
        "ipc_mode": "private",
        "auto_remove": False,  # the sandbox inspects it after exit, then removes it
    }
    create = {
        "entrypoint": list(spec.argv),  # exactly argv: no image entrypoint in front of it
        "command": None,
        "user": f"{uid}:{gid}",
        "working_dir": "/job",
        "environment": env,
        "hostname": "rainnet-job",
        "network_disabled": not networked,
        "labels": {LABEL: "1", JOB_LABEL: job_id},
        "stdin_open": False,
        "tty": False,
    }
    return create, host_config


class DockerBackend(Backend):
    name = "docker"
    launcher_words = startfail.LauncherWords(  # the engine's init, tini
        start=b"[FATAL tini (",
        before=rb"\[FATAL tini \(\d+\)\] exec ",
        after=rb" failed: ",
        exit_codes=frozenset({126, 127}),
    )

    def __init__(
        self,
        config: SandboxConfig,
        *,
        api: Any,
        layout: cgroups.CgroupLayout,
        host: hostfs.HostFs,
        host_image: str,
    ) -> None:
        super().__init__(config)
        self.api = api  # docker.APIClient
        self.layout = layout
        self.host = host
        self.host_image = host_image
        self.uids: UidPool = pool(config.uid_base, config.uid_count)

    @classmethod
    async def open(cls, config: SandboxConfig) -> DockerBackend:
        """The backend, after checking the engine answers and every wall works; else
        BackendUnavailable."""
        url = config.resolved_docker_url()
        if not url.startswith("unix://"):
            # CPU-seconds are read from the job's cgroup on this machine; a remote engine's
            # cgroups are out of reach, so its jobs could not be metered.
            raise BackendUnavailable(f"the Docker engine at {url} is not local (unix socket)")
        if not await trio.Path(url.removeprefix("unix://")).exists():
            raise BackendUnavailable(f"no Docker engine at {url}")
        try:
            import docker
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise BackendUnavailable("the Python docker package is missing") from exc
        try:
            api = await trio.to_thread.run_sync(
                lambda: docker.APIClient(
                    base_url=url, version="auto", timeout=config.docker_timeout, max_pool_size=64
                )
            )
            info = await trio.to_thread.run_sync(api.info)
        except Exception as exc:
            raise BackendUnavailable(f"the Docker engine at {url} does not answer: {exc}") from exc
        driver = info.get("CgroupDriver", "")
        if driver != "cgroupfs":
            raise BackendUnavailable(
                f"the Docker engine uses the {driver or 'unknown'} cgroup driver; the sandbox "
                "meters jobs through cgroupfs parents (dockerd --exec-opt "
                "native.cgroupdriver=cgroupfs)"
            )
        try:
            layout = cgroups.detect_layout()
            missing = layout.missing((cgroups.MEMORY, cgroups.PIDS, cgroups.CPUACCT))
            if missing:
                raise BackendUnavailable(f"no cgroup controller for {', '.join(missing)}")
            cgroups.ensure_parent(
                layout, config.cgroup_base, (cgroups.MEMORY, cgroups.PIDS, cgroups.CPUACCT)
            )
        except OSError as exc:
            raise BackendUnavailable(f"cannot create cgroups for Docker jobs: {exc}") from exc
        host = hostfs.scan()
        tar = host_image_tar(host)
        image = f"rainnet-host:{hashlib.sha256(tar).hexdigest()[:16]}"
        try:
            await trio.to_thread.run_sync(_ensure_imported, api, image, tar)
        except Exception as exc:
            raise BackendUnavailable(f"cannot import the host image into Docker: {exc}") from exc
        backend = cls(config, api=api, layout=layout, host=host, host_image=image)
        await backend._smoke_test()
        return backend

    async def _smoke_test(self) -> None:
        # Proves the engine shares this machine's file system (the job directory bind) and its
        # cgroups (the job's CPU time lands in the parent the sandbox reads).
        spec = JobSpec.create(
            ["/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo ok > probe"],
            outputs=["probe"],
            limits=Limits(wall_seconds=60),
        )
        try:
            result = await self.run(spec, job_id=f"probe-{os.getpid()}", _own_probe=True)
        except (SandboxFailure, OSError) as exc:
            raise BackendUnavailable(f"a Docker job does not start: {exc}") from exc
        if not result.ok:
            err = result.stderr.decode(errors="replace").strip()
            raise BackendUnavailable(f"a Docker job does not start: {err or result.reason}")
        if not result.outputs:
            raise BackendUnavailable("the Docker engine does not see this machine's files")
        if result.cpu_seconds <= 0:
            raise BackendUnavailable("the Docker engine's cgroups are not this machine's")

    def _check_supported(self, spec: JobSpec) -> None:
        if spec.limits.network is Network.GROUP:
            raise BackendUnavailable("MPI ranks run in the native backend, not in Docker")
        if spec.limits.gpus:
            raise BackendUnavailable("GPU jobs are not supported yet")

    def _new_job(self, spec: JobSpec, job_id: str, result_dir: Path | None) -> Job:
        return DockerJob(self, spec, job_id, result_dir)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One blocking engine call in a worker thread (bounded by the client's timeout)."""
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def ensure_image(self, image: str) -> None:
        import docker.errors

        try:
            await self.call(self.api.inspect_image, image)
            return
        except docker.errors.ImageNotFound:
            pass
        if not self.config.policy.allow_pull:
            raise ImageUnavailable(
                f"image {image!r} is not on this worker, and its policy does not allow pulling"
            )
        try:
            await self.call(self.api.pull, image)
        except docker.errors.APIError as exc:
            raise ImageUnavailable(f"cannot pull image {image!r}: {exc}") from exc


def _ensure_imported(api: Any, image: str, tar: bytes) -> None:
    import docker.errors

    try:
        api.inspect_image(image)
    except docker.errors.ImageNotFound:
        repo, tag = image.split(":")
        api.import_image_from_data(tar, repository=repo, tag=tag)
        api.inspect_image(image)


class DockerJob(Job):
    backend: DockerBackend

    def __init__(
        self, backend: DockerBackend, spec: JobSpec, job_id: str, result_dir: Path | None
    ) -> None:
        super().__init__(backend, spec, job_id, result_dir)
        self.backend = backend
        self._cgroup: cgroups.JobCgroup | None = None
        self._container: str | None = None
        self._sock: trio.socket.SocketType | None = None
        self._oom_killed = False
        self._leaf_pids_hits = 0

    async def _launch(self) -> None:
        import docker.errors

        b = self.backend
        lim = self.spec.limits
        image = self.spec.image or b.host_image
        if self.spec.image is not None:
            await b.ensure_image(image)
        uid = self.uid = b.uids.acquire()
        self._dir = await trio.to_thread.run_sync(
            jobdir.prepare,
            self._config.workdir,
            self.id,
            self.spec.inputs,
            uid,
            uid,
            self.staged_inputs,
            jobdir.DiskLimits.of(lim),
        )
        self._cgroup = cgroups.JobCgroup.create(
            b.layout,
            self.cgroup_path,
            cgroups.CgroupLimits(memory=lim.job_memory),
            (cgroups.MEMORY, cgroups.PIDS, cgroups.CPUACCT),
        )
        create, host_config = container_config(
            self.spec,
            job_id=self.id,
            uid=uid,
            gid=uid,
            job_dir=self._dir.path,
            cgroup_parent="/" + str(self.cgroup_path),
            host=b.host if self.spec.image is None else None,
            tmp_dir=self._dir.tmp,
        )
        try:
            hc = b.api.create_host_config(**host_config)
            container = await b.call(b.api.create_container, image, host_config=hc, **create)
            self._container = container["Id"]
            # Attach before start, so not a byte of output is missed.
            raw = await b.call(
                b.api.attach_socket,
                self._container,
                params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0},
            )
            self._sock = _to_trio_socket(raw)
            await b.call(b.api.start, self._container)
        except docker.errors.APIError as exc:
            raise SandboxFailure(f"the Docker engine refused job {self.id}: {exc}") from exc

    async def _watch_exit(self) -> None:
        import requests

        b = self.backend
        while True:
            try:
                # Its own limiter: a wait can take its whole WAIT_POLL, and one per running job
                # must not starve the engine calls of the shared thread pool's 40 tokens.
                status = await _run_sync(
                    lambda: b.api.wait(self._container, timeout=WAIT_POLL),
                    abandon_on_cancel=True,
                    limiter=trio.CapacityLimiter(1),
                )
                break
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                continue
        state = await b.call(b.api.inspect_container, self._container)
        self._oom_killed = bool(state["State"].get("OOMKilled"))
        self._on_exit(int(status.get("StatusCode", state["State"].get("ExitCode", -1))))

    async def _read_output(self, feed: Callable[[Stream, bytes], None]) -> None:
        sock = self._sock
        if sock is None:
            return
        decoder = FrameDecoder()
        while data := await sock.recv(65536):
            for stream_id, payload in decoder.feed(data):
                stream = _STREAMS.get(stream_id)
                if stream is not None:
                    feed(stream, payload)

    def _sample(self) -> None:
        # On cgroup v1 a refused fork is counted in the cgroup of the process that forked, i.e.
        # the container's own, which the engine deletes when the container stops. Sample it while
        # the job runs (and right before any kill).
        if self._cgroup is None or self._container is None:
            return
        leaf = self._cgroup.dirs[cgroups.PIDS] / self._container / "pids.events"
        with contextlib.suppress(OSError, ValueError):
            hits = cgroups.parse_keyed(leaf.read_text()).get("max", 0)
            self._leaf_pids_hits = max(self._leaf_pids_hits, hits)

    async def _kill(self) -> None:
        import docker.errors

        b = self.backend
        if self._container is None:
            return
        self._sample()
        with contextlib.suppress(docker.errors.APIError):
            await b.call(b.api.kill, self._container)
        # A paused container keeps a SIGKILL pending until thawed.
        with contextlib.suppress(docker.errors.APIError):
            await b.call(b.api.unpause, self._container)

    async def _reap(self) -> None:
        if self._container is None:
            return
        with trio.move_on_after(10.0):
            await self._watch_exit()

    async def _freeze(self) -> None:
        await self.backend.call(self.backend.api.pause, self._container)

    async def _thaw(self) -> None:
        await self.backend.call(self.backend.api.unpause, self._container)

    def _read_cpu_ns(self) -> int:
        assert self._cgroup is not None
        return self._cgroup.cpu_ns()

    async def _account(self) -> Accounting:
        cg = self._cgroup
        assert cg is not None
        peak = cg.memory_peak()
        return Accounting(
            cpu_ns=cg.cpu_ns(),
            peak_memory=peak if peak is not None else 0,
            oom_kills=max(cg.oom_kills(), int(self._oom_killed)),
            pids_limit_hits=max(cg.pids_limit_hits(), self._leaf_pids_hits),
        )

    async def _teardown(self) -> None:
        import docker.errors

        b = self.backend
        errors: list[BaseException] = []
        if self._sock is not None:
            self._sock.close()
        if self._container is not None:
            try:
                await b.call(b.api.remove_container, self._container, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:
                errors.append(exc)
        try:
            await trio.to_thread.run_sync(cgroups.remove_tree, b.layout, self.cgroup_path)
        except Exception as exc:
            errors.append(exc)
        if self._dir is not None:
            try:
                await trio.to_thread.run_sync(jobdir.remove, self._dir)
            except Exception as exc:
                errors.append(exc)
        if self.uid is not None and not errors:
            b.uids.release(self.uid)
        if errors:
            raise errors[0]


def _to_trio_socket(raw: Any) -> trio.socket.SocketType:
    """The attach connection as a trio socket of our own (a duplicate of docker-py's descriptor).

    docker-py returns the connection's raw `SocketIO` (or a socket). Headers were read before the
    container started, so no output can be sitting in docker-py's buffers.
    """
    sock = getattr(raw, "_sock", raw)
    if not isinstance(sock, socket.socket):
        raise SandboxFailure(f"unexpected attach socket type {type(raw).__name__}")
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    with contextlib.suppress(Exception):
        raw.close()
    return trio.socket.from_stdlib_socket(dup)
