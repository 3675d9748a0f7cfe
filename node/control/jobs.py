"""The control API's job operations: submit, job (state and new output), finished (the states of
jobs that have ended, at once), jobs, cancel; distrusted (workers offered nothing) and forgive.

Requests come from the local user through the control socket (JSON). A submission names input
files by local path; the node reads them (it runs as the same user) into the job spec.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

from node.control import channel as control
from node.jobs import blocking, transfer
from node.jobs.requester import Requester
from node.jobs.requester.record import MAX_QUEUE_LIMIT, QUEUE_LIMIT, JobRecord
from node.jobs.requester.store import UNTRUSTED_FOR
from node.units import format_duration, format_size
from rainnet.jobproto import MAX_SPEC_BYTES, FileEntry
from sandbox import JobSpec, Limits, SpecError
from sandbox.spec import check_relative_path

MAX_LOG_CHUNK = 256 * 1024
MAX_REPLICAS = 16
MAX_NAME = 64
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
    limit_keys = ("cpus", "memory", "wall_seconds", "gpus", "output_bytes")
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


class JobNotFound(LookupError):
    """No job of that id (or array, or start of one) on this node."""


def _refused(exc: LookupError) -> dict[str, Any]:
    kind = control.Refusal.NOT_FOUND if isinstance(exc, JobNotFound) else control.Refusal.REFUSED
    return control.refusal(str(exc), kind)


def _named(requester: Requester, given: object) -> list[JobRecord]:
    """The jobs `given` names: a job's id, an array's (all its tasks, in order), or a unique
    start of either. LookupError saying why if none, or if it is ambiguous."""
    if not isinstance(given, str) or not given:
        raise LookupError("name a job by its id (see `rain jobs`)")
    jobs = requester.jobs
    if given in jobs:
        return [jobs[given]]
    tasks = [j for j in jobs.values() if j.array_id == given]
    if not tasks:
        heads = {j.job_id for j in jobs.values() if j.job_id.startswith(given)}
        arrays = {a for j in jobs.values() if (a := j.array_id) and a.startswith(given)}
        if len(arrays) == 1 and all(h.startswith(f"{next(iter(arrays))}_") for h in heads):
            return _named(requester, next(iter(arrays)))
        if len(heads) == 1:
            return [jobs[heads.pop()]]
        if heads:
            raise LookupError(f"{given!r} starts {len(heads)} job ids: give more of it")
        raise JobNotFound(f"no job {given!r} on this node (see `rain jobs`)")
    return sorted(tasks, key=lambda j: j.array_task or 0)


def _job(requester: Requester, req: dict[str, Any]) -> JobRecord:
    """The one job `req["job_id"]` names (not an array of several)."""
    found = _named(requester, req.get("job_id"))
    if len(found) > 1:
        first = found[0]
        raise LookupError(
            f"{first.array_id} is an array of {len(found)} tasks: name one, like {first.job_id}"
        )
    return found[0]


async def resolve(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    """The ids of the jobs a name stands for (an array's tasks, a unique start of an id)."""
    try:
        return {"job_ids": [j.job_id for j in _named(requester, req.get("job_id"))]}
    except LookupError as exc:
        return _refused(exc)


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
        room = MAX_SPEC_BYTES - 160  # (160: the ids the requester adds to its environment)
        if len(msgpack.packb(spec.to_wire(), use_bin_type=True)) > room:
            raise SpecError("argv", f"command and environment exceed {MAX_SPEC_BYTES >> 10} KiB")
        replicas = req.get("replicas", 1)
        if not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
            raise SpecError("replicas", f"a number from 1 to {MAX_REPLICAS}")
        name = req.get("name")
        if name is not None and not (isinstance(name, str) and 0 < len(name) <= MAX_NAME):
            raise SpecError("name", f"1 to {MAX_NAME} characters")
        queue_limit = req.get("queue_limit")
        queue_limit = QUEUE_LIMIT if queue_limit is None else queue_limit
        if not isinstance(queue_limit, int | float) or not 0 < queue_limit <= MAX_QUEUE_LIMIT:
            raise SpecError("queue_limit", f"more than 0 s, at most {MAX_QUEUE_LIMIT / 86400:g}d")

        if array is None:
            [job] = await requester.submit([spec], inputs, replicas, name, float(queue_limit))
            return {"job_id": job.job_id}
        array_of = req.get("array_of")  # (more tasks of an array, sent a batch at a time)
        jobs = await requester.submit(
            [spec] * len(array),
            inputs,
            replicas,
            name,
            float(queue_limit),
            array=array,
            array_id=array_of if isinstance(array_of, str) else None,
        )
    except SpecError as exc:
        return control.refusal(in_users_units(exc))
    except ValueError as exc:
        return control.refusal(str(exc))
    return {"job_ids": [j.job_id for j in jobs], "array_id": jobs[0].array_id}


# The limits a submitter sets, by the flag that sets them and how that flag writes its values.
_FLAGS: dict[str, tuple[str, Callable[[float], str]]] = {
    "limits.cpus": ("--cpus", lambda v: f"{v:g}"),
    "limits.memory": ("--mem", lambda v: format_size(int(v))),
    "limits.wall_seconds": ("--time", format_duration),
    "limits.gpus": ("--gpus", lambda v: f"{v:g}"),
    "limits.output_bytes": ("--log-cap", lambda v: format_size(int(v))),
}


def in_users_units(exc: SpecError) -> str:
    """A spec error as the user wrote the job: `--mem must be between 4M and 1T`, not
    `limits.memory: 0 is outside 4194304..1099511627776`."""
    flag = _FLAGS.get(exc.field)
    if flag is None or exc.bounds is None:
        return str(exc)
    name, fmt = flag
    low, high = exc.bounds
    return f"{name} must be between {fmt(low)} and {fmt(high)}"


async def job_status(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    """A job's state, and its output from the given offsets (so a client can follow it).

    With `wait` (seconds, capped), a job that is still running and has no output past the
    offsets is waited on until it has, or ends: a follower gets news at once without polling.
    """
    try:
        job = _job(requester, req)
    except LookupError as exc:
        return _refused(exc)
    wait = req.get("wait")
    if isinstance(wait, int | float) and wait > 0 and not job.finished.is_set():
        nothing_new = req.get("stdout_from", 0) >= len(job.stdout) and req.get(
            "stderr_from", 0
        ) >= len(job.stderr)
        if nothing_new:
            with trio.move_on_after(min(float(wait), MAX_WAIT)):
                await job.changed.wait()
    await requester.load_output(job)
    return await _status(requester, job, req.get("stdout_from", 0), req.get("stderr_from", 0))


async def _status(
    requester: Requester, job: JobRecord, stdout_from: Any, stderr_from: Any
) -> dict[str, Any]:
    """The job's state and its output from the offsets on, MAX_LOG_CHUNK at most each: while it
    runs, what came live (kept in memory up to MAX_KEPT_OUTPUT); once ended, from its stored
    files, whole. `NAME_size` says how much there is; `NAME_cap` is there when the stream
    reached the job's cap (the worker kept no more)."""
    # One snapshot: whether it ended is taken with its state, before the awaits below. Taken
    # after them, a job that ended meanwhile was answered as ended with the state of before
    # (no "how", no exit code: `rain submit --wait` failed such a job, "rain: job ID: None").
    out = job.as_dict()
    ended = job.finished.is_set()
    folder = requester.jobs_dir / job.job_id
    for name, buf, start in (
        ("stdout", job.stdout, stdout_from),
        ("stderr", job.stderr, stderr_from),
    ):
        start = start if isinstance(start, int) and start >= 0 else 0
        stored = await blocking.run(_read_stored, folder / name, start)
        data, size = stored or (bytes(buf[start : start + MAX_LOG_CHUNK]), len(buf))
        out[name] = data.decode("utf-8", "replace")
        out[f"{name}_next"] = start + len(data)
        out[f"{name}_size"] = size
        if size >= job.spec.limits.output_bytes:
            out[f"{name}_cap"] = job.spec.limits.output_bytes
    out["finished"] = ended
    out["result_dir"] = str(folder)
    return out


def _read_stored(path: Path, start: int) -> tuple[bytes, int] | None:
    """(MAX_LOG_CHUNK bytes from `start`, the whole size) of a stored output; None if there is
    none (the job has not ended, or ended without a result)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(start)
            return f.read(MAX_LOG_CHUNK), size
    except FileNotFoundError:
        return None


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
        out.append(await _status(requester, job, 0, 0))
        size += len(out[-1]["stdout"]) + len(out[-1]["stderr"])
    return {"jobs": out}


async def jobs(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    return {"jobs": [j.as_dict() for j in requester.jobs.values()]}


async def cancel(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    try:
        jobs = _named(requester, req.get("job_id"))
    except LookupError as exc:
        return _refused(exc)
    live = [j for j in jobs if not j.finished.is_set()]
    for job in live:
        job.cancel.set()
    return {
        "job_id": jobs[0].array_id if len(jobs) > 1 else jobs[0].job_id,
        "state": jobs[0].state if len(jobs) == 1 else f"{len(live)} of {len(jobs)} tasks",
        "cancelled": len(live),
    }


async def distrusted(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    """The workers this node offers nothing for now: who, caught on which job, why, until."""
    rows = await blocking.run(requester.store.untrusted_list, time.time())
    return {
        "untrusted": [{**dataclasses.asdict(u), "until": u.since + UNTRUSTED_FOR} for u in rows]
    }


async def forgive(requester: Requester, req: dict[str, Any]) -> dict[str, Any]:
    """Trust a worker again (`peer_id`: its id, or a unique end or start of it)."""
    given = req.get("peer_id")
    if not isinstance(given, str) or not given:
        return control.refusal("peer_id: the worker's id (see `rain workers`)")
    rows = await blocking.run(requester.store.untrusted_list, time.time())
    matches = {u.peer_id for u in rows if u.peer_id.startswith(given) or u.peer_id.endswith(given)}
    if len(matches) != 1:
        known = "no distrusted worker" if not matches else f"{len(matches)} distrusted workers"
        return control.refusal(f"{given!r} names {known} (see `rain workers`)")
    [peer_id] = matches
    await requester.settlement.forgive(peer_id)
    return {"peer_id": peer_id}


OPS: dict[str, Callable[[Requester, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "submit": submit,
    "job": job_status,
    "finished": finished,
    "jobs": jobs,
    "cancel": cancel,
    "resolve": resolve,
    "distrusted": distrusted,
    "forgive": forgive,
}
