"""The sandbox's parts that need no sandbox: cgroup path math and counters (v1, v2 and mixed, on
fake trees), command lines and container settings, seccomp rules, the attach-stream decoder, the
output buffer, and the job directory's defences against a hostile job's leftovers."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import stat
from pathlib import Path, PurePosixPath

import pytest
import trio

from sandbox import cgroups, hostfs, jobdir, output, seccomp_filter
from sandbox.cgroups import CgroupLayout, CgroupLimits, JobCgroup, Mkdir, MountEntry, Write
from sandbox.docker_backend import FrameDecoder, container_config, host_image_tar
from sandbox.errors import SandboxFailure, SpecError
from sandbox.native import (
    BwrapFds,
    LaunchTools,
    NativeBackend,
    bwrap_argv,
    clamp_rlimit,
    launcher_argv,
    rlimits,
)
from sandbox.output import OutputBuffer, Stream
from sandbox.spec import InputFile, JobSpec, Limits, Network
from sandbox.startfail import StartFailure, StartWatch
from tests.e2e.sandbox_helpers import require_root

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 31 0:40 / /mnt/with\\040space rw - cgroup cgroup rw,net_cls,net_prio
"""
JOB = PurePosixPath("rainnet/j1")


def test_mountinfo_parsing_and_the_hybrid_layout() -> None:
    entries = cgroups.parse_mountinfo(HYBRID_MOUNTINFO)
    assert [e.fstype for e in entries].count("cgroup2") == 1
    assert entries[-1].mount_point == "/mnt/with space"
    layout = CgroupLayout.from_mounts(entries, lambda m: frozenset({"hugetlb"}))
    # Bound to v1 here, so v1 it is, even for the functions v2 has in every cgroup.
    for controller, mount in [
        ("memory", "memory"),
        ("pids", "pids"),
        ("cpu", "cpu"),
        ("cpuacct", "cpuacct"),
        ("freezer", "freezer"),
    ]:
        h = layout.hierarchy_for(controller)
        assert h is not None and h.version == 1 and h.mount == Path("/sys/fs/cgroup") / mount
    assert layout.missing() == []
    assert len(layout.all_dirs(JOB)) == 8  # cleanup covers hierarchies the sandbox does not use
    plan = cgroups.creation_plan(
        layout, JOB, CgroupLimits(memory=64 << 20, pids=10, cpus=0.5), cgroups.NEEDED
    )
    assert Mkdir(Path("/sys/fs/cgroup/memory/rainnet"), exist_ok=True) in plan
    assert Mkdir(Path("/sys/fs/cgroup/memory/rainnet/j1")) in plan
    assert (
        Write(Path("/sys/fs/cgroup/memory/rainnet/j1/memory.limit_in_bytes"), str(64 << 20)) in plan
    )
    assert Write(Path("/sys/fs/cgroup/cpu/rainnet/j1/cpu.cfs_quota_us"), "50000") in plan
    assert Write(Path("/sys/fs/cgroup/pids/rainnet/j1/pids.max"), "10") in plan
    assert not any(isinstance(s, Write) and "subtree_control" in s.path.name for s in plan)
    # memsw must come after the memory limit (the kernel wants memsw >= memory at all times)
    files = [s.path.name for s in plan if isinstance(s, Write)]
    assert files.index("memory.memsw.limit_in_bytes") > files.index("memory.limit_in_bytes")


def v2_layout(root: Path, controllers: str = "cpuset cpu io memory hugetlb pids") -> CgroupLayout:
    (root / "cgroup.controllers").write_text(controllers + "\n")
    entries = [MountEntry(str(root), "cgroup2", ("rw", "nsdelegate"))]
    return CgroupLayout.from_mounts(
        entries, lambda m: frozenset((m / "cgroup.controllers").read_text().split())
    )


def test_v2_layout_and_creation_plan(tmp_path: Path) -> None:
    layout = v2_layout(tmp_path)
    assert {layout.hierarchy_for(c).version for c in cgroups.NEEDED} == {2}  # type: ignore[union-attr]
    plan = cgroups.creation_plan(
        layout, JOB, CgroupLimits(memory=1 << 30, pids=100, cpus=1.5), cgroups.NEEDED
    )
    enable = "+cpu +memory +pids"
    assert plan == [
        Write(tmp_path / "cgroup.subtree_control", enable, optional=True),
        Mkdir(tmp_path / "rainnet", exist_ok=True),
        Write(tmp_path / "rainnet/cgroup.subtree_control", enable, optional=True),
        Mkdir(tmp_path / "rainnet/j1"),
        Write(tmp_path / "rainnet/j1/memory.max", str(1 << 30)),
        Write(tmp_path / "rainnet/j1/memory.swap.max", "0", optional=True),
        Write(tmp_path / "rainnet/j1/memory.oom.group", "1", optional=True),
        Write(tmp_path / "rainnet/j1/pids.max", "100"),
        Write(tmp_path / "rainnet/j1/cpu.max", "150000 100000"),
    ]


def test_mixed_layout_uses_v2_only_for_what_v1_does_not_hold(tmp_path: Path) -> None:
    text = (
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        f"41 31 0:38 / {tmp_path} rw - cgroup2 cgroup2 rw\n"
    )
    (tmp_path / "cgroup.controllers").write_text("memory pids")
    layout = CgroupLayout.from_mounts(
        cgroups.parse_mountinfo(text),
        lambda m: frozenset((m / "cgroup.controllers").read_text().split()),
    )
    versions = {c: layout.hierarchy_for(c).version for c in cgroups.NEEDED}  # type: ignore[union-attr]
    assert versions == {"memory": 2, "pids": 2, "cpu": 1, "cpuacct": 1, "freezer": 2}
    dirs = layout.job_dirs(JOB)
    assert dirs["cpu"] == dirs["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct/rainnet/j1")
    assert dirs["memory"] == dirs["pids"] == dirs["freezer"] == tmp_path / "rainnet/j1"
    assert CgroupLayout(()).missing() == list(cgroups.NEEDED)


def fake_job(tmp_path: Path, files: dict[str, str]) -> JobCgroup:
    """A job cgroup on a fake v2 tree: the files the kernel would have made, with given values."""
    layout = v2_layout(tmp_path)
    d = tmp_path / JOB
    d.mkdir(parents=True)
    for name, value in files.items():
        (d / name).write_text(value)
    return JobCgroup(layout, JOB, layout.job_dirs(JOB))


def test_v2_counters_and_freezer_on_a_fake_tree(tmp_path: Path) -> None:
    cg = fake_job(
        tmp_path,
        {
            "cpu.stat": "usage_usec 1500001\nuser_usec 1000000\nsystem_usec 500001\n",
            "memory.peak": "12345678\n",
            "memory.current": "4096\n",
            "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n",
            "pids.events": "max 5\n",
            "cgroup.procs": "",
            "cgroup.freeze": "0\n",
            "cgroup.events": "populated 1\nfrozen 1\n",
        },
    )
    assert cg.cpu_ns() == 1_500_001_000
    assert cg.memory_peak() == 12345678
    assert cg.memory_current() == 4096
    assert cg.oom_kills() == 2
    assert cg.pids_limit_hits() == 5
    cg.freeze(timeout=1)  # cgroup.events says frozen: returns at once
    assert (tmp_path / JOB / "cgroup.freeze").read_text() == "1"
    (tmp_path / JOB / "memory.peak").unlink()
    assert cg.memory_peak() is None  # kernels before 5.19: the job samples memory.current
    with pytest.raises(SandboxFailure, match="timed out"):
        cg.thaw(timeout=0.05)  # the fake kernel never reports thawed: bounded, not a hang
    assert cgroups.total_cpu_ns(cg.layout, PurePosixPath("rainnet/j1")) == 1_500_001_000


def test_v1_counters_on_a_fake_tree(tmp_path: Path) -> None:
    text = "".join(
        f"3{i} 31 0:2{i} / {tmp_path}/{c} rw - cgroup cgroup rw,{c}\n"
        for i, c in enumerate(("memory", "pids", "cpuacct", "freezer", "cpu"))
    )
    layout = CgroupLayout.from_mounts(cgroups.parse_mountinfo(text), lambda m: frozenset())
    files = {
        "memory": {
            "memory.max_usage_in_bytes": "999\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        },
        "pids": {"pids.events": "max 0\n"},
        "cpuacct": {"cpuacct.usage": "2000000000\n"},
        "freezer": {"freezer.state": "THAWED\n"},
        "cpu": {},
    }
    for c, values in files.items():
        (tmp_path / c / JOB).mkdir(parents=True)
        for name, value in values.items():
            (tmp_path / c / JOB / name).write_text(value)
    cg = JobCgroup(layout, JOB, layout.job_dirs(JOB))
    assert (cg.cpu_seconds(), cg.memory_peak(), cg.oom_kills(), cg.pids_limit_hits()) == (
        2.0,
        999,
        3,
        0,
    )
    assert not cg.is_frozen()


def spec_for_argv(**kw: object) -> JobSpec:
    return JobSpec.create(
        ["python3", "-c", "print(1)"],
        env={"SECRET": "s"},
        limits=Limits(memory=64 << 20, disk=1 << 20, pids=8, cpu_seconds=2.0),
        **kw,  # type: ignore[arg-type]
    )


def test_bwrap_command_line() -> None:
    host = hostfs.HostFs((("/bin", "usr/bin"),), ("/lib32",), ("/etc/ld.so.cache",))
    argv = bwrap_argv("/usr/bin/bwrap", spec_for_argv(), host, 1234, 1234, BwrapFds(7, 8, 9, 10))
    joined = " ".join(argv)
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert "--ro-bind /usr /usr" in joined and "--symlink usr/bin /bin" in joined
    assert "--ro-bind /lib32 /lib32" in joined and "--ro-bind-try /etc/ld.so.cache" in joined
    assert "--bind-fd 10 /job" in joined and "--seccomp 7" in joined
    assert "--size 1048576 --perms 1777 --tmpfs /tmp" in joined  # no file system of its own
    own = bwrap_argv("bwrap", spec_for_argv(), host, 1, 1, BwrapFds(7, 8, 9, 10, tmp_dir=11))
    assert "--bind-fd 11 /tmp" in " ".join(own) and "--tmpfs" not in own
    assert "--setenv SECRET s" in joined and "--clearenv" in argv
    assert argv.index("--remount-ro") > argv.index("--tmpfs")  # after every mount is made
    assert argv[argv.index("--") + 1 :] == ["python3", "-c", "print(1)"]
    # The host's own paths appear only as read-only system binds.
    sources = [argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--dev-bind")]
    assert sources == []

    tools = LaunchTools("/usr/bin/setpriv", "/usr/bin/unshare")
    chain = launcher_argv(tools, 1234, 1234)
    assert chain[:2] == ["/bin/sh", "-c"]
    assert "--pdeathsig" in chain and "--pid" in chain and "--setuid=1234" in chain
    assert chain[-1] == "--"
    assert launcher_argv(None, 5, 5) == ["/bin/sh", "-c", chain[2], "rainnet-job"]


def test_rlimits_are_backstops_and_only_ever_lowered() -> None:
    lim = Limits(disk=1 << 20, pids=8, cpu_seconds=2.0)
    table = {res: (soft, hard) for res, soft, hard in rlimits(lim, uid_per_job=True)}
    assert table[resource.RLIMIT_FSIZE] == (1 << 20, 1 << 20)
    assert table[resource.RLIMIT_CORE] == (0, 0)
    assert table[resource.RLIMIT_NPROC][0] >= 8
    assert table[resource.RLIMIT_CPU][0] > 2  # well above the limit the watcher enforces
    assert resource.RLIMIT_NPROC not in {r for r, _, _ in rlimits(lim, uid_per_job=False)}
    inf = resource.RLIM_INFINITY
    assert clamp_rlimit(1024, 65536, (1024, 20000)) == (1024, 20000)
    assert clamp_rlimit(4096, 65536, (1024, 2048)) == (2048, 2048)
    assert clamp_rlimit(inf, inf, (10, 20)) == (20, 20)
    assert clamp_rlimit(5, 10, (inf, inf)) == (5, 10)


def test_container_settings() -> None:
    host = hostfs.HostFs((("/bin", "usr/bin"),), (), ("/etc/ssl",))
    create, hc = container_config(
        spec_for_argv(),
        job_id="j1",
        uid=4242,
        gid=4242,
        job_dir=Path("/w/j1"),
        cgroup_parent="/rainnet/j1",
        host=host,
    )
    assert create["user"] == "4242:4242" and create["entrypoint"] == ["python3", "-c", "print(1)"]
    assert create["network_disabled"] is True and create["working_dir"] == "/job"
    assert hc["network_mode"] == "none" and hc["read_only"] is True and hc["init"] is True
    assert hc["cap_drop"] == ["ALL"] and "no-new-privileges" in hc["security_opt"]
    profile = json.loads(next(o for o in hc["security_opt"] if o.startswith("seccomp="))[8:])
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = {n for rule in profile["syscalls"] if "args" not in rule for n in rule["names"]}
    assert {"ptrace", "mount", "keyctl", "unshare", "setns", "bpf"} <= denied
    assert hc["memswap_limit"] == hc["mem_limit"] > 64 << 20  # the parent cgroup's wall bites first
    assert hc["cgroup_parent"] == "/rainnet/j1" and hc["log_config"]["type"] == "none"
    assert hc["tmpfs"]["/tmp"].endswith(f"size={1 << 20}")  # no file system of its own
    assert hc["binds"]["/w/j1"] == {"bind": "/job", "mode": "rw"}
    _, own = container_config(
        spec_for_argv(), job_id="j1", uid=1, gid=1, job_dir=Path("/w/j1/job"),
        cgroup_parent="/x", host=host, tmp_dir=Path("/w/j1/tmp"),
    )  # fmt: skip
    assert own["binds"]["/w/j1/tmp"] == {"bind": "/tmp", "mode": "rw"} and own["tmpfs"] == {}
    assert hc["binds"]["/usr"]["mode"] == hc["binds"]["/etc/ssl"]["mode"] == "ro"
    assert {u["name"] for u in hc["ulimits"]} >= {"fsize", "core", "cpu", "nproc"}
    net = JobSpec.create(["true"], image="busybox:1", limits=Limits(network=Network.INTERNET))
    create, hc = container_config(
        net, job_id="j2", uid=1, gid=1, job_dir=Path("/j"), cgroup_parent="/x", host=None
    )
    assert hc["network_mode"] == "bridge" and "/usr" not in hc["binds"]


def test_seccomp_rules_compile_and_match_the_docker_profile() -> None:
    program = seccomp_filter.bpf_program()
    assert program and len(program) % 8 == 0
    names = {r.syscall for r in seccomp_filter.rules()}
    assert {"ptrace", "mount", "keyctl", "unshare", "setns", "bpf", "clone", "clone3"} <= names
    clone3 = next(r for r in seccomp_filter.rules() if r.syscall == "clone3")
    assert clone3.errno == 38  # ENOSYS: libc falls back to clone(), whose flags are checked


def test_host_image_is_deterministic_and_tiny() -> None:
    host = hostfs.scan()
    tar = host_image_tar(host)
    assert tar == host_image_tar(host) and len(tar) < 64 << 10
    assert hostfs.job_env({"PATH": "/x"})["PATH"] == "/x"


def test_frame_decoder_handles_splits_and_huge_frames() -> None:
    frames = b"".join(
        bytes([sid, 0, 0, 0]) + len(p).to_bytes(4, "big") + p
        for sid, p in [(1, b"hello "), (2, b"oops"), (1, b"world")]
    )
    for step in (1, 3, 7, len(frames)):
        d = FrameDecoder()
        out: list[tuple[int, bytes]] = []
        for i in range(0, len(frames), step):
            out += d.feed(frames[i : i + step])
        merged: dict[int, bytes] = {}
        for sid, data in out:
            merged[sid] = merged.get(sid, b"") + data
        assert merged == {1: b"hello world", 2: b"oops"}
    d = FrameDecoder()
    # A header claiming 4 GiB: payload passes through as it comes, nothing is held back.
    assert d.feed(b"\x01\x00\x00\x00\xff\xff\xff\xff" + b"abc") == [(1, b"abc")]


def test_output_buffer_caps_and_streams() -> None:
    async def main() -> None:
        buf = OutputBuffer(cap=10)
        seen: list[bytes] = []

        async def reader() -> None:
            async for chunk in buf.chunks():
                seen.append(chunk.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            buf.feed(Stream.STDOUT, b"0123456")
            await trio.sleep(0.01)
            assert seen == [b"0123456"]  # streamed while "running"
            buf.feed(Stream.STDOUT, b"789abc")
            buf.feed(Stream.STDERR, b"e")
            buf.close()
        assert buf.value(Stream.STDOUT) == b"0123456789"
        assert buf.truncated(Stream.STDOUT) and not buf.truncated(Stream.STDERR)
        assert seen == [b"0123456", b"789", b"e"]
        # Late readers get it all, in the same order (in fewer chunks).
        late = [(c.stream, c.data) async for c in buf.chunks()]
        assert late == [(Stream.STDOUT, b"0123456789"), (Stream.STDERR, b"e")]

    trio.run(main)


def test_output_buffer_memory_is_bounded_however_the_job_writes() -> None:
    async def main() -> None:
        buf = OutputBuffer(cap=1 << 20)
        # A stream switch every byte: each would be a chunk (and an object) of its own.
        for i in range(2 * output.MAX_MARKS):
            buf.feed((Stream.STDOUT, Stream.STDERR)[i % 2], b"x")
        buf.close()
        out, err = buf.value(Stream.STDOUT), buf.value(Stream.STDERR)
        # Then only the stream that wrote last goes on; the other is dropped, as past its cap.
        half = output.MAX_MARKS // 2
        assert (len(out), len(err)) == (half, 2 * half)
        assert buf.truncated(Stream.STDOUT) and not buf.truncated(Stream.STDERR)
        assert len([c async for c in buf.chunks()]) == output.MAX_MARKS
        assert buf.value(Stream.STDOUT) is out  # one bytes object, the result's own

    trio.run(main)


def watch(command: str) -> tuple[StartWatch, list[tuple[Stream, bytes]]]:
    fed: list[tuple[Stream, bytes]] = []
    return StartWatch(NativeBackend.launcher_words, command, lambda s, d: fed.append((s, d))), fed


def test_a_command_that_did_not_start_is_told_from_the_jobs_own_output() -> None:
    # bwrap writes its words in three pieces; the exit status says the rest.
    w, fed = watch("nosuchcmd")
    for piece in (b"bwrap: ", b"execvp nosuchcmd", b": No such file or directory\n"):
        w.feed(Stream.STDERR, piece)
    assert fed == [(Stream.STDERR, b"command not found: nosuchcmd\n")]
    assert (w.failure, w.exit_code(1), w.exit_code(3)) == (StartFailure.NOT_FOUND, 127, 3)
    w, fed = watch("./x")
    w.feed(Stream.STDERR, b"bwrap: execvp ./x: Permission denied\nmore")
    w.close()
    assert fed == [(Stream.STDERR, b"command not executable: ./x\nmore")]
    assert w.exit_code(1) == 126
    # The job's own words pass at once; only the launcher's start is ever held, and not long.
    for command, first in [
        ("ls", b"ls: cannot access"),
        ("ls", b"bwrap: execvp other: No such file or directory\n"),
        ("ls", b"bwrap: execvp " + b"x" * 1000),
    ]:
        w, fed = watch(command)
        w.feed(Stream.STDERR, first)
        assert fed == [(Stream.STDERR, first)] and w.failure is None and w.exit_code(1) == 1
    w, fed = watch("ls")
    w.feed(Stream.STDERR, b"bwrap: ex")
    w.feed(Stream.STDOUT, b"out")  # the command did start
    assert fed == [(Stream.STDERR, b"bwrap: ex"), (Stream.STDOUT, b"out")]


def test_job_directory_inputs(tmp_path: Path) -> None:
    uid = os.getuid()
    d = jobdir.prepare(
        tmp_path,
        "j1",
        (InputFile("a/b/run.sh", b"#!/bin/sh\n", True), InputFile("x", b"1")),
        uid,
        uid,
    )
    assert (d.path / "a/b/run.sh").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((d.path / "a/b/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((d.path / "x").stat().st_mode) == 0o644
    with pytest.raises(SandboxFailure, match="already exists"):
        jobdir.prepare(tmp_path, "j1", (), uid, uid)
    os.chmod(d.path / "a", 0)  # a job may lock its own directories; removal still works
    jobdir.remove(d)
    assert not d.path.exists()


def test_the_job_file_system_bounds_inputs_and_goes_at_once(tmp_path: Path) -> None:
    require_root()  # mounting
    disk = jobdir.DiskLimits.of(Limits(disk=64 * 1024, disk_files=4))
    d = jobdir.prepare(tmp_path, "j1", (InputFile("a/b", b"x" * 5000),), 4242, 4242, (), disk)
    try:
        assert os.path.ismount(tmp_path / "j1") and d.path == tmp_path / "j1/job"
        assert d.tmp == tmp_path / "j1/tmp" and stat.S_IMODE(d.tmp.stat().st_mode) == 0o1777
        assert (d.path.stat().st_uid, d.tmp.stat().st_uid) == (4242, 4242)
        assert jobdir.usage(d) == jobdir.DiskUsage(bytes=2 * jobdir.PAGE, files=2)
        (d.tmp / "c").write_bytes(b"")
        (d.path / "d").write_bytes(b"x" * (14 * jobdir.PAGE))  # 16 pages, 4 files: at the limits
        assert not jobdir.exceeded(d)
        (d.tmp / "e").write_bytes(b"")  # one more: the slack, past the limit
        assert jobdir.exceeded(d)
        with pytest.raises(OSError, match="No space"):
            (d.tmp / "f").write_bytes(b"")
    finally:
        jobdir.remove(d)
    assert not (tmp_path / "j1").exists() and not os.path.ismount(tmp_path / "j1")
    # Staged inputs the spec could not check: more than the job asked room for.
    big = tmp_path / "big"
    big.write_bytes(b"x" * (70 * 1024))
    with pytest.raises(SpecError, match="inputs: do not fit"):
        jobdir.prepare(tmp_path, "j2", (), 4242, 4242, (("big", big),), disk)
    assert not (tmp_path / "j2").exists()


def test_output_collection_resists_a_hostile_job(tmp_path: Path) -> None:
    d = jobdir.prepare(tmp_path / "work", "j1", (), os.getuid(), os.getuid())
    secret = tmp_path / "secret"
    secret.write_bytes(b"host secret")
    (d.path / "result.txt").write_bytes(b"answer")
    (d.path / "out").mkdir()
    (d.path / "out/a").write_bytes(b"A")
    (d.path / "out/deep").mkdir()
    (d.path / "out/deep/b").write_bytes(b"B")
    (d.path / "out/link").symlink_to(secret)
    (d.path / "steal").symlink_to(secret)
    (d.path / "via").symlink_to(tmp_path)
    os.mkfifo(d.path / "fifo")
    result_dir = tmp_path / "results"
    found, missing = jobdir.collect(
        d, ("result.txt", "out", "steal", "via/secret", "fifo", "absent"), result_dir
    )
    by_path = {f.path: f for f in found}
    assert set(by_path) == {"result.txt", "out/a", "out/deep/b"}
    assert by_path["result.txt"].sha256 == hashlib.sha256(b"answer").hexdigest()
    assert by_path["result.txt"].size == 6
    assert (result_dir / "out/deep/b").read_bytes() == b"B"
    assert set(missing) == {"steal", "via/secret", "fifo", "absent"}
    assert not any(p.read_bytes() == b"host secret" for p in result_dir.rglob("*") if p.is_file())
    found, missing = jobdir.collect(d, ("out",), None, max_files=1)
    assert len(found) == 1 and missing == ()
    found, missing = jobdir.collect(d, ("result.txt",), None, max_bytes=3)
    assert found == () and missing == ("result.txt",)
