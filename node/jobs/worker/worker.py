"""The worker: take an offer, run the job in the sandbox, get paid, release the result.

One trio task per job stream (`/rain/job`, see rainnet.jobproto), whose messages pass through
the job conversation (node.jobs.core.conversation). The order of a job:
1. the offer is checked (node.jobs.worker.admission): a plain job id not run here before, a
   valid spec, the idle policy, a sandbox backend, the requester's verified credit; then it
   waits briefly for capacity, where requesters with more verified credit go first;
2. accepted, its inputs arrive in hash-checked chunks and the job runs in the sandbox; its
   output streams to the requester live, with progress reports that double as the lease's
   heartbeat; a Cancel stops it; once the sandbox is gone its CPUs take the next job;
3. at its end the worker claims the measured CPU-seconds, holds the result and releases it
   once paid (node.jobs.worker.claims).
If the requester goes away, the job runs on and its result is held: it is settled when the
requester is back (`deliver_held`); except an MPI group's job (limits.network "group", admitted
by the `group` hook, node.mpi.member), which ends when its requester is gone: its ranks cannot
go on without their launcher. Task sessions (node.jobs.worker.sessions) are admitted like a
job and run through `sandboxed` and the same claims.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from node.jobs import blocking, transfer
from node.jobs.core import results, scheduler, terms
from node.jobs.core.conversation import Kind, OfferReceived, WorkerConversation
from node.jobs.core.holds import Holds, MemberState, reported_state
from node.jobs.core.pending import Refusal
from node.jobs.stream import JobStream
from node.jobs.worker.admission import AdmissionQueue, OfferChecks
from node.jobs.worker.claims import Claims
from node.jobs.worker.held import HeldResults
from node.ledger_link import Admitted, Commitments, LedgerLink
from rainnet import identity, jobproto, wire
from rainnet.jobproto import DeclineKind
from rainnet.streams import FramedStream, StreamGone
from sandbox import Backend, Job, JobResult, JobSpec, JobState, Network

log = logging.getLogger("rainnet.worker")

OFFER_TIMEOUT = 30.0
PROGRESS_INTERVAL = 2.0
# How often a job's state is looked at between progress reports: a change (suspended by the
# owner, held by its group, resumed) is reported at once, so a group is frozen together.
STATE_POLL = 0.1
PROMPT_STATES = frozenset(s.value for s in MemberState)
MAX_CONCURRENT_OFFERS = 8
QUEUE_WAIT = 10.0  # an offer waits this long for capacity before it is declined
INPUT_TIMEOUT = 30.0  # between two input chunks
MAX_INPUT_TOTAL = 4 << 30  # bytes of inputs per job this worker takes
# Jobs whose sandbox has ended free their CPUs for the next job while they settle and send
# their result; these bound how many may be at that stage at once, and per requester.
MAX_SETTLING = 32
MAX_SETTLING_PER_REQUESTER = 8
LIVENESS_CHECK = 1.0  # how often a group job checks that its requester is still in our view


class GroupHook(Protocol):
    """What the worker asks of this node's MPI membership (node.mpi.member.GroupMember)."""

    def admit(self, requester: str, spec: JobSpec) -> JobSpec | str: ...

    def held(self) -> list[scheduler.Running]: ...


@dataclass
class GuestJob:
    job_id: str
    requester: str
    needs: scheduler.Needs
    started: float
    max_cost_milli: int = 0  # the most it may cost, at its limits (what it may come to owe)
    balance_milli: int = 0  # the requester's verified balance when it was admitted
    owed_milli: int = 0  # what the requester owed here then (node.jobs.core.standing)
    newcomer: bool = False  # its requester never earned credit
    # Until its sandbox is gone; then, while it settles and its result travels, its CPUs and
    # memory already serve the next job.
    in_sandbox: bool = True


@dataclass(frozen=True)
class Taken:
    """An offer accepted: the job (or session) registered under the offer's id."""

    offer: jobproto.Offer
    spec: JobSpec
    backend: Backend


class Worker:
    def __init__(
        self,
        backends: dict[str, Backend],
        ledger: LedgerLink,
        capacity: scheduler.Capacity,
        may_start: Callable[[], str | None],
        open_stream: Callable[[str, str], Any],
        workdir: Path,
    ) -> None:
        self.backends = backends
        self.ledger = ledger
        self.capacity = capacity
        self.may_start = may_start  # None if the idle policy lets guests in, else why not
        self.workdir = workdir
        self.running: dict[tuple[str, str], GuestJob] = {}  # (requester, job id) -> job
        self._checks = OfferChecks(MAX_CONCURRENT_OFFERS)
        self.queue = AdmissionQueue(self.fits)
        self.held = HeldResults(workdir.parent / "held")
        self.claims = Claims(ledger, self.held, open_stream)
        # Set by the node when it takes MPI ranks; and whether a peer is in our view.
        self.group: GroupHook | None = None
        self.peer_live: Callable[[str], bool] = lambda peer: True
        # Group jobs held by their requester (node.jobs.core.holds), and whether the idle
        # policy has frozen the guests (set by the node).
        self.holds = Holds()
        self.owner_suspends: Callable[[], bool] = lambda: False

    # ----- the stream handler -----------------------------------------------------------------

    async def handle(self, raw: Any) -> None:
        stream = self.stream(raw, Kind.JOB)
        taken = await self.take_offer(stream)
        if taken is None:
            return
        try:
            log.info(
                "running job %s for %s on %s",
                taken.offer.job_id,
                stream.remote_peer,
                taken.backend.name,
            )
            await self._run(stream, taken)
        finally:
            self.let_go(stream.remote_peer, taken.offer.job_id)

    @staticmethod
    def stream(raw: Any, kind: Kind) -> JobStream:
        fs = FramedStream(raw, jobproto.TO_WORKER, jobproto.JOB_MAX_FRAME)
        return JobStream(fs, WorkerConversation(kind, MAX_INPUT_TOTAL))

    async def deliver_held(self, requester: str) -> None:
        await self.claims.deliver_held(requester)

    def let_go(self, requester: str, job_id: str) -> None:
        self.running.pop((requester, job_id), None)
        self.queue.released()

    async def take_offer(self, stream: JobStream) -> Taken | None:
        """Check an offer, wait for capacity, register the job (or session) and accept it;
        None if it was declined. The caller lets the job go (`let_go`) when it ends."""
        requester = stream.remote_peer
        received = await stream.receive_a(OfferReceived, OFFER_TIMEOUT)
        offer, spec = received.offer, received.spec
        if spec is None:
            await self._decline(
                stream, Refusal(DeclineKind.INVALID, received.problem or "invalid job"), 0
            )
            return None
        if spec.limits.network is Network.GROUP:
            admitted = (
                self.group.admit(requester, spec)
                if self.group is not None
                else "this node takes no MPI ranks"
            )
            if isinstance(admitted, str):
                await self._decline(stream, Refusal(DeclineKind.OTHER, admitted), 0)
                return None
            spec = admitted
        needs = terms.needs(spec)
        # Checks first (policy, sandbox, credit), bounded in number at once; then the wait for
        # capacity, where requesters with more verified credit go first.
        key = (requester, offer.job_id)
        if key in self.running:  # (and the ledger checks for an earlier claim)
            await self._decline(
                stream, Refusal(DeclineKind.INVALID, f"job {offer.job_id} is running here"), 0
            )
            return None
        unsettled = sum(r == requester and not j.in_sandbox for (r, _), j in self.running.items())
        if unsettled >= MAX_SETTLING_PER_REQUESTER:
            why = f"settle your {unsettled} results here first"
            await self._decline(stream, Refusal(DeclineKind.UNSETTLED, why), 5.0)
            return None
        busy = self._checks.busy(requester)
        if busy is not None:
            await self._decline(stream, busy, 1.0)
            return None
        checked: Admitted | Refusal = Refusal(
            DeclineKind.BUSY, "busy: too many offers are being checked here"
        )
        backend = self._backend_for(spec)
        self._checks.enter(requester)
        try:
            with trio.move_on_after(OFFER_TIMEOUT):  # never wait unbounded for a checking slot
                checked = await self._checks.check(
                    self.ledger,
                    stream,
                    offer,
                    spec,
                    backend,
                    self.may_start,
                    self._commitments(requester),
                )
        finally:
            self._checks.leave(requester)
        if isinstance(checked, Refusal):
            await self._decline(stream, checked, 5.0)
            return None
        public = identity.public_bytes_from_peer_id(requester)
        # (No checkpoint between our turn and registering the job: nobody else can take it.)
        refusal = await self.queue.wait_turn(public, checked.balance_milli, needs, QUEUE_WAIT)
        owner = self.may_start()  # the owner may have come back while we waited
        if refusal is None and owner is not None:
            refusal = Refusal(DeclineKind.OWNER, owner)
        if refusal is None and key in self.running:
            refusal = Refusal(DeclineKind.INVALID, f"job {offer.job_id} is running here already")
        if refusal is not None:
            await self._decline(stream, refusal, 5.0)
            return None
        self.running[key] = GuestJob(
            offer.job_id,
            requester,
            needs,
            time.time(),
            max_cost_milli=terms.job_limits(spec).max_amount_milli,
            balance_milli=checked.balance_milli,
            owed_milli=checked.owed_milli,
            newcomer=checked.newcomer,
        )
        try:
            await stream.send(
                jobproto.Accept(
                    lease_seconds=offer.lease_seconds,
                    backend=backend.name,
                    chain_verified=checked.chain_verified,
                )
            )
        except BaseException:
            self.let_go(requester, offer.job_id)
            raise
        return Taken(offer, spec, backend)

    async def _decline(self, stream: JobStream, refusal: Refusal, retry_after: float) -> None:
        log.info("declined a job from %s: %s", stream.remote_peer, refusal.text)
        if stream.conv.ended:  # (the requester cancelled, or broke off, meanwhile)
            return
        await stream.send(
            jobproto.Decline(
                reason=refusal.text[: jobproto.MAX_REASON],
                retry_after=retry_after,
                kind=refusal.kind,
            )
        )
        await stream.close()

    def _commitments(self, requester: str) -> Commitments:
        """What `requester` has going here now: its jobs (at their limits) and the results we
        hold for it unanswered."""
        return Commitments(
            running_milli=sum(
                j.max_cost_milli for (r, _), j in self.running.items() if r == requester
            ),
            held=self.claims.held_unanswered(requester),
            newcomers_running_milli=sum(
                j.max_cost_milli for j in self.running.values() if j.newcomer
            ),
        )

    def _backend_for(self, spec: JobSpec) -> Backend:
        if spec.image is None and "native" in self.backends:
            return self.backends["native"]
        return next(iter(self.backends.values()))

    def in_sandbox(self) -> bool:
        """Whether a guest job is running in a sandbox here now."""
        return any(j.in_sandbox for j in self.running.values())

    def fits(self, needs: scheduler.Needs) -> str | None:
        settling = sum(not j.in_sandbox for j in self.running.values())
        if settling >= MAX_SETTLING:
            # Their CPUs are free, but each holds a stream and a result: bounded too.
            return f"busy: {settling} results wait to be settled here"
        running = [
            scheduler.Running(j.needs.cpus, j.needs.memory)
            for j in self.running.values()
            if j.in_sandbox
        ]
        if self.group is not None:  # slots reserved for MPI groups are taken
            running += self.group.held()
        return scheduler.admit(True, self.capacity, running, needs, tuple(self.backends))

    # ----- running ----------------------------------------------------------------------------

    async def _run(self, stream: JobStream, taken: Taken) -> None:
        offer = taken.offer
        folder = self.workdir / offer.job_id
        incoming = transfer.Incoming(offer.inputs, folder / "inputs")
        try:
            paths = []
            if offer.inputs:  # (a job without inputs starts at once: no InputDone to wait for)
                paths = await transfer.receive(
                    stream, incoming, jobproto.InputChunk, jobproto.InputDone, INPUT_TIMEOUT
                )
            staged = [(e.path, p) for e, p in zip(offer.inputs, paths, strict=True)]
            await self._execute(stream, taken, staged, folder / "result")
        finally:
            await blocking.run(_remove_tree, folder)

    async def _execute(
        self, stream: JobStream, taken: Taken, staged: list[tuple[str, Path]], result_dir: Path
    ) -> None:
        offer, spec, requester = taken.offer, taken.spec, stream.remote_peer
        cancelled: set[str] = set()
        result = await self.sandboxed(
            stream, taken.backend, offer.job_id, spec, result_dir, staged, cancelled=cancelled
        )
        guest = self.running.get((requester, offer.job_id))
        if guest is not None:
            guest.in_sandbox = False
            self.queue.released()
        group = spec.limits.network is Network.GROUP
        said: MemberState | None = None
        if group and result.ok:
            # Its launcher waits for this proxy to end, not for its claim: say so before
            # claiming (the claim, its signature and the result follow as for any job).
            said = MemberState.EXITED
        elif group and given_up(result, offer.job_id, cancelled):
            # Said before the stream ends: a periodic Progress sent while it wound down
            # ("exiting") would otherwise be the requester's last word of why it was lost.
            said = MemberState.GIVEN_UP
        if said is not None and not stream.ending:
            with contextlib.suppress(StreamGone):
                await stream.send(
                    jobproto.Progress(
                        state=said.value,
                        cpu_seconds=result.cpu_seconds,
                        wall_seconds=result.wall_seconds,
                    )
                )
        if staged:  # not needed any more; the job may wait long for its settlement
            await blocking.run(_remove_tree, self.workdir / offer.job_id / "inputs")
        cpu_ms = terms.claimable_ms(result.cpu_seconds, spec)
        if not owed(result, offer.job_id, cancelled, cpu_ms):
            # Given up by the idle policy (the owner stayed too long), or nothing used: no
            # claim. End the stream now so the requester runs the job elsewhere at once, not
            # only when its lease runs out.
            await stream.close()
            return
        entries, sources = result_files(result, result_dir)
        await self.claims.claim_and_release(
            None if stream.ending else stream,
            requester,
            offer.job_id,
            cpu_ms,
            terms.job_limits(spec),
            finished_message(result, entries),
            sources,
        )

    async def sandboxed(
        self,
        stream: JobStream,
        backend: Backend,
        job_id: str,
        spec: JobSpec,
        result_dir: Path | None,
        staged: list[tuple[str, Path]],
        live: bool = True,
        cancelled: set[str] | None = None,
    ) -> JobResult:
        """Run one job in the sandbox, following it on `stream` (see _follow_job); its result.
        The ids of jobs its requester cancelled meanwhile are added to `cancelled`."""
        async with backend.open_job(spec, result_dir=result_dir, staged_inputs=staged) as job:
            if self.may_start() is not None:
                # The owner came back while the job was starting: the policy's suspend went
                # out before this job could hear it, and is not repeated.
                await job.suspend()
            return await self._follow_job(stream, job_id, spec, job, live, cancelled)

    async def _follow_job(
        self,
        stream: JobStream,
        job_id: str,
        spec: JobSpec,
        job: Job,
        live: bool = True,
        cancelled: set[str] | None = None,
    ) -> JobResult:
        """Stream the running job's output (if `live`) and progress to the requester and obey
        its Cancel; if the requester goes away, the job runs on all the same (but for a group
        job, node.mpi, which is cancelled: its ranks need their launcher). The job's result.
        Each job id the requester cancels goes to `cancelled` (in a task session a Cancel names
        its task: one may be for a later task of the batch)."""
        group = spec.limits.network is Network.GROUP
        requester = stream.remote_peer
        async with trio.open_nursery() as n:

            async def send(msg: wire.Message) -> None:
                # Whole or not at all: the job's end cancels these tasks, and a message cut
                # off midway would leave the stream unusable for the Finished that follows.
                with trio.CancelScope(shield=True):
                    await stream.send(msg)

            async def forward_output() -> None:
                async for chunk in job.output():
                    for i in range(0, len(chunk.data), jobproto.CHUNK):
                        piece = chunk.data[i : i + jobproto.CHUNK]
                        await send(jobproto.Output(stream=chunk.stream.value, data=piece))

            async def progress() -> None:
                start = sent_at = trio.current_time()
                said = job.state.value
                while True:
                    await trio.sleep(STATE_POLL)
                    state = self._reported_state(job)
                    now = trio.current_time()
                    prompt = state != said and state in PROMPT_STATES
                    if not prompt and now - sent_at < PROGRESS_INTERVAL:
                        continue
                    said, sent_at = state, now
                    await send(
                        jobproto.Progress(
                            state=state,
                            cpu_seconds=job.cpu_seconds(),
                            wall_seconds=now - start,
                        )
                    )

            async def listen_for_cancel() -> None:
                while True:
                    msg = await stream.receive(timeout=spec.limits.wall_seconds * 4 + 3600)
                    if isinstance(msg, jobproto.Hold):
                        await self._hold(job, job_id, group, msg)
                        continue
                    if not isinstance(msg, jobproto.Cancel):
                        raise wire.RemoteProtocolError(f"{msg.TYPE} while the job runs")
                    target = msg.job_id or job_id
                    if cancelled is not None:
                        cancelled.add(target)
                    if target != job_id:
                        continue
                    log.info("job %s cancelled by its requester: %s", job_id, msg.reason)
                    await job.cancel()
                    return

            async def supervise(fn: Callable[[], Any]) -> None:
                # The requester gone mid-run: the job runs on and its result is held for it
                # (its owner pays when back); one that breaks the protocol gets it cancelled.
                try:
                    await fn()
                except StreamGone as exc:
                    if group:
                        log.info("group job %s: requester gone (%s); ending it", job_id, exc)
                        await end_for_the_requester()
                        return
                    log.info("job %s: requester unreachable (%s); running on", job_id, exc)
                    n.cancel_scope.cancel()
                except wire.RemoteProtocolError as exc:
                    log.warning("job %s: %s; cancelling", job_id, exc)
                    await job.cancel()

            async def end_with_the_job() -> None:
                await job.wait()
                n.cancel_scope.cancel()

            async def watch_requester() -> None:
                # A silent partition breaks no stream: the membership view notices it first.
                while True:
                    await trio.sleep(LIVENESS_CHECK)
                    if not self.peer_live(requester):
                        why = f"requester {requester} left our view"
                        break
                    if self.holds.overdue(job.id, trio.current_time()):
                        why = "held by its group too long"
                        break
                log.info("group job %s: %s; ending it", job_id, why)
                await end_for_the_requester()

            async def end_for_the_requester() -> None:
                # Its ranks ran for the requester until it went (or held them too long): what
                # they used is owed, and claimed; the result is held for the requester's return.
                if cancelled is not None:
                    cancelled.add(job_id)
                await job.cancel()

            if live:
                n.start_soon(supervise, forward_output)
            n.start_soon(supervise, progress)
            n.start_soon(supervise, listen_for_cancel)
            n.start_soon(end_with_the_job)
            if group:
                n.start_soon(watch_requester)
        try:
            return await job.wait()
        finally:
            self.holds.release(job.id)

    def _reported_state(self, job: Job) -> str:
        frozen = job.state is JobState.SUSPENDED
        held = self.holds.held(job.id)
        return reported_state(frozen, held, self.owner_suspends(), job.state.value)

    async def _hold(self, job: Job, job_id: str, group: bool, msg: jobproto.Hold) -> None:
        """The requester holds (or lets go) its group job: frozen with the rest of its group
        while another member's owner is back (node.jobs.core.holds)."""
        if not group:
            raise wire.RemoteProtocolError("a hold for a job that is not of an MPI group")
        if msg.on:
            self.holds.hold(job.id, trio.current_time())
            log.info("group job %s held: %s", job_id, msg.reason or "its group is suspended")
            await job.suspend()
        elif self.holds.release(job.id):
            log.info("group job %s let go", job_id)
            if not self.owner_suspends():  # (else the owner's resume thaws it)
                await job.resume()


def owed(result: JobResult, job_id: str, cancelled: set[str], cpu_ms: int) -> bool:
    """Whether a run is claimed: it ended by itself, or its requester cancelled it (what it used
    until then is owed: a requester must not get work for free by cancelling it after seeing its
    output), and it used some CPU. A job the idle policy gave up is not claimed: the owner, not
    the requester, ended it, and it runs again elsewhere."""
    if given_up(result, job_id, cancelled):
        return False
    return cpu_ms > 0 or result.reason.value != "cancelled"


def given_up(result: JobResult, job_id: str, cancelled: set[str]) -> bool:
    """Whether a run was ended by this node's idle policy (its owner stayed past the policy's
    max_suspend), not by its requester: it was stopped as cancelled, but nobody asked."""
    return result.reason.value == "cancelled" and job_id not in cancelled


def finished_message(result: JobResult, entries: list[jobproto.FileEntry]) -> jobproto.Finished:
    """The Finished announcing a job's result (its proposal added once the claim is signed)."""
    verdict = results.Verdict(result.exit_code, result.reason.value)
    return jobproto.Finished(
        exit_code=result.exit_code,
        reason=result.reason.value,
        cpu_seconds=result.cpu_seconds,
        wall_seconds=result.wall_seconds,
        peak_memory=result.peak_memory,
        result_hash=results.result_hash(verdict, entries),
        outputs=tuple(entries),
        proposal=b"",
    )


def result_files(
    result: JobResult, result_dir: Path | None
) -> tuple[list[jobproto.FileEntry], list[Path | bytes]]:
    """A result's released files (stdout, stderr, then its outputs, copied to `result_dir`,
    which a job without outputs needs not have): entries and sources."""
    entries = [results.entry(results.STDOUT, result.stdout)]
    entries.append(results.entry(results.STDERR, result.stderr))
    sources: list[Path | bytes] = [result.stdout, result.stderr]
    for out in result.outputs:
        assert result_dir is not None  # (outputs are copied only where there is one)
        sha = bytes.fromhex(out.sha256)
        entries.append(jobproto.FileEntry(path=out.path, size=out.size, sha256=sha))
        sources.append(result_dir / out.path)
    return entries, sources


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
