"""What a job's result *is*, byte for byte, and when a requester pays for one. Pure.

The worker signs (in its ledger proposal) the sha256 of a canonical manifest: the exit status and
verdict, and for each released file (the job's stdout and stderr, then its output files) the path,
size and sha256. The requester countersigns that hash before it receives anything; once the files
arrive it rebuilds the manifest from what it got, and a mismatch is proof the worker cheated.
Replicas of a job agree when their manifests' hashes are equal. Jobs settled as one group of a
task session are signed through the group's hash over each task's job id, claim and result hash.

The payment rules, one place for both kinds of claim: `job_problem` (one job's Finished) and
`group_payment_problem` (a task session's group, through `group_problem`) say why a claim must
be refused, or None. The ledger then bounds the amount by the job's limits when it agrees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from ledger.block import HalfBlock
from rainnet.jobproto import FileEntry, Finished, TaskResult
from sandbox import SpecError
from sandbox.spec import check_relative_path

STDOUT = "/stdout"  # absolute: no output path of the job (always relative) can collide with it
STDERR = "/stderr"


@dataclass(frozen=True)
class Verdict:
    exit_code: int | None
    reason: str


def entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, size=len(data), sha256=hashlib.sha256(data).digest())


def manifest_bytes(verdict: Verdict, files: Sequence[FileEntry]) -> bytes:
    body = [
        1,  # manifest format
        verdict.exit_code,
        verdict.reason,
        [[f.path, f.size, f.sha256, f.executable] for f in files],
    ]
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def result_hash(verdict: Verdict, files: Sequence[FileEntry]) -> bytes:
    return hashlib.sha256(manifest_bytes(verdict, files)).digest()


def group_hash(tasks: Sequence[TaskResult]) -> bytes:
    """What a group's proposal signs: each task's job id, claimed CPU-ms and result hash."""
    body = [1, [[t.job_id, t.cpu_ms, t.result_hash] for t in tasks]]
    return hashlib.sha256(msgpack.packb(body, use_bin_type=True)).digest()


def safe_layout(entries: Sequence[FileEntry]) -> bool:
    """stdout, stderr, then output files at relative paths that stay inside the job's folder."""
    if len(entries) < 2 or (entries[0].path, entries[1].path) != (STDOUT, STDERR):
        return False
    paths = [e.path for e in entries[2:]]
    try:
        for path in paths:
            check_relative_path("output", path)
    except SpecError:
        return False
    if len(set(paths)) != len(paths):
        return False
    # No file may also be a directory of another (`a` and `a/b`): they could not both be stored.
    files = set(paths)
    return not any(str(parent) in files for p in paths for parent in Path(p).parents)


def group_problem(
    finished: Finished, signed_hash: bytes, claimed_ms: int, allowed_ms: Mapping[str, int]
) -> str | None:
    """Why a group's result (a task session's Finished) is not what its claim (`signed_hash`,
    `claimed_ms`) should be, for the tasks in `allowed_ms` (each job's most CPU-ms); None if it
    is. Each task's files must hash to its result, the tasks to the signed hash, and their
    claims (each within its limits) add up to the claim."""
    tasks = finished.tasks
    ids = [t.job_id for t in tasks]
    if not tasks or len(set(ids)) != len(ids) or set(ids) != set(allowed_ms):
        return "the group's tasks are not the ones run"
    if sum(t.files for t in tasks) != len(finished.outputs):
        return "the group's files are not its tasks' files"
    start = 0
    for t in tasks:
        files = finished.outputs[start : start + t.files]
        start += t.files
        if result_hash(Verdict(t.exit_code, t.reason), files) != t.result_hash:
            return f"task {t.job_id}: its files do not hash to its result"
        if not safe_layout(files):
            return f"task {t.job_id}: its files are not stdout, stderr and relative paths"
        if t.cpu_ms > allowed_ms[t.job_id]:
            return f"task {t.job_id}: claims more CPU time than its limits allow"
    if group_hash(tasks) != finished.result_hash or signed_hash != finished.result_hash:
        return "the proposal signs another result than the one announced"
    if sum(t.cpu_ms for t in tasks) != claimed_ms:
        return "the claim is not the sum of its tasks' claims"
    return None


# A claim may exceed CPUs x the time we saw the job run by this much (accounting granularity,
# the start-up inside the sandbox before our clock's view of it, a scheduler tick).
CLAIM_SLACK_SECONDS = 2.0
CLAIM_SLACK_RATIO = 0.1


def overclaim_problem(cpu_ms: int, cpus_milli: int, observed_seconds: float) -> str | None:
    """Why a claim of `cpu_ms` is more than a job of `cpus_milli` could have used in the
    `observed_seconds` the requester saw it run (from the worker's Accept to its result); None
    if it is plausible. The ledger bounds a claim by the job's limits only: a 0.1 s job may not
    be billed its whole time limit."""
    most = cpus_milli * (observed_seconds + CLAIM_SLACK_SECONDS) * (1 + CLAIM_SLACK_RATIO)
    if cpu_ms <= most:
        return None
    return (
        f"claims {cpu_ms / 1000:.3f} CPU-seconds for a job of {cpus_milli / 1000:g} CPUs seen "
        f"running {observed_seconds:.1f} s: more than it could have used"
    )


def job_problem(
    finished: Finished,
    proposal: HalfBlock,
    job_id: str,
    worker_key: bytes,
    max_bytes: int,
    observed_seconds: float,
) -> str | None:
    """Why one job's result (`finished`, with the worker's signed `proposal`) must not be paid
    for; None if it may. The announced files must hash to the result the worker signs, for this
    job, signed by the worker we gave it to, within `max_bytes` and a safe layout, claiming no
    more than the job could have used in the time we saw it run."""
    verdict = Verdict(finished.exit_code, finished.reason)
    if result_hash(verdict, finished.outputs) != finished.result_hash:
        return "the announced result does not hash to the signed hash"
    if proposal.transaction.result_hash != finished.result_hash:
        return "the proposal signs another result than the one announced"
    if proposal.public_key != worker_key:
        return "the proposal is not signed by the worker"
    if proposal.transaction.job_id != job_id:
        return "the proposal is for another job"
    tx = proposal.transaction
    overclaim = overclaim_problem(tx.cpu_ms, tx.limits.cpus_milli, observed_seconds)
    if overclaim is not None:
        return overclaim
    return _release_problem(finished, max_bytes) or (
        None
        if safe_layout(finished.outputs)
        else "the result's files are not stdout, stderr and relative output paths"
    )


def group_payment_problem(
    finished: Finished,
    proposal: HalfBlock,
    allowed_ms: Mapping[str, int],
    worker_key: bytes,
    max_bytes: int,
    observed_seconds: Mapping[str, float],
) -> str | None:
    """Why a task session's group (`finished` and the worker's signed `proposal`) must not be
    paid for, given the tasks we may pay for and each one's most CPU-ms (`allowed_ms`), and how
    long we saw each run (its batch's time: `observed_seconds`); None if it may."""
    tx = proposal.transaction
    problem = group_problem(finished, tx.result_hash, tx.cpu_ms, allowed_ms)
    if problem is None and proposal.public_key != worker_key:
        problem = "the proposal is not signed by the worker"
    for t in finished.tasks if problem is None else ():
        seen = observed_seconds.get(t.job_id, 0.0)
        why = overclaim_problem(t.cpu_ms, tx.limits.cpus_milli, seen)
        if why is not None:
            return f"task {t.job_id}: {why}"
    return problem or _release_problem(finished, max_bytes)


TOO_LARGE = "the result is larger than this node accepts"  # (ours to set: no fault of the worker)


def _release_problem(finished: Finished, max_bytes: int) -> str | None:
    if sum(f.size for f in finished.outputs) > max_bytes:
        return TOO_LARGE
    return None


def blames_worker(problem: str) -> bool:
    """Whether a payment problem proves the worker wrong (a result that does not match what it
    signed, another job's claim, more CPU than it could have used...), not a limit of ours."""
    return problem != TOO_LARGE
