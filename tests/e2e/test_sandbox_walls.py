"""Every wall bites and every verdict is right, on both backends (real bwrap, real cgroups, a real
dockerd with a locally imported busybox image).

Jobs use the host's sh and python3 (both backends show the host's /usr read-only), and busybox
in its own image on Docker. No timing assertions: CPU-seconds are compared with the job's own
process clock, and the only bounds are on counters.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import tempfile
from functools import partial
from pathlib import Path

import msgpack
import trio

from sandbox import guest_cpu_seconds, jobdir
from sandbox.job import Backend, JobState
from sandbox.output import Stream
from sandbox.result import JobResult, Reason
from sandbox.selftest import _FORK_PROBE, _SYSCALL_PROBE, keyctl_number
from sandbox.spec import InputFile, JobSpec, Limits, MiB
from tests.e2e.sandbox_helpers import BURN, PYTHON, image_for, leftovers, run

pytest_plugins = ["tests.e2e.sandbox_fixtures"]


def test_a_fork_bomb_stops_at_the_pids_limit(backend: Backend) -> None:
    # The bomb forks in a subshell of its own, and the job's shell becomes the sleep (`exec`, no
    # fork): a fork the exhausted pids limit refuses ends only a bomb's shell. (The bomb in the
    # job's own shell raced it: a slow shell whose fork was refused before its `exec sleep`
    # ended the job early, exit 2, instead of at its wall time.)
    bomb = "(bomb() { bomb | bomb & }; bomb) & exec sleep 30"
    spec = JobSpec.create(
        ["sh", "-c", bomb], image=image_for(backend), limits=Limits(pids=32, wall_seconds=2)
    )

    async def main() -> None:
        async with backend.open_job(spec) as job:
            r = await job.wait()
        assert r.pids_limit_hit
        assert r.reason is Reason.WALL_TIME
        assert leftovers(backend, job) == []

    run(main)
    # Exactly where it stops: a process that forks until refused gets fewer than `pids`.
    probe = JobSpec.create([PYTHON, "-c", _FORK_PROBE, "200"], limits=Limits(pids=16))
    r = run(backend.run, probe)
    forked, failure = map(int, r.stdout.split())
    assert (forked, failure) == (15, errno.EAGAIN)  # 15 children + the probe itself = 16


def test_a_memory_hog_is_killed_out_of_memory(backend: Backend) -> None:
    limit = 64 * MiB
    for argv, image in [
        ([PYTHON, "-c", "b = b'x' * (512 << 20)"], None),
        (["dd", "if=/dev/zero", "of=/dev/null", "bs=300M", "count=1"], image_for(backend)),
    ]:
        r = run(backend.run, JobSpec.create(argv, image=image, limits=Limits(memory=limit)))
        assert r.reason is Reason.OUT_OF_MEMORY, r
        assert r.oom_kills >= 1
        assert limit - 8 * MiB < r.peak_memory <= limit


def test_a_busy_loop_stops_at_its_wall_limit(backend: Backend) -> None:
    spec = JobSpec.create(
        ["sh", "-c", "while :; do :; done"], image=image_for(backend), limits=Limits(wall_seconds=1)
    )
    r = run(backend.run, spec)
    assert r.reason is Reason.WALL_TIME
    assert r.wall_seconds >= 1.0
    assert r.signal == signal.SIGKILL


def test_a_busy_loop_stops_at_its_cpu_limit(backend: Backend) -> None:
    spec = JobSpec.create(
        ["sh", "-c", "while :; do :; done"], image=image_for(backend), limits=Limits(cpu_seconds=1)
    )
    r = run(backend.run, spec)
    assert r.reason is Reason.CPU_LIMIT
    assert 1.0 <= r.cpu_seconds <= 1.1


def test_cpu_seconds_of_a_one_second_busy_loop(backend: Backend) -> None:
    r = run(backend.run, JobSpec.create([PYTHON, "-c", BURN.format(1.0)]))
    assert r.reason is Reason.OK
    assert 1.0 <= r.cpu_seconds <= 1.1  # 1.0 +/- 0.1, measured from the cgroup
    # Every process counts, not just the one waited for: two children of 0.5 s each.
    two = (
        "import os, time\n"
        "for _ in range(2):\n"
        "    if os.fork() == 0:\n"
        "        while time.process_time() < 0.5: pass\n"
        "        os._exit(0)\n"
        "os.wait(); os.wait()\n"
    )
    r = run(backend.run, JobSpec.create([PYTHON, "-c", two], limits=Limits(cpus=2)))
    assert r.reason is Reason.OK
    assert 1.0 <= r.cpu_seconds <= 1.1


def test_the_hosts_loopback_is_out_of_reach(backend: Backend) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), 2).close()  # it does listen
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2); print('IN')"
        r = run(backend.run, JobSpec.create([PYTHON, "-c", connect]))
        assert r.reason is Reason.NONZERO_EXIT
        assert b"ConnectionRefusedError" in r.stderr and b"IN" not in r.stdout
        nc = JobSpec.create(
            ["sh", "-c", f"nc -w 2 127.0.0.1 {port} </dev/null && echo IN; cat /proc/net/dev"],
            image=image_for(backend),
        )
        r = run(backend.run, nc)
    assert b"IN\n" not in r.stdout
    interfaces = [line.split(":")[0].strip() for line in r.stdout.decode().splitlines()[2:]]
    assert interfaces == ["lo"]  # a loopback of its own, nothing else


def test_writing_outside_the_job_directory_fails(backend: Backend) -> None:
    canary = Path(tempfile.mkdtemp(prefix="rainnet-canary-"))
    canary.chmod(0o1777)  # writable by anyone on the host: only invisibility protects it
    try:
        targets = ["/usr/x", "/etc/x", "/x", "/proc/sys/kernel/hostname", f"{canary}/x"]
        script = " ; ".join(f"(echo x > {t}) 2>/dev/null && echo WROTE {t}" for t in targets)
        script += " ; echo ok > /job/ok && echo ok > /tmp/ok && cat /tmp/ok"
        for image in (None, image_for(backend)):
            spec = JobSpec.create(["sh", "-c", script], image=image, outputs=["ok"])
            r = run(backend.run, spec)
            assert r.reason is Reason.OK
            assert b"WROTE" not in r.stdout
            assert r.stdout == b"ok\n" and [o.path for o in r.outputs] == ["ok"]
            assert list(canary.iterdir()) == []
            assert not Path("/usr/x").exists() and not Path("/etc/x").exists()
    finally:
        canary.rmdir()


def test_ptrace_mount_keyctl_and_unshare_are_denied(backend: Backend) -> None:
    r = run(backend.run, JobSpec.create([PYTHON, "-c", _SYSCALL_PROBE, str(keyctl_number())]))
    assert r.reason is Reason.OK, r.stderr
    assert json.loads(r.stdout) == {
        n: errno.EPERM for n in ("ptrace", "mount", "keyctl", "unshare")
    }
    spec = JobSpec.create(
        ["sh", "-c", "mount -t tmpfs none /tmp && echo MOUNTED"], image=image_for(backend)
    )
    r = run(backend.run, spec)
    assert b"MOUNTED" not in r.stdout and r.reason is Reason.NONZERO_EXIT


def test_a_suspended_job_uses_no_cpu_and_finishes_after_resume(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open_job(JobSpec.create([PYTHON, "-c", BURN.format(0.6)])) as job:
            with trio.fail_after(30):
                while job.cpu_seconds() < 0.2:  # noqa: ASYNC110 - polling a cgroup counter
                    await trio.sleep(0.01)
            await job.suspend()
            assert job.state is JobState.SUSPENDED
            frozen_at = job.cpu_seconds()
            await trio.sleep(0.5)
            assert job.cpu_seconds() - frozen_at < 0.005
            await job.resume()
            r = await job.wait(timeout=60)
        assert r.reason is Reason.OK
        assert r.suspended_seconds >= 0.5
        assert r.wall_seconds >= r.suspended_seconds + 0.4
        assert 0.6 <= r.cpu_seconds <= 0.7

    run(main)


def test_time_suspended_does_not_count_against_the_wall_limit(backend: Backend) -> None:
    spec = JobSpec.create(["sh", "-c", "sleep 0.6"], limits=Limits(wall_seconds=1.0))

    async def main() -> None:
        async with backend.open_job(spec) as job:
            await job.suspend()
            await trio.sleep(1.0)
            await job.resume()
            r = await job.wait(timeout=30)
        assert r.reason is Reason.OK
        assert r.wall_seconds > 1.0 and r.suspended_seconds >= 1.0

    run(main)


def test_a_cancelled_job_leaves_nothing_behind(backend: Backend) -> None:
    script = "sleep 60 & (sleep 60 &) ; echo up; echo busy > /tmp/x; wait"

    async def main(suspend_first: bool) -> None:
        spec = JobSpec.create(["sh", "-c", script], image=image_for(backend))
        async with backend.open_job(spec) as job:
            async for chunk in job.output():
                assert chunk.data == b"up\n"
                break
            assert leftovers(backend, job) != []  # it does exist, while it runs
            if suspend_first:
                await job.suspend()
            await job.cancel()
            r = await job.wait(timeout=30)
        assert r.reason is Reason.CANCELLED
        assert leftovers(backend, job) == []

    run(main, False)
    run(main, True)


def test_leaving_the_context_early_cancels_and_cleans_up(backend: Backend) -> None:
    class Boom(Exception):
        pass

    async def main() -> None:
        job = None
        try:
            async with backend.open_job(JobSpec.create(["sleep", "60"])) as job:
                raise Boom
        except Boom:
            pass
        assert job is not None and job.result is not None
        assert job.result.reason is Reason.CANCELLED
        assert leftovers(backend, job) == []

    run(main)


def test_output_streams_while_running_and_is_capped(backend: Backend) -> None:
    script = "echo first; sleep 1; head -c 100000 /dev/zero; echo err >&2"
    spec = JobSpec.create(["sh", "-c", script], limits=Limits(output_bytes=1000))

    async def main() -> None:
        async with backend.open_job(spec) as job:
            async for chunk in job.output():
                assert (chunk.stream, chunk.data) == (Stream.STDOUT, b"first\n")
                assert job.state is JobState.RUNNING  # seen before the job ended
                break
            r = await job.wait()
        assert r.reason is Reason.OK
        assert len(r.stdout) == 1000 and r.stdout_truncated
        assert r.stderr == b"err\n" and not r.stderr_truncated

    run(main)


def test_inputs_in_outputs_out_hashed_and_kept(backend: Backend, tmp_path: Path) -> None:
    script = (
        "cat data/in.txt > out.txt; ./bin/tool.sh > report/a; echo b > report/b;"
        " ln -s /etc/passwd report/c; ln -s /etc/hostname stolen"
    )
    spec = JobSpec.create(
        ["sh", "-c", f"mkdir report; {script}"],
        image=image_for(backend),
        inputs=[
            InputFile("data/in.txt", b"payload\n"),
            InputFile("bin/tool.sh", b"#!/bin/sh\necho tool\n", executable=True),
        ],
        outputs=["out.txt", "report", "stolen", "never"],
    )
    # The spec as it comes over the network.
    spec = JobSpec.from_wire(msgpack.unpackb(msgpack.packb(spec.to_wire()), raw=False))
    r = run(partial(backend.run, spec, result_dir=tmp_path / "result"))
    assert r.reason is Reason.OK, r.stderr
    assert {o.path: o.sha256 for o in r.outputs} == {
        "out.txt": hashlib.sha256(b"payload\n").hexdigest(),
        "report/a": hashlib.sha256(b"tool\n").hexdigest(),
        "report/b": hashlib.sha256(b"b\n").hexdigest(),
    }
    assert set(r.missing_outputs) == {"stolen", "never"}
    assert (tmp_path / "result/report/a").read_bytes() == b"tool\n"
    assert sorted(p.name for p in (tmp_path / "result").rglob("*")) == [
        "a",
        "b",
        "out.txt",
        "report",
    ]


def test_exit_statuses_and_signals(backend: Backend) -> None:
    image = image_for(backend)
    r = run(backend.run, JobSpec.create(["sh", "-c", "exit 3"], image=image))
    assert (r.reason, r.exit_code, r.signal) == (Reason.NONZERO_EXIT, 3, None)
    r = run(backend.run, JobSpec.create(["sh", "-c", "kill -9 $$"], image=image))
    assert (r.reason, r.signal) == (Reason.KILLED, signal.SIGKILL)
    r = run(backend.run, JobSpec.create(["sh", "-c", "id -u"], image=image))
    assert r.reason is Reason.OK and int(r.stdout) not in (0, os.getuid())


def test_guest_cpu_total_is_monotonic_and_includes_finished_jobs(backend: Backend) -> None:
    before = guest_cpu_seconds(backend.config)
    r = run(backend.run, JobSpec.create([PYTHON, "-c", BURN.format(0.3)]))
    after = guest_cpu_seconds(backend.config)
    assert after - before >= r.cpu_seconds - 1e-6 and r.cpu_seconds >= 0.3


def test_the_cpu_quota_holds_a_busy_loop_to_its_share(backend: Backend) -> None:
    spec = JobSpec.create(
        ["sh", "-c", "while :; do :; done"],
        image=image_for(backend),
        limits=Limits(cpus=0.5, wall_seconds=1.5),
    )
    r = run(backend.run, spec)
    assert r.reason is Reason.WALL_TIME
    assert r.cpu_seconds <= 0.5 * r.wall_seconds + 0.15  # a full core would be ~1.5 s


def test_the_disk_limit_bounds_every_file_and_tmp(backend: Backend) -> None:
    for target in ("/job/big", "/tmp/big"):
        script = f"head -c 3000000 /dev/zero > {target}; echo $?; ls -l {target}"
        spec = JobSpec.create(
            ["sh", "-c", script], image=image_for(backend), limits=Limits(disk=1 << 20)
        )
        r = run(backend.run, spec)
        size = int(r.stdout.split()[-5])
        assert size <= 1 << 20, (target, r)
        assert r.stdout.split()[0] != b"0"  # the write failed (SIGXFSZ or ENOSPC)


def test_the_environment_is_the_specs_and_nothing_of_the_hosts(backend: Backend) -> None:
    os.environ["RAINNET_HOST_SECRET"] = "leak"
    try:
        spec = JobSpec.create(
            ["sh", "-c", "env"], image=image_for(backend), env={"GREETING": "hello there"}
        )
        r = run(backend.run, spec)
    finally:
        del os.environ["RAINNET_HOST_SECRET"]
    env = dict(line.split("=", 1) for line in r.stdout.decode().splitlines() if "=" in line)
    assert env["GREETING"] == "hello there" and env["HOME"] == "/job"
    assert "RAINNET_HOST_SECRET" not in env


# Writes 64 KiB blocks to files of 1 MiB, in turn in each directory of argv[2] (`/job,/tmp`), until
# a write fails or it has written argv[1] MiB; prints how much it wrote and the errno it stopped at.
_FILL_BYTES = r"""
import os, sys
wrote, failure = 0, 0
dirs = sys.argv[2].split(",")
try:
    for i in range(int(sys.argv[1])):
        with open(f"{dirs[i % len(dirs)]}/f{i}", "wb") as f:
            for _ in range(16):
                wrote += f.write(b"x" * 65536)
except OSError as e:
    failure = e.errno
print(wrote, failure)
sys.exit(1 if failure else 0)
"""

# Creates empty files, alternately in /job and /tmp, until refused or argv[1] of them exist.
_FILL_FILES = r"""
import os, sys
made, failure = 0, 0
try:
    for i in range(int(sys.argv[1])):
        os.close(os.open(f"{('/job', '/tmp')[i % 2]}/e{i}", os.O_CREAT | os.O_WRONLY, 0o644))
        made += 1
except OSError as e:
    failure = e.errno
print(made, failure)
sys.exit(1 if failure else 0)
"""


def run_and_clean(backend: Backend, spec: JobSpec) -> JobResult:
    """Run `spec` and check that nothing of it is left (its file system included)."""

    async def main() -> JobResult:
        async with backend.open_job(spec) as job:
            r = await job.wait()
        assert leftovers(backend, job) == []
        return r

    result: JobResult = run(main)
    return result


def test_the_disk_limit_bounds_the_bytes_of_job_and_tmp_together(backend: Backend) -> None:
    # Every file is well under the limit: the per-file cap alone let 2.7 GB through a 1 GiB limit.
    disk = 8 * MiB
    argv = [PYTHON, "-c", _FILL_BYTES, "64", "/job,/tmp"]
    r = run_and_clean(backend, JobSpec.create(argv, limits=Limits(disk=disk)))
    wrote, failure = map(int, r.stdout.split())
    # /job and /tmp share the one limit; a page past it is how the sandbox knows it was passed.
    assert disk - MiB <= wrote <= disk + jobdir.PAGE, r
    assert failure == errno.ENOSPC
    assert r.reason is Reason.DISK_LIMIT


def test_the_disk_limit_bounds_the_number_of_files(backend: Backend) -> None:
    # 400,000 files in 12 s got through before; the default limit is 65536 files.
    r = run_and_clean(backend, JobSpec.create([PYTHON, "-c", _FILL_FILES, "100000"]))
    made, failure = map(int, r.stdout.split())
    assert 65536 - 8 <= made <= 65536 + 1, r  # (the one file past the limit, as for bytes)
    assert failure == errno.ENOSPC
    assert r.reason is Reason.DISK_LIMIT


def test_outputs_up_to_the_disk_limit_are_collected(backend: Backend, tmp_path: Path) -> None:
    disk = 8 * MiB
    script = f"head -c {disk - 64 * 1024} /dev/zero > out.bin && echo small > /tmp/x"
    spec = JobSpec.create(
        ["sh", "-c", script],
        image=image_for(backend),
        outputs=["out.bin"],
        limits=Limits(disk=disk),
    )
    r = run(partial(backend.run, spec, result_dir=tmp_path))
    assert r.reason is Reason.OK, r
    assert [(o.path, o.size) for o in r.outputs] == [("out.bin", disk - 64 * 1024)]
    assert (tmp_path / "out.bin").stat().st_size == disk - 64 * 1024


def test_files_in_job_count_against_the_memory_limit(backend: Backend) -> None:
    # They are held in memory (a tmpfs charged to the job's memory cgroup), as /tmp's always
    # were: a job cannot use its disk allowance to take more of the worker's memory than its
    # memory limit.
    spec = JobSpec.create(
        [PYTHON, "-c", _FILL_BYTES, "128", "/job"], limits=Limits(memory=64 * MiB, disk=1 << 30)
    )
    r = run_and_clean(backend, spec)
    assert r.reason is Reason.OUT_OF_MEMORY, r
    assert r.peak_memory <= 64 * MiB


def test_output_buffers_count_against_the_memory_limit(backend: Backend) -> None:
    # The worker holds up to 2 x 16 MiB of this job's output: the job keeps the other 32 MiB.
    spec = JobSpec.create(
        [PYTHON, "-c", "b = b'x' * (40 << 20)"],
        limits=Limits(memory=64 * MiB, output_bytes=16 * MiB),
    )
    r = run(backend.run, spec)
    assert r.reason is Reason.OUT_OF_MEMORY, r
    assert r.peak_memory <= 32 * MiB


def test_a_missing_command_exits_127_and_says_so(backend: Backend) -> None:
    for image in {None, image_for(backend)}:
        r = run(backend.run, JobSpec.create(["nosuchcmd", "x"], image=image))
        assert (r.reason, r.exit_code, r.stderr) == (
            Reason.NONZERO_EXIT,
            127,
            b"command not found: nosuchcmd\n",
        ), r
        data = JobSpec.create(["./data"], image=image, inputs={"data": b"not a program"})
        r = run(backend.run, data)
        assert (r.exit_code, r.stderr) == (126, b"command not executable: ./data\n"), r
    # What a job that did start writes and exits with is its own.
    r = run(backend.run, JobSpec.create(["sh", "-c", "echo nosuchcmd: not here >&2; exit 127"]))
    assert (r.exit_code, r.stderr) == (127, b"nosuchcmd: not here\n")
