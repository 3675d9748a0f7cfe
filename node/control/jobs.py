"""The control API's job operations: submit, job (state and new output), finished (the states of
jobs that have ended, at once), jobs, cancel.

Requests come from the local user through the control socket (JSON). A submission names input
files by local path; the node reads them (it runs as the same user) into the job spec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

from node.control import channel as control
from node.jobs import transfer
from node.jobs.requester import Requester
from node.jobs.requester.record import JobRecord
from rainnet.jobproto import MAX_SPEC_BYTES, FileEntry
from sandbox import JobSpec, Limits, SpecError
from sandbox.spec import check_relative_path

MAX_LOG_CHUNK = 256 * 1024
MAX_REPLICAS = 16
MAX_WAIT = 5.0  # a long-poll answers at least this often (the control socket's timeout is 10 s)
MAX_BATCH = 1000  # array tasks submitted, or jobs asked about, in one request
MAX_BATCH_OUTPUT = 8 << 20  # bytes of output one `finished` answer carries (at least one job's)


def build_spec(req: dict[str, Any]) -> tuple[JobSpec, tuple[tuple[FileEntry, Path], ...]]:
    """A JobSpec and its input files (announced entry, local path) from a submit request;
    SpecError naming the bad field. Blocking: reads and hashes the inputs."""
    argv = req.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise SpecError("argv", "give the command to run")
    inputs = input_files(req.get("inputs"))
    limit_keys = ("cpus", "memory", "wall_seconds", "gpus")
    limits = {k: req[k] for k in limit_keys if req.get(k) is not None}
    try:
        spec = JobSpec.create(
            argv,
            image=req.get("image"),
            env=req.get("env") or {},
            outputs=req.get("outputs") or [],
            limits=Limits(**limits),
        )
    except TypeError as exc:
        raise SpecError("request", str(exc)) from None
    return spec, inputs


def input_files(pairs: Any) -> tuple[tuple[FileEntry, Path], ...]:
    """A request's input files ([local path, path in the job] pairs): each announced entry
    (size, hash) and its local path; SpecError naming the bad one. Blocking: reads them."""
    inputs = []
    for pair in pairs or []:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise SpecError("inputs", "each input is [local path, path in the job]")
        src, dest = Path(pair[0]), check_relative_path("inputs", pair[1])
        try:
            inputs.append((transfer.file_entry(dest, src), src))
        except OSError as exc:
            raise SpecError("inputs", f"cannot read {src}: {exc.strerror}") from None
    if len({e.path for e, _ in inputs}) != len(inputs):
        raise SpecError("inputs", "two inputs have the same name in the job")
    return tuple(inputs)


def _job(requester: Requester, req: dict[str, Any]) -> JobRecord:
    job_id = req.get("job_id")
    job = requester.jobs.get(job_id) if isinstance(job_id, str) else None
    if job is None:
        raise LookupError(f"no job {job_id!r} on this node (see `rain jobs`)")
    return job


async def submit(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    """One job, or with `array` (a list of indices) one job per index, each with its index in
    RAIN_ARRAY_TASK_ID: all stored in one transaction, their ids in order."""
    array = req.get("array")
    try:
        if array is not None and not (
            isinstance(array, list)
            and 0 < len(array) <= MAX_BATCH
            and all(isinstance(i, int) and not isinstance(i, bool) for i in array)
        ):
            raise SpecError("array", f"a list of 1 to {MAX_BATCH} task indices")
        spec, inputs = await trio.to_thread.run_sync(build_spec, req)
        room = MAX_SPEC_BYTES - (64 if array is not None else 0)  # (64: the task's index)
        if len(msgpack.packb(spec.to_wire(), use_bin_type=True)) > room:
            raise SpecError("argv", f"command and environment exceed {MAX_SPEC_BYTES >> 10} KiB")
        replicas = req.get("replicas", 1)
        if not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
            raise SpecError("replicas", f"a number from 1 to {MAX_REPLICAS}")
        if array is None:
            return {"job_id": (await requester.submit([spec], inputs, replicas))[0].job_id}
        env = spec.env_dict
        specs = [
            dataclasses.replace(
                spec, env=tuple(sorted({**env, "RAIN_ARRAY_TASK_ID": str(i)}.items()))
            )
            for i in array
        ]
        jobs = await requester.submit(specs, inputs, replicas)
    except (SpecError, ValueError) as exc:
        return control.refusal(str(exc))
    return {"job_ids": [j.job_id for j in jobs]}


async def job_status(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    """A job's state, and its output from the given offsets (so a client can follow it).

    With `wait` (seconds, capped), a job that is still running and has no output past the
    offsets is waited on until it has, or ends: a follower gets news at once without polling.
    """
    try:
        job = _job(requester, req)
    except LookupError as exc:
        return control.refusal(str(exc))
    wait = req.get("wait")
    if isinstance(wait, int | float) and wait > 0 and not job.finished.is_set():
        nothing_new = req.get("stdout_from", 0) >= len(job.stdout) and req.get(
            "stderr_from", 0
        ) >= len(job.stderr)
        if nothing_new:
            with trio.move_on_after(min(float(wait), MAX_WAIT)):
                await job.changed.wait()
    await requester.load_output(job)
    return _status(requester, job, req.get("stdout_from", 0), req.get("stderr_from", 0))


def _status(
    requester: Requester, job: JobRecord, stdout_from: Any, stderr_from: Any
) -> dict[str, Any]:
    out = job.as_dict()
    for name, buf, start in (
        ("stdout", job.stdout, stdout_from),
        ("stderr", job.stderr, stderr_from),
    ):
        start = start if isinstance(start, int) and start >= 0 else 0
        out[name] = buf[start : start + MAX_LOG_CHUNK].decode("utf-8", "replace")
        out[f"{name}_next"] = min(len(buf), start + MAX_LOG_CHUNK)
    out["finished"] = job.finished.is_set()
    out["result_dir"] = str(requester.jobs_dir / job.job_id)
    return out


async def finished(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    """The states (and output, from the start) of the longest run of `job_ids`, in order, that
    have ended: what `rain submit --array --wait` shows after following the first one live."""
    ids = req.get("job_ids")
    if not (isinstance(ids, list) and len(ids) <= MAX_BATCH):
        return control.refusal(f"job_ids: a list of at most {MAX_BATCH} job ids")
    out: list[dict[str, Any]] = []
    size = 0
    for job_id in ids:
        job = requester.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None or not job.finished.is_set() or (out and size > MAX_BATCH_OUTPUT):
            break
        await requester.load_output(job)
        out.append(_status(requester, job, 0, 0))
        size += len(out[-1]["stdout"]) + len(out[-1]["stderr"])
    return {"jobs": out}


async def jobs(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    return {"jobs": [j.as_dict() for j in requester.jobs.values()]}


async def cancel(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    try:
        job = _job(requester, req)
    except LookupError as exc:
        return control.refusal(str(exc))
    job.cancel.set()
    return {"job_id": job.job_id, "state": job.state}


OPS: dict[str, Callable[[Requester, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "submit": submit,
    "job": job_status,
    "finished": finished,
    "jobs": jobs,
    "cancel": cancel,
}
