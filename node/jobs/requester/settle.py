"""Paying for results and keeping them: the requester's end of a job's settlement.

A worker's result comes with its signed claim (ResultOffered). It is checked by the payment rules
(node.jobs.core.results: the announced files hash to what is signed, by that worker, for this
job or these tasks, within what we accept), for replicas against the other replicas' results
(node.jobs.core.voting, through `Vote`), then countersigned in the ledger within the job's
limits, at most once (`max_payees`). Only then do the result's files come, in bounded chunks
checked against the signed manifest (node.jobs.transfer), and are moved into the job's folder
(`HOME/jobs/<job id>/`: stdout, stderr, outputs/, manifest.json). Refused claims are answered
with the reason, and end the attempt as the worker's protocol error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import trio

from ledger.errors import RemoteFault
from ledger.messages import Agree, Refuse
from node.jobs import blocking, transfer
from node.jobs.core import results, terms, voting
from node.jobs.core.conversation import ResultOffered
from node.jobs.requester.offers import LEASE, PaidAwaitingResult
from node.jobs.requester.record import MAX_KEPT_OUTPUT, JobRecord, JobState
from node.jobs.requester.store import GroupCommit, JobStore
from node.jobs.stream import JobStream
from node.ledger_link import LedgerLink
from rainnet import identity, jobproto, wire
from rainnet.streams import StreamGone

log = logging.getLogger("rainnet.requester")

MAX_RESULT_BYTES = 1 << 30
VOTE_SLACK = 120.0  # beyond the job's wall-time limit, how long a replica waits for the others

End = Callable[[JobRecord, JobState, str | None], Awaitable[None]]


class Vote:
    """The replicas of one job report their result hashes here and wait for the decision
    (node.jobs.core.voting): ("fetch" | "pay" | "refuse", number of workers paid)."""

    def __init__(self, replicas: int, max_runs: int) -> None:
        self.replicas = replicas
        self.max_runs = max_runs
        self.results: dict[str, bytes] = {}
        self.decided = trio.Event()
        self.extra = trio.Event()  # set when one more run is needed
        self.tally: voting.Tally | None = None
        self._fetcher: str | None = None

    def undecidable(self) -> None:
        """No worker is left to break the tie: decided as failed, every run paid."""
        if not self.decided.is_set():
            self.tally = voting.Tally(False, True, None, frozenset(self.results), frozenset(), 0)
            self.decided.set()

    async def cast(self, worker: str, result_hash: bytes) -> tuple[str, int]:
        if not self.decided.is_set():  # once decided, late results change nothing
            self.results[worker] = result_hash
            t = voting.tally(self.results, self.replicas, self.max_runs)
            if t.decided or t.failed:
                self.tally = t
                self.decided.set()
            elif t.more_runs and len(self.results) >= self.replicas:
                self.extra.set()
        await self.decided.wait()
        assert self.tally is not None
        if worker not in self.tally.winners:
            return "refuse", 0
        if self.tally.failed:
            return "pay", len(self.tally.winners)
        if self._fetcher is None:
            self._fetcher = worker
        return ("fetch" if self._fetcher == worker else "pay"), len(self.tally.winners)


class Settlement:
    def __init__(
        self,
        ledger: LedgerLink,
        jobs_dir: Path,
        store: JobStore,
        saver: GroupCommit,
        untrusted: set[str],
        end: End,
    ) -> None:
        self.ledger = ledger
        self.jobs_dir = jobs_dir
        self._store = store
        self._saver = saver
        self.untrusted = untrusted
        self._end = end

    async def distrust(self, worker: str, job_id: str, reason: str) -> None:
        """Offer `worker` nothing more for a while (store.UNTRUSTED_FOR): caught out on
        `job_id`."""
        log.warning("job %s: %s is untrusted from now: %s", job_id, worker, reason)
        self.untrusted.add(worker)
        await blocking.run(self._store.distrust, worker, job_id, time.time(), reason)

    async def forgive(self, worker: str) -> bool:
        """Trust `worker` again; whether it was untrusted."""
        self.untrusted.discard(worker)
        return await blocking.run(self._store.forgive, worker)

    async def _refuse(self, stream: JobStream, claim_id: str, problem: str) -> None:
        await stream.settle(Refuse(claim_id, problem))

    # ----- one job --------------------------------------------------------------------------

    async def job(
        self,
        job: JobRecord,
        worker: str,
        stream: JobStream,
        event: ResultOffered,
        vote: Vote | None,
        observed_seconds: float,
    ) -> None:
        """Settle one job's result offered on `stream`, the job having been seen running
        `observed_seconds`; the job is done when this returns, unless it is a replica paid but
        not fetched. RemoteProtocolError if refused (a worker proven wrong is distrusted),
        PaidAwaitingResult if paid and its files did not arrive."""
        # Replicas settle side by side, by design; a job of one copy settles one result at once.
        with contextlib.nullcontext() if vote is not None else _settling(job):
            if not job.finished.is_set():  # (a cancelled job's claim may come after its end)
                job.state = JobState.SETTLING
            finished, proposal = event.finished, event.proposal
            problem = results.job_problem(
                finished,
                proposal.block,
                job.job_id,
                identity.public_bytes_from_peer_id(worker),
                MAX_RESULT_BYTES,
                observed_seconds,
            )
            if problem is not None and results.blames_worker(problem):
                await self.distrust(worker, job.job_id, problem)
            role, payees = "fetch", 1
            if problem is None and vote is not None:
                # Wait for the other replicas (they run side by side, within the same limits).
                with trio.fail_after(job.spec.limits.wall_seconds + VOTE_SLACK):
                    role, payees = await vote.cast(worker, finished.result_hash)
                if role == "refuse":
                    problem = "outvoted: your result differs from the other replicas' majority"
                    await self.distrust(worker, job.job_id, problem)
                    await self._refuse(stream, job.job_id, problem)
                    await stream.close()
                    return
            answer: Agree | None = None
            if problem is None:
                try:
                    answer = await self.ledger.agree(proposal, terms.job_limits(job.spec), payees)
                except RemoteFault as exc:
                    problem = str(exc)
            if answer is None:
                assert problem is not None
                await self._refuse(stream, job.job_id, problem)
                raise wire.RemoteProtocolError(f"refused to pay: {problem}")
            await stream.settle(answer, fetch=role == "fetch")
            # Paid CPU-seconds add up over the replicas paid; `cpu_seconds` showed the live
            # figure of progress reports until now, so it is set from the sum, not added to.
            job.credit += proposal.block.transaction.cpu_ms / 1000
            job.cpu_seconds = job.credit
            job.claim = job.job_id
            if role == "pay":  # a replica that agreed with the winner: paid, its copy not needed
                await stream.close()
                return
            out_dir = self.jobs_dir / job.job_id
            incoming = transfer.Incoming(finished.outputs, out_dir / ".partial")
            try:
                paths = await transfer.receive(
                    stream, incoming, jobproto.OutputChunk, jobproto.OutputDone, LEASE
                )
            except (StreamGone, wire.RemoteProtocolError) as exc:
                raise PaidAwaitingResult(str(exc)) from None
            job.stdout[:], job.stderr[:] = await blocking.run(
                _store_files, out_dir, finished.outputs, paths
            )
            job.outputs = [e.path for e in finished.outputs[2:]]
            job.exit_code, job.reason = finished.exit_code, finished.reason
            job.peak_memory = finished.peak_memory
            if job.finished.is_set():
                if job.state is JobState.FAILED:  # paid, given up waiting: here at last
                    await self.forgive(worker)
                    job.state, job.error, job.ended = JobState.DONE, None, time.time()
                # (else: cancelled, then paid for what it used: kept so)
                await self._saver.save(job)
                job.touch()
            else:
                cancelled = job.cancel.is_set()
                await self._end(job, JobState.CANCELLED if cancelled else JobState.DONE, None)

    # ----- a task session's group -----------------------------------------------------------

    async def group(
        self,
        worker: str,
        stream: JobStream,
        event: ResultOffered,
        jobs: dict[str, JobRecord],
        observed: Mapping[str, float],
    ) -> Callable[[], Awaitable[None]]:
        """Check and pay a group of tasks (one claim), then receive their results; what stores
        them and ends their jobs (the caller awaits it, or lets it run beside the next task).
        `jobs` are the tasks we may pay for: run by this worker, never paid elsewhere;
        `observed`: how long we saw each run."""
        finished, proposal = event.finished, event.proposal
        claim_id = proposal.block.transaction.job_id
        allowed = {j: terms.max_cpu_ms(job.spec) for j, job in jobs.items()}
        problem = results.group_payment_problem(
            finished,
            proposal.block,
            allowed,
            identity.public_bytes_from_peer_id(worker),
            MAX_RESULT_BYTES,
            observed,
        )
        if problem is not None and results.blames_worker(problem):
            await self.distrust(worker, claim_id, problem)
        if problem is None and any(
            job.settling or (job.finished.is_set() and job.state is not JobState.CANCELLED)
            for job in jobs.values()
        ):
            problem = "a job of this group was settled already"  # (paid once, at most)
        answer: Agree | None = None
        if problem is None:
            limits = terms.group_limits([terms.job_limits(j.spec) for j in jobs.values()])
            try:
                answer = await self.ledger.agree(proposal, limits, 1)
            except RemoteFault as exc:
                problem = str(exc)
        if answer is None:
            assert problem is not None
            await self._refuse(stream, claim_id, problem)
            raise wire.RemoteProtocolError(f"refused to pay: {problem}")
        for job in jobs.values():
            job.settling = True
        concluding = False
        try:
            await stream.settle(answer)
            for t in finished.tasks:
                job = jobs[t.job_id]
                job.credit = job.cpu_seconds = t.cpu_ms / 1000
                job.claim = claim_id
            partial = self.jobs_dir / f".group-{claim_id}"
            incoming = transfer.Incoming(finished.outputs, partial)
            try:
                paths = await transfer.receive(
                    stream, incoming, jobproto.OutputChunk, jobproto.OutputDone, LEASE
                )
            except (StreamGone, wire.RemoteProtocolError) as exc:
                raise PaidAwaitingResult(str(exc)) from None
            concluding = True
        finally:
            if not concluding:
                for job in jobs.values():
                    job.settling = False
        log.info("%d jobs settled in one group with %s", len(jobs), worker)
        return functools.partial(self._conclude_group, finished, jobs, partial, paths)

    async def _conclude_group(
        self,
        finished: jobproto.Finished,
        jobs: dict[str, JobRecord],
        partial: Path,
        paths: list[Path],
    ) -> None:
        """Store a paid group's received results in its jobs' folders; the jobs are done."""
        try:
            heads = await blocking.run(
                _store_group, self.jobs_dir, partial, finished.tasks, finished.outputs, paths
            )
            done = []
            for t, (out, err) in zip(finished.tasks, heads, strict=True):
                job = jobs[t.job_id]
                if job.finished.is_set():
                    continue  # cancelled while its group ran, its end recorded: paid
                job.stdout[:], job.stderr[:] = out, err
                job.outputs, job.exit_code, job.reason = [], t.exit_code, t.reason
                ended = JobState.CANCELLED if job.cancel.is_set() else JobState.DONE
                job.state, job.ended = ended, time.time()
                done.append(job)
            with trio.CancelScope(shield=True):  # (the cancelled ones too: paid all the same)
                await self._saver.save_now(list(jobs.values()))
            for job in done:
                job.finished.set()
                job.touch()
                job.cancel.set()  # releases the cancel watcher
        finally:
            for job in jobs.values():
                job.settling = False

    # ----- results kept -----------------------------------------------------------------------

    async def load_output(self, job: JobRecord) -> None:
        """The head of a done job's stdout and stderr back in memory (`rain logs` after a
        restart), from the files it was stored in."""
        if job.output_loaded:
            return
        job.output_loaded = True
        folder = self.jobs_dir / job.job_id
        with contextlib.suppress(OSError):  # (removed by hand: nothing to show)
            out, err = await blocking.run(
                lambda: (_head(folder / "stdout"), _head(folder / "stderr"))
            )
            job.stdout[:], job.stderr[:] = out, err


@contextlib.contextmanager
def _settling(job: JobRecord) -> Iterator[None]:
    if job.settling:
        raise wire.RemoteProtocolError("another result of this job is being settled")
    job.settling = True
    try:
        yield
    finally:
        job.settling = False


def _store_files(
    out_dir: Path, entries: tuple[jobproto.FileEntry, ...], paths: list[Path]
) -> tuple[bytes, bytes]:
    """Move the checked files of a job received in `out_dir/.partial` into place."""
    heads = _place_files(out_dir, entries, paths)
    (out_dir / ".partial").rmdir()
    return heads


def _store_group(
    jobs_dir: Path,
    partial: Path,
    tasks: tuple[jobproto.TaskResult, ...],
    entries: tuple[jobproto.FileEntry, ...],
    paths: list[Path],
) -> list[tuple[bytes, bytes]]:
    """Move the checked files of a group, received in `partial`, to their jobs' folders."""
    heads, start = [], 0
    for t in tasks:
        end = start + t.files
        heads.append(_place_files(jobs_dir / t.job_id, entries[start:end], paths[start:end]))
        start = end
    partial.rmdir()
    return heads


def _place_files(
    out_dir: Path, entries: tuple[jobproto.FileEntry, ...], paths: list[Path]
) -> tuple[bytes, bytes]:
    """Move the checked files into place, with a manifest.json (`rain get` re-checks from it);
    the head of stdout and stderr, which `rain logs` shows from memory."""
    names = {results.STDOUT: "stdout", results.STDERR: "stderr"}
    manifest = []
    for entry, path in zip(entries, paths, strict=True):
        name = names.get(entry.path)
        stored = name if name else f"outputs/{entry.path}"
        target = out_dir / stored
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
        manifest.append(
            {"name": name or entry.path, "stored_as": stored, "sha256": entry.sha256.hex()}
        )
    (out_dir / "manifest.json").write_text(json.dumps({"files": manifest}, indent=1))
    return _head(out_dir / "stdout"), _head(out_dir / "stderr")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_KEPT_OUTPUT)
