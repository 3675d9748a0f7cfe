"""What only the native backend has to show: a node that dies takes its jobs with it, `sweep()`
clears what only a live node could remove, and choosing backends when some cannot isolate."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import trio

from sandbox import cgroups, select, sweep
from sandbox.errors import BackendUnavailable, PolicyRefused, SandboxFailure, SpecError
from sandbox.job import Backend, Job
from sandbox.policy import WorkerPolicy
from sandbox.result import JobResult, Reason
from sandbox.selftest import processes_of_uid
from sandbox.spec import JobSpec, Limits
from tests.e2e.dockerd import Dockerd
from tests.e2e.sandbox_helpers import make_config, run

pytest_plugins = ["tests.e2e.sandbox_fixtures"]

NODE = """
import sys, trio
from pathlib import Path
from sandbox.config import SandboxConfig
from sandbox.native import NativeBackend
from sandbox.policy import WorkerPolicy
from sandbox.spec import JobSpec, Limits

async def main():
    backend = await NativeBackend.open(SandboxConfig(workdir=Path(sys.argv[1])))
    spec = JobSpec.create(["sh", "-c", "sleep 300 & (sleep 300 &); echo up; wait"])
    async with backend.open_job(spec, job_id="crashed") as job:
        async for _chunk in job.output():
            break
        print(job.uid, flush=True)
        await trio.sleep(300)

trio.run(main)
"""


def wait_until(done: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_dead_node_takes_its_job_down_and_sweep_clears_the_rest(
    native_backend: Backend, sandbox_root: Path
) -> None:
    config = make_config(sandbox_root / "crash")
    node = subprocess.Popen(
        [sys.executable, "-c", NODE, str(config.workdir)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent.parent,
    )
    try:
        assert node.stdout is not None
        uid = int(node.stdout.readline())
        assert processes_of_uid(uid)
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait(10)
    # Every link of the launch chain carries a parent-death signal. (Zombies are the machine's
    # init's to reap once their parent is gone; this VM's init does not, so they are not counted.)
    assert wait_until(lambda: not processes_of_uid(uid, zombies=False), 10)
    layout = cgroups.detect_layout()
    left = [d for d in layout.all_dirs(config.cgroup_base / "crashed") if d.exists()]
    assert left and (config.workdir / "crashed").exists()  # a live node's to remove: it died
    report = sweep(config)
    assert "crashed" in report.cgroups and report.job_dirs == ["crashed"] and not report.errors
    assert not any(d.exists() for d in layout.all_dirs(config.cgroup_base / "crashed"))
    assert list(config.workdir.iterdir()) == []


def test_a_job_directory_out_of_the_job_users_reach_is_refused(sandbox_root: Path) -> None:
    from sandbox.native import NativeBackend

    closed = sandbox_root / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(BackendUnavailable, match="closed to other users"):
        run(NativeBackend.open, make_config(closed))


def test_auto_picks_docker_then_native_and_says_when_nothing_isolates(
    native_backend: Backend, dockerd: Dockerd, sandbox_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_docker = make_config(sandbox_root / "auto", docker_url=dockerd.url)
    assert run(select.open_backend, with_docker).name == "docker"
    no_engine = make_config(sandbox_root / "auto", docker_url="unix:///nonexistent/docker.sock")
    assert run(select.open_backend, no_engine).name == "native"

    async def image_job() -> str:
        spec = JobSpec.create(["true"], image="rainnet-test/busybox:1")
        return (await select.open_backend(no_engine, for_spec=spec)).name

    with pytest.raises(BackendUnavailable, match="native backend runs the host's programs"):
        run(image_job)
    # A machine without bubblewrap (as the native backend looks for it) and without an engine.
    monkeypatch.setattr("sandbox.native.SYSTEM_PATH", str(sandbox_root / "empty"))
    with pytest.raises(BackendUnavailable) as info:
        run(select.open_backend, no_engine)
    message = str(info.value)
    assert "no sandbox backend can isolate jobs on this machine" in message
    assert "bubblewrap is not installed" in message and "no Docker engine" in message
    assert "refuse other people's jobs" in message
    _, report = run(select.probe, no_engine)
    assert [(a.name, a.available) for a in report] == [("docker", False), ("native", False)]


def test_job_ids_are_checked_and_unique(native_backend: Backend) -> None:
    async def main() -> None:
        with pytest.raises(Exception, match="job_id"):
            await native_backend.run(JobSpec.create(["true"]), job_id="../../etc")
        async with native_backend.open_job(JobSpec.create(["sleep", "30"]), job_id="twice") as j:
            with pytest.raises(Exception, match="already running"):
                async with native_backend.open_job(JobSpec.create(["true"]), job_id="twice"):
                    pass
            await j.cancel()
        assert (await j.wait()).reason is Reason.CANCELLED
        assert native_backend.jobs() == []

    trio.run(main)


def test_jobs_run_side_by_side_each_with_its_own_uid(native_backend: Backend) -> None:
    async def main() -> list[int]:
        uids: list[int] = []

        async def one() -> None:
            r = await native_backend.run(JobSpec.create(["sh", "-c", "sleep 0.3; id -u"]))
            uids.append(int(r.stdout))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        return uids

    uids = run(main)
    assert len(set(uids)) == 4 and os.getuid() not in uids


def test_the_owners_policy_binds_jobs_not_the_backends_own_probe(sandbox_root: Path) -> None:
    from sandbox.native import NativeBackend

    strict = make_config(sandbox_root / "strict", policy=WorkerPolicy(max_memory=8 << 20))
    backend = run(NativeBackend.open, strict)
    with pytest.raises(PolicyRefused, match="memory"):
        run(backend.run, JobSpec.create(["true"]))
    assert run(backend.run, JobSpec.create(["true"], limits=Limits(memory=8 << 20))).ok


def test_staged_inputs_are_streamed_into_the_job_directory(
    native_backend: Backend, tmp_path: Path
) -> None:
    """Inputs received over the network wait on the node's disk; the job finds them in /job."""
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: too big to travel inline
    spec = JobSpec.create(["sha256sum", "data/big.bin", "small.txt"], inputs={"small.txt": b"x"})

    async def main() -> None:
        result = await native_backend.run(spec, staged_inputs=[("data/big.bin", big)])
        assert result.ok, result.stderr
        digest = hashlib.sha256(big.read_bytes()).hexdigest()
        assert f"{digest}  data/big.bin" in result.stdout.decode()
        for bad in ("../escape", "small.txt"):
            with pytest.raises(SpecError):
                await native_backend.run(spec, staged_inputs=[(bad, big)])

    trio.run(main)


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_output_buffers_are_given_back_after_the_job(native_backend: Backend) -> None:
    """Chatty jobs with big output buffers: once a job is done, what the worker holds of its
    output is its result's, and the rest of its memory comes back (the worker's RSS rose from
    0.1 to 1.3 GB and stayed there)."""
    # Above glibc's largest mmap threshold (32 MiB), so that the results' own bytes, dropped
    # here, go back to the system too: smaller ones stay in the allocator for its next use.
    size = 40_000_000
    chatty = f"head -c {size} /dev/zero; head -c {size} /dev/zero >&2"
    spec = JobSpec.create(
        ["sh", "-c", chatty], limits=Limits(memory=256 << 20, output_bytes=40 << 20)
    )

    async def held() -> tuple[Job, JobResult]:  # the job and its result, as a node holds them
        async with native_backend.open_job(spec) as job:
            return job, await job.wait()

    tracemalloc.start()
    try:
        job, result = run(held)
        traced = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(result.stdout) == len(result.stderr) == size
    assert traced < 2 * size + (8 << 20)  # the result's bytes, and no second copy of them
    del job, result

    async def three_at_once() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(native_backend.run, spec)  # the results are dropped

    gc.collect()
    before = _rss()
    for _ in range(3):
        run(three_at_once)
        gc.collect()
    assert _rss() - before < 32 << 20


def test_output_past_its_cap_is_drained_and_billed(native_backend: Backend) -> None:
    """Draining a chatty job's output past its cap cost the worker about as much CPU as the job
    billed (1.6 CPU-s for 2 GB, against the job's own 1.4), billed to nobody. Past the cap it is
    spliced away in the kernel, and what that costs the worker is billed with the job."""
    chatty = JobSpec.create(["sh", "-c", "head -c 500000000 /dev/zero"])  # 500 MB, 1 MiB cap

    async def main(spec: JobSpec) -> tuple[Job, JobResult]:
        async with native_backend.open_job(spec) as job:
            return job, await job.wait(timeout=60)

    job, result = run(main, chatty)
    assert len(result.stdout) == 1 << 20 and result.stdout_truncated
    assert job.drain_ns > 0
    print(f"500 MB past the cap: drained for {job.drain_ns / 1e9:.3f} CPU-s, billed with the job")
    quiet, _ = run(main, JobSpec.create(["sh", "-c", "echo hi"]))
    assert quiet.drain_ns == 0


REACH = """
import socket, sys
for target in sys.argv[1:]:
    ip, port = target.rsplit(":", 1)
    try:
        socket.create_connection((ip, int(port)), 3).close()
        print(target, "reached")
    except OSError as exc:
        print(target, type(exc).__name__)
"""


def test_a_ranks_wall_admits_what_it_names_refuses_the_rest_and_goes_with_it(
    sandbox_root: Path,
) -> None:
    """An MPI rank (the host's network) behind a wall naming a launcher: it reaches the
    launcher's port, not another port of this host nor an address outside the group (refused
    in the output hook: nothing leaves the machine); the table is gone with the job, and one
    a crashed node left is swept."""
    import socket

    from sandbox import netwall
    from sandbox.native import NativeBackend
    from sandbox.spec import Network

    config = make_config(
        sandbox_root / "wall", policy=WorkerPolicy(allow_group=True), cgroup_name="rainnet-wt"
    )
    backend = run(NativeBackend.open, config)
    assert isinstance(backend, NativeBackend)
    assert backend.wall.kind is netwall.WallKind.FIREWALL, backend.wall.detail
    prefix = netwall.table_prefix(config.cgroup_name)
    with (
        socket.create_server(("127.0.0.1", 0)) as other,
        socket.create_server(("127.0.0.1", 0)) as launcher,
    ):
        other_port, launcher_port = other.getsockname()[1], launcher.getsockname()[1]
        targets = [f"127.0.0.1:{launcher_port}", f"127.0.0.1:{other_port}", "198.51.100.7:80"]
        spec = JobSpec.create(
            ["/usr/bin/python3", "-c", REACH, *targets],
            limits=Limits(wall_seconds=30, network=Network.GROUP),
        )
        wall = netwall.Wall(frozenset(), launcher=netwall.Endpoint("127.0.0.1", launcher_port))
        backend.walls.expect(spec, wall)
        result = run(backend.run, spec)
    assert result.ok, result.stderr
    assert result.stdout.decode().splitlines() == [
        f"{targets[0]} reached",
        f"{targets[1]} ConnectionRefusedError",
        f"{targets[2]} ConnectionRefusedError",
    ]
    assert netwall.tables(prefix) == []
    # Without its wall, a rank does not start at all.
    bare = JobSpec.create(["/bin/true"], limits=Limits(network=Network.GROUP))
    with pytest.raises(SandboxFailure, match="network wall"):
        run(backend.run, bare)
    # A crashed node's table (here for the cgroup parent: a job's is gone with the crash) is
    # swept at its next start.
    target = backend.wall_target("crashed")
    v2 = cgroups.detect_layout().v2
    assert v2 is not None
    parent = netwall.nft_cgroup(v2.mount, config.cgroup_base)
    assert parent is not None
    netwall.install(netwall.render(wall, dataclasses.replace(target, cgroup=parent, level=1)))
    assert netwall.tables(prefix) == [target.table]
    assert sweep(config).walls == [target.table]
    assert netwall.tables(prefix) == []
    cgroups.remove_tree(cgroups.detect_layout(), config.cgroup_base)  # (this test's parent)
