"""The job spec, the owner's policy and the verdicts: pure code, no sandbox needed."""

from __future__ import annotations

import signal

import msgpack
import pytest

from sandbox.errors import PolicyRefused, SpecError
from sandbox.policy import WorkerPolicy
from sandbox.result import KillCause, Observation, Reason, split_status, verdict
from sandbox.spec import MAX_ARGV, MAX_ENV, MAX_INPUT_BYTES, InputFile, JobSpec, Limits, Network


def wire_roundtrip(spec: JobSpec) -> JobSpec:
    return JobSpec.from_wire(msgpack.unpackb(msgpack.packb(spec.to_wire()), raw=False))


def test_a_full_spec_survives_msgpack() -> None:
    spec = JobSpec.create(
        ["python3", "-c", "print('hi')"],
        image="rainnet-test/busybox:1",
        env={"A": "1", "LANG": "C"},
        inputs=[
            InputFile("data/in.txt", b"\x00\x01bytes"),
            InputFile("run.sh", b"#!/bin/sh", True),
        ],
        outputs=["out", "logs/result.json"],
        limits=Limits(cpus=1.5, memory=64 << 20, wall_seconds=30, cpu_seconds=10, pids=32),
    )
    assert wire_roundtrip(spec) == spec
    assert wire_roundtrip(JobSpec.create(["true"])) == JobSpec.create(["true"])


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: JobSpec.create([]), "argv"),
        (lambda: JobSpec.create([""]), "argv[0]"),
        (lambda: JobSpec.create(["a\0b"]), "argv[0]"),
        (lambda: JobSpec.create(["x"] * (MAX_ARGV + 1)), "argv"),
        (lambda: JobSpec.create(["x", "y" * (200 << 10)]), "argv[1]"),
        (lambda: JobSpec.create(["true"], env={"1BAD": "x"}), "env['1BAD']"),
        (lambda: JobSpec.create(["true"], env={"A": "x\0"}), "env['A']"),
        (lambda: JobSpec.create(["true"], env={f"V{i}": "" for i in range(MAX_ENV + 1)}), "env"),
        (lambda: JobSpec.create(["true"], image="-rm -rf"), "image"),
        (lambda: JobSpec.create(["true"], image="a b"), "image"),
        (lambda: JobSpec.create(["true"], inputs={"../etc/passwd": b""}), "input.path"),
        (lambda: JobSpec.create(["true"], inputs={"/etc/passwd": b""}), "input.path"),
        (lambda: JobSpec.create(["true"], inputs={"a//b": b""}), "input.path"),
        (lambda: JobSpec.create(["true"], inputs={"a/./b": b""}), "input.path"),
        (lambda: JobSpec.create(["true"], inputs={"a\nb": b""}), "input.path"),
        (lambda: JobSpec.create(["true"], inputs={"a": b"", "a/b": b""}), "inputs['a/b']"),
        (
            lambda: JobSpec.create(["true"], inputs={"big": b"x" * (MAX_INPUT_BYTES + 1)}),
            "inputs",
        ),
        (lambda: JobSpec.create(["true"], outputs=["../../root/.ssh/id_rsa"]), "outputs[0]"),
        (lambda: JobSpec.create(["true"], outputs=["x", "x"]), "outputs"),
        (lambda: Limits(memory=1 << 20), "limits.memory"),
        (lambda: Limits(cpus=0), "limits.cpus"),
        (lambda: Limits(cpus=float("nan")), "limits.cpus"),
        (lambda: Limits(wall_seconds=-1), "limits.wall_seconds"),
        (lambda: Limits(cpu_seconds=0), "limits.cpu_seconds"),
        (lambda: Limits(pids=0), "limits.pids"),
        (lambda: Limits(pids=True), "limits.pids"),
        (lambda: Limits(gpus=-1), "limits.gpus"),
        (lambda: Limits(network="internet"), "limits.network"),  # type: ignore[arg-type]
        (lambda: Limits(disk_files=0), "limits.disk_files"),
        # Buffers of 2 x 64 MiB for a job of 4 MiB: the worker's RSS rose from 0.1 to 1.3 GB.
        (lambda: Limits(memory=4 << 20, output_bytes=64 << 20), "limits.output_bytes"),
        (lambda: Limits(memory=64 << 20, output_bytes=(16 << 20) + 1), "limits.output_bytes"),
        (lambda: Limits(disk_files=1 << 30), "limits.disk_files"),
        (
            lambda: JobSpec.create(["t"], inputs={"a": b"x" * 70_000}, limits=Limits(disk=65536)),
            "inputs",
        ),
        (
            lambda: JobSpec.create(
                ["t"], inputs={"d/a": b"", "d/b": b""}, limits=Limits(disk_files=2)
            ),
            "inputs",
        ),
    ],
)
def test_invalid_specs_name_the_field(build: object, field: str) -> None:
    with pytest.raises(SpecError) as info:
        build()  # type: ignore[operator]
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")


def test_limits_errors_speak_the_users_units() -> None:
    with pytest.raises(
        SpecError, match=r"^limits.disk_files: 0 files is outside 1\.\.16777216 files$"
    ):
        Limits(disk_files=0)
    with pytest.raises(
        SpecError, match=r"make 3 files and directories, more than limits.disk_files"
    ):
        JobSpec.create(["t"], inputs={"d/a": b"", "d/b": b""}, limits=Limits(disk_files=2))


def test_output_buffers_count_against_memory() -> None:
    lim = Limits(memory=64 << 20, output_bytes=16 << 20)  # at most half for the buffers
    assert (lim.output_memory, lim.job_memory) == (32 << 20, 32 << 20)
    assert Limits(memory=4 << 20).job_memory == 2 << 20  # the smallest job, default buffers
    with pytest.raises(SpecError, match=r"ask for at most 1048576 bytes, or for more memory$"):
        Limits(memory=4 << 20, output_bytes=64 << 20)


def test_the_files_limit_keeps_the_wire_format_of_older_nodes() -> None:
    # What a node before `disk_files` sends and accepts: exactly these limit keys.
    older = {"cpus", "memory", "wall_seconds", "cpu_seconds", "disk", "pids", "gpus", "network"}
    older |= {"output_bytes"}
    assert set(Limits().to_wire()) == older  # the default is not sent: older workers take it
    from_older = JobSpec.create(["true"]).to_wire()
    assert JobSpec.from_wire(from_older).limits.disk_files == Limits().disk_files
    asked = JobSpec.create(["true"], limits=Limits(disk_files=100))
    assert set(asked.limits.to_wire()) == older | {"disk_files"}  # refused there, as it must be
    assert wire_roundtrip(asked) == asked


def valid_wire() -> dict[str, object]:
    return JobSpec.create(["true"], inputs={"in": b"x"}, outputs=["out"]).to_wire()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda w: w.update(extra=1), "spec.extra"),
        (lambda w: w.update(v=2), "v"),
        (lambda w: w.update(argv="true"), "argv"),
        (lambda w: w.update(argv=[1]), "argv"),
        (lambda w: w.update(argv=[]), "argv"),
        (lambda w: w.update(env=[["A", "b"]]), "env"),
        (lambda w: w.update(env={"A": 1}), "env"),
        (lambda w: w.update(inputs=[{"path": "../x", "data": b""}]), "inputs[0].path"),
        (lambda w: w.update(inputs=[{"path": "x", "data": "text"}]), "inputs[0].data"),
        (lambda w: w.update(inputs=[{"path": "x", "data": b"", "mode": 7}]), "inputs[0].mode"),
        (lambda w: w.update(outputs=["/etc/shadow"]), "outputs[0]"),
        (lambda w: w.update(limits={"memory": "512M"}), "limits.memory"),
        (lambda w: w.update(limits={"memory": 1.5}), "limits.memory"),
        (lambda w: w.update(limits={"cpus": True}), "limits.cpus"),
        (lambda w: w.update(limits={"network": "host"}), "limits.network"),
        (lambda w: w.update(limits={"network": 0}), "limits.network"),
        (lambda w: w.update(limits={"turbo": 1}), "limits.turbo"),
        (lambda w: w.update(limits={"disk_files": "many"}), "limits.disk_files"),
        (lambda w: w.update(limits=[]), "limits"),
    ],
)
def test_bad_wire_data_is_refused_with_the_field(mutate: object, field: str) -> None:
    wire = valid_wire()
    mutate(wire)  # type: ignore[operator]
    with pytest.raises(SpecError) as info:
        JobSpec.from_wire(msgpack.unpackb(msgpack.packb(wire), raw=False))
    assert info.value.field == field


def test_wire_is_not_a_map() -> None:
    with pytest.raises(SpecError, match=r"^spec: must be a map"):
        JobSpec.from_wire([1, 2])


def test_policy_is_strict_by_default_and_says_why() -> None:
    policy = WorkerPolicy()
    policy.check(JobSpec.create(["true"]))
    for limits, words in [
        (Limits(network=Network.INTERNET), "no network"),
        (Limits(gpus=1), "GPUs"),
        (Limits(memory=128 << 30), "memory"),
        (Limits(pids=10_000), "pids"),
    ]:
        with pytest.raises(PolicyRefused, match=words):
            policy.check(JobSpec.create(["true"], limits=limits))
    only = WorkerPolicy(allowed_images=("a:1",))
    only.check(JobSpec.create(["true"], image="a:1"))
    with pytest.raises(PolicyRefused, match="allowed images"):
        only.check(JobSpec.create(["true"], image="b:1"))
    WorkerPolicy(allow_network=True).check(
        JobSpec.create(["true"], limits=Limits(network=Network.INTERNET))
    )


def obs(**kw: object) -> Observation:
    base: dict[str, object] = {
        "exit_code": 0,
        "signal": None,
        "kill_cause": None,
        "cpu_seconds": 0.5,
        "cpu_limit": None,
        "oom_kills": 0,
    }
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("observation", "reason"),
    [
        (obs(), Reason.OK),
        (obs(exit_code=3), Reason.NONZERO_EXIT),
        (obs(exit_code=137, signal=9), Reason.KILLED),
        (obs(exit_code=137, signal=9, oom_kills=1), Reason.OUT_OF_MEMORY),
        (obs(exit_code=1, oom_kills=2), Reason.OUT_OF_MEMORY),
        (obs(exit_code=0, oom_kills=1), Reason.OK),  # it survived its child's OOM kill
        (obs(exit_code=137, signal=9, kill_cause=KillCause.WALL_TIME), Reason.WALL_TIME),
        (obs(exit_code=None, signal=9, kill_cause=KillCause.CPU_LIMIT), Reason.CPU_LIMIT),
        (obs(exit_code=152, signal=signal.SIGXCPU), Reason.CPU_LIMIT),
        (obs(exit_code=137, signal=9, cpu_seconds=2.0, cpu_limit=2.0), Reason.CPU_LIMIT),
        (obs(exit_code=0, cpu_seconds=2.0, cpu_limit=2.0), Reason.OK),
        (
            obs(exit_code=137, signal=9, kill_cause=KillCause.CANCELLED, oom_kills=1),
            Reason.CANCELLED,
        ),
        (obs(exit_code=137, signal=9, kill_cause=KillCause.DISK_LIMIT), Reason.DISK_LIMIT),
        (obs(exit_code=1, disk_over=True), Reason.DISK_LIMIT),
        (obs(exit_code=0, disk_over=True), Reason.DISK_LIMIT),  # a write of it was refused
        (obs(exit_code=1, disk_over=True, oom_kills=1), Reason.DISK_LIMIT),
        (obs(exit_code=153, signal=signal.SIGXFSZ), Reason.DISK_LIMIT),
    ],
)
def test_verdicts(observation: Observation, reason: Reason) -> None:
    assert verdict(observation) is reason


def test_split_status() -> None:
    assert split_status(0) == (0, None)
    assert split_status(3) == (3, None)
    assert split_status(-9) == (None, 9)
    assert split_status(137) == (137, 9)
    assert split_status(128) == (128, None)
    assert split_status(255) == (255, None)
