"""The terms of a job both sides read alike: the limits a claim is bounded by, what may be
claimed for a run, the shape a task session runs, and the payloads a job message carries inside
it (a spec, a ledger proposal, a page of the requester's chain), decoded and checked. Pure.
"""

from __future__ import annotations

import msgpack

from ledger.block import MAX_WALL_MS, JobLimits
from ledger.messages import ChainPage, Propose, decode_message
from node.faults import blamed_on_peer
from node.jobs.core.scheduler import Needs
from sandbox import JobSpec, SpecError

Shape = tuple[str | None, float, int, int]  # image, CPUs, memory, GPUs: what a session runs


def job_limits(spec: JobSpec) -> JobLimits:
    """The limits the ledger bounds a claim by (the requester checks the same numbers)."""
    return JobLimits(
        cpus_milli=max(1, round(spec.limits.cpus * 1000)),
        gpus=spec.limits.gpus,
        wall_ms=max(1, round(spec.limits.wall_seconds * 1000)),
    )


def max_cpu_ms(spec: JobSpec) -> int:
    """The most CPU time a run of `spec` can use within its limits (all its CPUs, all its time)."""
    return job_limits(spec).max_cpu_ms


def claimable_ms(cpu_seconds: float, spec: JobSpec) -> int:
    """The measured CPU time in milliseconds, never above what the job's limits allowed (the
    CFS quota lets a job overshoot its share by a scheduler tick; the ledger refuses any excess)."""
    return max(0, min(round(cpu_seconds * 1000), max_cpu_ms(spec)))


def group_limits(limits: list[JobLimits]) -> JobLimits:
    """The limits a group's claim is bounded by: the tasks' wall times added (their CPUs and
    GPUs are the session's shape). ValueError past what a claim may state."""
    wall = sum(x.wall_ms for x in limits)
    if wall > MAX_WALL_MS:
        raise ValueError("a group's wall time may not pass a year")
    return JobLimits(cpus_milli=limits[0].cpus_milli, gpus=limits[0].gpus, wall_ms=wall)


def shape(spec: JobSpec) -> Shape:
    return (spec.image, spec.limits.cpus, spec.limits.memory, spec.limits.gpus)


def needs(spec: JobSpec) -> Needs:
    """What a run of `spec` needs of a worker."""
    return Needs(
        cpus=spec.limits.cpus,
        memory=spec.limits.memory,
        gpus=spec.limits.gpus,
        image=spec.image,
    )


def has_files(spec: JobSpec) -> bool:
    """Whether the job brings or leaves files (a task session carries only jobs without)."""
    return bool(spec.inputs or spec.outputs)


def spec_from(data: bytes) -> JobSpec:
    """The JobSpec in an offer or a task (SpecError if it is not one)."""
    try:
        wire_spec = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise SpecError("spec", f"not msgpack: {exc}") from None
    return JobSpec.from_wire(wire_spec)


def pack_spec(spec: JobSpec) -> bytes:
    """The spec as offers and tasks carry it."""
    return msgpack.packb(spec.to_wire(), use_bin_type=True)  # type: ignore[no-any-return]


def propose_from(data: bytes) -> Propose:
    """The ledger proposal inside a Finished message (RemoteProtocolError if malformed)."""
    with blamed_on_peer("proposal"):
        msg = decode_message(data, (Propose,))
    assert isinstance(msg, Propose)
    return msg


def offered_chain(data: bytes) -> ChainPage | None:
    """The page of its chain a requester sent with its offer (None if it sent none;
    RemoteProtocolError if malformed)."""
    if not data:
        return None
    with blamed_on_peer("offered chain"):
        msg = decode_message(data, (ChainPage,))
    assert isinstance(msg, ChainPage)
    return msg
