"""The control API's MPI operations (JSON from the user-only control socket):

- `mpi-plan` {ranks, per_node, cpus_per_rank, memory_per_rank}: the group `rain mpi hosts`
  would pick, without reserving anything;
- `mpi-assemble` {... and wall_seconds}: a group reserved, with its id and secret (which
  `rain mpi run` hands to the agent through mpiexec's environment);
- `mpi-launch` {group_id, secret, host, argv}: the agent's request for one member's part; the
  id of the job that carries it (the agent follows it with the `job` operation);
- `mpi-end` {group_id}: the group's end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.control.channel import refusal
from node.control.jobs import MAX_NAME, input_files
from node.mpi.assembly import GroupRequest, HostFormat, Unassembled, hostfile
from node.mpi.groups import GroupJob, Groups
from sandbox import JobSpec, SpecError

MAX_ARGV = 256


def output_paths(paths: Any) -> tuple[str, ...]:
    """The paths checked as a job's outputs are (SpecError naming what is wrong)."""
    if paths is None:
        return ()
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise SpecError("outputs", "must be a list of paths")
    return JobSpec.create(["true"], outputs=paths).outputs


def _request(req: dict[str, Any]) -> GroupRequest:
    def number(key: str, kind: type, default: Any) -> Any:
        value = req.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: a number")
        return kind(value)

    return GroupRequest(
        ranks=number("ranks", int, 1),
        per_node=number("per_node", int, None),
        cpus_per_rank=number("cpus_per_rank", float, 1.0),
        memory_per_rank=number("memory_per_rank", int, 256 << 20),
        wall_seconds=number("wall_seconds", float, 3600.0),
    )


async def plan(groups: Groups, req: dict[str, Any]) -> dict[str, Any]:
    try:
        fmt = HostFormat(str(req.get("format") or "mpich"))
        planned = groups.plan(_request(req))
    except ValueError as exc:
        return refusal(str(exc))
    if isinstance(planned, Unassembled):
        return refusal(planned.reason)
    return {"ranks": planned.ranks, "hostfile": hostfile(planned, fmt)}


async def assemble(groups: Groups, req: dict[str, Any]) -> dict[str, Any]:
    """Also takes `inputs` ([local path, name] pairs): files placed in every member's job;
    `outputs` (paths): what each member's job directory holds there at the end comes back;
    `name`: the group's name in `rain jobs`."""
    name = req.get("name")
    try:
        request = _request(req)
        inputs = await trio.to_thread.run_sync(input_files, req.get("inputs"))
        outputs = output_paths(req.get("outputs"))
        if name is not None and not (isinstance(name, str) and 0 < len(name) <= MAX_NAME):
            raise SpecError("name", f"1 to {MAX_NAME} characters")
    except (ValueError, SpecError) as exc:
        return refusal(str(exc))
    group = await groups.assemble(request, GroupJob(inputs, outputs, name))
    if isinstance(group, Unassembled):
        return refusal(group.reason)
    return {**group.as_dict(), "secret": group.secret}


async def launch(groups: Groups, req: dict[str, Any]) -> dict[str, Any]:
    group_id, secret, host, argv = (req.get(k) for k in ("group_id", "secret", "host", "argv"))
    if not (isinstance(group_id, str) and isinstance(secret, str) and isinstance(host, str)):
        return refusal("mpi-launch needs group_id, secret and host")
    if not (isinstance(argv, list) and 0 < len(argv) <= MAX_ARGV):
        return refusal(f"mpi-launch needs argv: 1 to {MAX_ARGV} strings")
    if not all(isinstance(a, str) for a in argv):
        return refusal("mpi-launch: argv is a list of strings")
    job = await groups.launch(group_id, secret, host, argv)
    if isinstance(job, str):
        return refusal(job)
    return {"job_id": job.job_id}


async def end(groups: Groups, req: dict[str, Any]) -> dict[str, Any]:
    group_id = req.get("group_id")
    if not isinstance(group_id, str):
        return refusal("mpi-end needs group_id")
    return await groups.end(group_id)


OPS: dict[str, Callable[[Groups, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "mpi-plan": plan,
    "mpi-assemble": assemble,
    "mpi-launch": launch,
    "mpi-end": end,
}
