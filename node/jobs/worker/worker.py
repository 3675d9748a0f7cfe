"""The worker's end of the job protocol: take an offer, run the job in the sandbox, get paid.

One trio task per job stream (`/rain/job/1.1.0`, see rainnet.jobproto). The order of a job:
1. the offer is checked: a plain job id not run here before, a valid spec, the idle policy lets
   guests in, a sandbox backend can run it, and the requester's verified balance stays above
   the credit floor (its chain is verified first: the offer brings the blocks we lack as far as
   the requester knows, and anything else we ask for on the job stream); then it waits
   briefly for capacity, where requesters with more verified credit go first;
2. accepted, its inputs arrive in hash-checked chunks and the job runs in the sandbox; its
   output streams to the requester live, with progress reports that double as the lease's
   heartbeat; a Cancel stops it; once the sandbox is gone its CPUs take the next job;
3. at its end the worker signs a ledger proposal for the measured CPU-seconds against the hash
   of the result manifest, keeps the result (node.jobs.worker.held), and offers it with the
   manifest;
4. only after the requester's agreement to that very proposal is stored does the worker
   release the result files, in bounded chunks.
If the requester goes away, the job runs on and its result is held: it is settled when the
requester is back (deliver_held).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import trio

from ledger.admission import Candidate, by_priority
from ledger.block import JobLimits
from ledger.errors import LedgerError, RemoteFault
from ledger.messages import (
    Agree,
    ChainPage,
    ChainRequest,
    Propose,
    Refuse,
    decode_message,
    encode_message,
)
from node.jobs import transfer
from node.jobs.core import results, scheduler
from node.jobs.worker.held import HeldResults
from node.ledger_link import LedgerLink
from rainnet import identity, jobproto, wire
from rainnet.streams import FramedStream, StreamGone
from sandbox import Backend, Job, JobResult, JobSpec, SandboxError, SpecError
from sandbox.job import check_job_id
from sandbox.spec import check_relative_path

log = logging.getLogger("rainnet.worker")

OFFER_TIMEOUT = 30.0
PROGRESS_INTERVAL = 2.0
# The requester answers a result within this (plus the job's wall time, for replicas waiting on
# each other); longer than its own vote timeout (VOTE_SLACK), so it never pays a worker gone.
SETTLE_TIMEOUT = 180.0
SEND_TIMEOUT = 30.0
CHAIN_SYNC_TIMEOUT = 30.0
MAX_CONCURRENT_OFFERS = 8
QUEUE_WAIT = 10.0  # an offer waits this long for capacity before it is declined
MAX_WAITING = 64
INPUT_TIMEOUT = 30.0  # between two input chunks
MAX_INPUT_TOTAL = 4 << 30  # bytes of inputs per job this worker takes
# Jobs whose sandbox has ended free their CPUs for the next job while they settle and send
# their result; these bound how many may be at that stage at once, and per requester.
MAX_SETTLING = 32
MAX_SETTLING_PER_REQUESTER = 8


@dataclass(frozen=True)
class Admitted:
    """An offer passed the checks: the requester's verified balance, and how far we hold its
    chain verified (told to it in the Accept, so its next offer brings only what is newer)."""

    balance_milli: int
    chain_verified: int


@dataclass
class GuestJob:
    job_id: str
    requester: str
    needs: scheduler.Needs
    started: float
    balance_milli: int = 0  # the requester's verified balance when it was admitted
    # Until its sandbox is gone; then, while it settles and its result travels, its CPUs and
    # memory already serve the next job.
    in_sandbox: bool = True


class AdmissionQueue:
    """Offers waiting for capacity. Whenever capacity frees (or an offer arrives), the waiting
    offers are taken in ledger.admission.by_priority order (higher verified balance first, then
    first come) and the first whose needs fit starts. Bounded in size and in waiting time."""

    def __init__(self, fits: Callable[[scheduler.Needs], str | None]) -> None:
        self._fits = fits
        self._waiting: dict[int, tuple[Candidate, scheduler.Needs]] = {}
        self._arrivals = itertools.count()
        self._changed = trio.Event()

    def released(self) -> None:
        """Capacity or the queue changed: waiting offers look again."""
        self._changed.set()
        self._changed = trio.Event()

    def _next(self) -> int | None:
        ranked = by_priority(c for c, _ in self._waiting.values())
        for cand in ranked:
            if self._fits(self._waiting[cand.arrival][1]) is None:
                return cand.arrival
        return None

    async def wait_turn(
        self, requester: bytes, balance_milli: int, needs: scheduler.Needs, timeout: float
    ) -> str | None:
        """None when this offer may start (the caller registers it at once); else why not."""
        if len(self._waiting) >= MAX_WAITING:
            return f"{len(self._waiting)} jobs are already waiting here"
        me = next(self._arrivals)
        self._waiting[me] = (Candidate(requester, balance_milli, me), needs)
        self.released()
        try:
            with trio.move_on_after(timeout):
                while self._next() != me:
                    await self._changed.wait()
                return None
        finally:
            del self._waiting[me]
            self.released()
        return self._fits(needs) or "busy: higher-priority jobs took the free capacity"


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
        self._open_stream = open_stream
        self.workdir = workdir
        self.running: dict[tuple[str, str], GuestJob] = {}  # (requester, job id) -> job
        self._offers = trio.Semaphore(MAX_CONCURRENT_OFFERS)
        self.queue = AdmissionQueue(self._fits)
        self.held = HeldResults(workdir.parent / "held")
        self._delivering: set[str] = set()
        # Held results offered on their job stream now, or released and not yet dropped.
        self._in_exchange: set[str] = set()

    # ----- the stream handler -----------------------------------------------------------------

    async def handle(self, stream: Any) -> None:
        fs = FramedStream(stream, jobproto.TO_WORKER, jobproto.JOB_MAX_FRAME)
        taken = await self.take_offer(fs, session=False)
        if taken is None:
            return
        offer, spec, backend = taken
        try:
            log.info("running job %s for %s on %s", offer.job_id, fs.remote_peer, backend.name)
            await self._run(fs, backend, offer, spec, fs.remote_peer)
        finally:
            self.let_go(fs.remote_peer, offer.job_id)

    def let_go(self, requester: str, job_id: str) -> None:
        self.running.pop((requester, job_id), None)
        self.queue.released()

    async def take_offer(
        self, fs: FramedStream, session: bool
    ) -> tuple[jobproto.Offer, JobSpec, Backend] | None:
        """Check an offer, wait for capacity, register the job (or session) and accept it;
        None if it was declined. The caller lets the job go (`let_go`) when it ends."""
        requester = fs.remote_peer
        offer = await fs.receive_a(jobproto.Offer, OFFER_TIMEOUT)
        try:
            # The id names directories here (and a cgroup, a container): a plain name only.
            check_job_id(offer.job_id)
            spec = spec_from(offer.spec)
            for entry in offer.inputs:
                check_relative_path("inputs", entry.path)
            if sum(e.size for e in offer.inputs) > MAX_INPUT_TOTAL:
                raise SpecError("inputs", f"more than {MAX_INPUT_TOTAL >> 20} MiB of inputs")
            if session and (offer.inputs or spec.inputs or spec.outputs):
                raise SpecError("inputs", "a task session carries jobs without files")
        except SpecError as exc:
            await self._decline(fs, f"invalid job: {exc}", 0)
            return None
        needs = scheduler.Needs(
            cpus=spec.limits.cpus,
            memory=spec.limits.memory,
            gpus=spec.limits.gpus,
            image=spec.image,
        )
        # Checks first (policy, sandbox, credit), bounded in number at once; then the wait for
        # capacity, where requesters with more verified credit go first.
        key = (requester, offer.job_id)
        if key in self.running:  # (and _admission checks the ledger for an earlier claim)
            await self._decline(fs, f"job {offer.job_id} is running here already", 0)
            return None
        unsettled = sum(r == requester and not j.in_sandbox for (r, _), j in self.running.items())
        if unsettled >= MAX_SETTLING_PER_REQUESTER:
            await self._decline(fs, f"settle your {unsettled} results here first", 5.0)
            return None
        checked: Admitted | str = "busy: too many offers are being checked here"
        with trio.move_on_after(OFFER_TIMEOUT):  # never wait unbounded for a checking slot
            async with self._offers:
                checked = await self._admission(fs, offer, spec)
        if isinstance(checked, str):
            await self._decline(fs, checked, 5.0)
            return None
        public = identity.public_bytes_from_peer_id(requester)
        # (No checkpoint between our turn and registering the job: nobody else can take it.)
        why = await self.queue.wait_turn(public, checked.balance_milli, needs, QUEUE_WAIT)
        why = why or self.may_start()  # the owner may have come back while we waited
        if why is None and key in self.running:
            why = f"job {offer.job_id} is running here already"
        if why is not None:
            await self._decline(fs, why, 5.0)
            return None
        backend = self._backend_for(spec)
        self.running[key] = GuestJob(
            offer.job_id, requester, needs, time.time(), balance_milli=checked.balance_milli
        )
        try:
            await fs.send(
                jobproto.Accept(
                    lease_seconds=offer.lease_seconds,
                    backend=backend.name,
                    chain_verified=checked.chain_verified,
                )
            )
        except BaseException:
            self.let_go(requester, offer.job_id)
            raise
        return offer, spec, backend

    async def _decline(self, fs: FramedStream, reason: str, retry_after: float) -> None:
        log.info("declined a job from %s: %s", fs.remote_peer, reason)
        await fs.send(
            jobproto.Decline(reason=reason[: jobproto.MAX_REASON], retry_after=retry_after)
        )
        await fs.close()

    def _backend_for(self, spec: JobSpec) -> Backend:
        if spec.image is None and "native" in self.backends:
            return self.backends["native"]
        return next(iter(self.backends.values()))

    def in_sandbox(self) -> bool:
        """Whether a guest job is running in a sandbox here now."""
        return any(j.in_sandbox for j in self.running.values())

    def _fits(self, needs: scheduler.Needs) -> str | None:
        settling = sum(not j.in_sandbox for j in self.running.values())
        if settling >= MAX_SETTLING:
            # Their CPUs are free, but each holds a stream and a result: bounded too.
            return f"busy: {settling} results wait to be settled here"
        running = [
            scheduler.Running(j.needs.cpus, j.needs.memory)
            for j in self.running.values()
            if j.in_sandbox
        ]
        return scheduler.admit(True, self.capacity, running, needs, tuple(self.backends))

    async def _admission(
        self, fs: FramedStream, offer: jobproto.Offer, spec: JobSpec
    ) -> Admitted | str:
        """Whether this worker may run the job: the requester's verified balance if so, else
        why not (the idle policy, the sandbox, or credit: the requester's chain is brought up to
        date from the blocks sent with the offer, or else asked for on the job stream, and
        verified; then the floor is applied)."""
        why = self.may_start()
        if why is not None:
            return why
        try:
            self._backend_for(spec).check_spec(spec)
        except SandboxError as exc:
            return str(exc)
        public = identity.public_bytes_from_peer_id(fs.remote_peer)
        ledger = self.ledger.ledger
        limits = job_limits(spec)

        def admit() -> Admitted:
            balance = ledger.admit(public, limits)
            state = ledger.verified_state(public)
            return Admitted(balance.balance_milli, state.verified if state else 0)

        def first_look(offered: ChainPage | None) -> Admitted | ChainRequest | str:
            # One thread hop in the usual case: not claimed before, brought up to date by the
            # blocks sent with the offer, admitted.
            if ledger.exchange(public, offer.job_id) is not None:
                # One run per (requester, job id): a repeated offer would get a run for
                # nothing, or collide with the earlier run's directory and claim.
                return f"job {offer.job_id} ran here already"
            request = ledger.catch_up(public, offered, jobproto.JOB_PAGE_BLOCKS)
            return admit() if request is None else request

        try:
            offered = _offered_chain(offer.chain)
            # Sync and admit under the requester's chain lock: concurrent offers from one
            # requester take turns (the later ones fetch only what is new), and no agreement of
            # its lands between the sync and the floor check.
            async with self.ledger.chain_lock(public):
                with trio.fail_after(CHAIN_SYNC_TIMEOUT):
                    outcome = await self.ledger.call(first_look, offered)
                    if not isinstance(outcome, ChainRequest):
                        return outcome
                    await self.ledger.fetch_pages(fs, outcome, jobproto.JOB_PAGE_BLOCKS)
                return await self.ledger.call(admit)
        except RemoteFault as exc:
            return str(exc)
        except (trio.TooSlowError, StreamGone, wire.RemoteProtocolError, ValueError) as exc:
            return f"could not verify your credit: {exc}"

    # ----- running ----------------------------------------------------------------------------

    async def _run(
        self,
        fs: FramedStream,
        backend: Backend,
        offer: jobproto.Offer,
        spec: JobSpec,
        requester: str,
    ) -> None:
        result_dir = self.workdir / offer.job_id / "result"
        incoming = transfer.Incoming(offer.inputs, self.workdir / offer.job_id / "inputs")
        try:
            paths = []
            if offer.inputs:  # (a job without inputs starts at once: no InputDone to wait for)
                paths = await transfer.receive(
                    fs, incoming, jobproto.InputChunk, jobproto.InputDone, INPUT_TIMEOUT
                )
            staged = [(e.path, p) for e, p in zip(offer.inputs, paths, strict=True)]
            await self._execute(fs, backend, offer, spec, requester, staged, result_dir)
        finally:
            await trio.to_thread.run_sync(remove_tree, self.workdir / offer.job_id)

    async def _execute(
        self,
        fs: FramedStream,
        backend: Backend,
        offer: jobproto.Offer,
        spec: JobSpec,
        requester: str,
        staged: list[tuple[str, Path]],
        result_dir: Path,
    ) -> None:
        result = await self.sandboxed(fs, backend, offer.job_id, spec, result_dir, staged)
        guest = self.running.get((requester, offer.job_id))
        if guest is not None:
            guest.in_sandbox = False
            self.queue.released()
        if staged:  # not needed any more; the job may wait long for its settlement
            await trio.to_thread.run_sync(remove_tree, self.workdir / offer.job_id / "inputs")
        if result.reason.value == "cancelled":
            # By the requester, or given up by the idle policy (the owner stayed too long): no
            # claim. End the stream now so the requester runs the job elsewhere at once, not
            # only when its lease runs out.
            await fs.close()
            return
        entries, sources = result_files(result, result_dir)
        verdict = results.Verdict(result.exit_code, result.reason.value)
        finished = jobproto.Finished(
            exit_code=result.exit_code,
            reason=result.reason.value,
            cpu_seconds=result.cpu_seconds,
            wall_seconds=result.wall_seconds,
            peak_memory=result.peak_memory,
            result_hash=results.result_hash(verdict, entries),
            outputs=tuple(entries),
            proposal=b"",
        )
        claim = claimable_ms(result.cpu_seconds, spec)
        await self.claim_and_release(
            fs, requester, offer.job_id, claim, job_limits(spec), finished, sources
        )

    async def sandboxed(
        self,
        fs: FramedStream,
        backend: Backend,
        job_id: str,
        spec: JobSpec,
        result_dir: Path | None,
        staged: list[tuple[str, Path]],
        live: bool = True,
        skip: set[str] | None = None,
    ) -> JobResult:
        """Run one job in the sandbox, following it on `fs` (see _follow_job); its result."""
        async with backend.open_job(spec, result_dir=result_dir, staged_inputs=staged) as job:
            if self.may_start() is not None:
                # The owner came back while the job was starting: the policy's suspend went
                # out before this job could hear it, and is not repeated.
                await job.suspend()
            return await self._follow_job(fs, job_id, spec, job, live, skip)

    async def _follow_job(
        self,
        fs: FramedStream,
        job_id: str,
        spec: JobSpec,
        job: Job,
        live: bool = True,
        skip: set[str] | None = None,
    ) -> JobResult:
        """Stream the running job's output (if `live`) and progress to the requester and obey
        its Cancel; if the requester goes away, the job runs on all the same. The job's result.
        In a task session a Cancel names its task: one for a later task of the batch goes to
        `skip`."""
        async with trio.open_nursery() as n:

            async def forward_output() -> None:
                async for chunk in job.output():
                    for i in range(0, len(chunk.data), jobproto.CHUNK):
                        piece = chunk.data[i : i + jobproto.CHUNK]
                        await fs.send(jobproto.Output(stream=chunk.stream.value, data=piece))

            async def progress() -> None:
                start = trio.current_time()
                while True:
                    await trio.sleep(PROGRESS_INTERVAL)
                    await fs.send(
                        jobproto.Progress(
                            state=job.state.value,
                            cpu_seconds=job.cpu_seconds(),
                            wall_seconds=trio.current_time() - start,
                        )
                    )

            async def listen_for_cancel() -> None:
                while True:
                    msg = await fs.receive(timeout=spec.limits.wall_seconds * 4 + 3600)
                    if not isinstance(msg, jobproto.Cancel):
                        raise wire.RemoteProtocolError(f"{msg.TYPE} while the job runs")
                    if skip is not None and msg.job_id not in ("", job_id):
                        skip.add(msg.job_id)
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
                    log.info("job %s: requester unreachable (%s); running on", job_id, exc)
                    n.cancel_scope.cancel()
                except wire.RemoteProtocolError as exc:
                    log.warning("job %s: %s; cancelling", job_id, exc)
                    await job.cancel()

            async def end_with_the_job() -> None:
                await job.wait()
                n.cancel_scope.cancel()

            if live:
                n.start_soon(supervise, forward_output)
            n.start_soon(supervise, progress)
            n.start_soon(supervise, listen_for_cancel)
            n.start_soon(end_with_the_job)
        return await job.wait()

    async def claim_and_release(
        self,
        fs: FramedStream | None,
        requester: str,
        claim_id: str,
        cpu_ms: int,
        limits: JobLimits,
        finished: jobproto.Finished,
        sources: Sequence[Path | bytes],
        drop_later: list[str] | None = None,
    ) -> None:
        """Sign the claim for a result (`finished`, its proposal still empty), hold the result,
        and offer it on `fs`: released once paid, refused, or held for the requester's return
        (at once if `fs` is None: the stream is gone). A task session passes `drop_later`: the
        held copies in it are dropped in the same thread hop as this one is kept, and this one
        is added to it once released, rather than dropped at once (a hop on its next task's
        path)."""
        try:
            proposal = await self.ledger.call(
                lambda: self.ledger.ledger.propose(
                    requester=identity.public_bytes_from_peer_id(requester),
                    job_id=claim_id,
                    cpu_ms=cpu_ms,
                    gpu_ms=0,
                    limits=limits,
                    result_hash=finished.result_hash,
                )
            )
        except LedgerError as exc:
            log.error("job %s: cannot sign the claim: %s", claim_id, exc)
            return
        if proposal.block.transaction.result_hash != finished.result_hash:
            # propose() is idempotent per (requester, job): an earlier claim for this job id
            # stands, and it is not for this result.
            log.error("job %s: claimed before for another result; not releasing", claim_id)
            return
        finished = dataclasses.replace(finished, proposal=encode_message(proposal))
        # Keep the result with our signed claim before offering it: if the requester vanishes,
        # or this node dies after being paid, it is settled or released when both are back
        # (deliver_held). It goes only once released, or refused. (Not in the ledger's
        # thread: moving files must not hold up admissions and agreements.)
        released = list(drop_later or ())

        def keep() -> list[Path]:
            for old in released:
                self.held.drop(old)
            return self.held.keep(claim_id, requester, finished, sources)

        paths = await trio.to_thread.run_sync(keep)
        if drop_later is not None:
            self.dropped(released)
            drop_later.clear()
        if fs is None:
            log.info("job %s: requester gone; holding its result", claim_id)
            return
        # Replicas of the job wait for each other before the requester answers.
        timeout = SETTLE_TIMEOUT + limits.wall_ms / 1000
        # deliver_held leaves it alone meanwhile, and until its held copy is dropped.
        self._in_exchange.add(claim_id)
        try:
            await self._exchange(fs, claim_id, requester, finished, paths, timeout)
        except BaseException as exc:
            self._in_exchange.discard(claim_id)
            if isinstance(exc, StreamGone):
                log.info("job %s: requester gone (%s); holding its result", claim_id, exc)
                return
            raise
        if drop_later is None:
            await trio.to_thread.run_sync(self.held.drop, claim_id)
            self._in_exchange.discard(claim_id)
        else:
            drop_later.append(claim_id)

    def dropped(self, claim_ids: Sequence[str]) -> None:
        """The held copies of these released claims are gone (see claim_and_release)."""
        self._in_exchange.difference_update(claim_ids)

    async def _exchange(
        self,
        fs: FramedStream,
        job_id: str,
        requester: str,
        finished: jobproto.Finished,
        sources: Sequence[Path | bytes],
        settle_timeout: float,
    ) -> None:
        """Offer the result, take the answer, and release the files once we are paid for
        exactly this proposal (an agreement to another of ours must not buy these files)."""
        await fs.send(finished, SEND_TIMEOUT)
        settle = await fs.receive_a(jobproto.Settle, settle_timeout)
        try:
            answer = decode_message(settle.answer, (Agree, Refuse))
        except RemoteFault as exc:
            raise wire.RemoteProtocolError(f"settle: {exc}") from None
        if isinstance(answer, Refuse):
            log.warning("job %s: %s refused to pay: %s", job_id, requester, answer.reason)
            return
        assert isinstance(answer, Agree)
        ours = propose_from(finished.proposal).block
        try:
            async with self.ledger.chain_lock(answer.block.public_key):
                exchange = await self.ledger.call(self.ledger.ledger.accept_agreement, answer)
        except RemoteFault as exc:
            raise wire.RemoteProtocolError(f"agreement: {exc}") from None
        if exchange.proposal.hash != ours.hash:
            raise wire.RemoteProtocolError("the agreement is for another of our proposals")
        log.info("job %s settled: %.3f CPU-seconds", job_id, finished.cpu_seconds)

        async def send_chunk(index: int, offset: int, data: bytes) -> None:
            await fs.send(jobproto.OutputChunk(index=index, offset=offset, data=data), SEND_TIMEOUT)

        # (An empty file is not opened: most jobs leave stderr, or both, empty.)
        nonempty = [
            b"" if e.size == 0 else s for e, s in zip(finished.outputs, sources, strict=True)
        ]
        await transfer.send(send_chunk, nonempty)
        await fs.send(jobproto.OutputDone(), SEND_TIMEOUT)
        # (Not closed here: a task session goes on; the handler closes a job's stream.)

    async def deliver_held(self, requester: str) -> None:
        """`requester` is back: settle the results we held for it, one at a time (and one
        delivery per requester at a time: hellos and the retry loop may both ask)."""
        if requester in self._delivering:
            return
        self._delivering.add(requester)
        try:
            await self._deliver_held(requester)
        finally:
            self._delivering.discard(requester)

    async def _deliver_held(self, requester: str) -> None:
        for job_id in await trio.to_thread.run_sync(self.held.for_requester, requester):
            if job_id in self._in_exchange:
                continue  # being offered on its own job stream right now
            try:
                finished, paths = await trio.to_thread.run_sync(self.held.load, job_id)
                stream = await self._open_stream(requester, jobproto.RESULT)
                fs = FramedStream(stream, (jobproto.Settle,), jobproto.JOB_MAX_FRAME)
                try:
                    await self._exchange(fs, job_id, requester, finished, paths, SETTLE_TIMEOUT)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await fs.reset()  # released, not left half-open
                    raise
                await fs.close()
            except (StreamGone, wire.RemoteProtocolError) as exc:
                log.info("held result of job %s not delivered yet: %s", job_id, exc)
                return
            except (OSError, wire.WireError) as exc:
                log.error("held result of job %s is unreadable, dropped: %s", job_id, exc)
            else:
                log.info("held result of job %s delivered to %s", job_id, requester)
            await trio.to_thread.run_sync(self.held.drop, job_id)


def job_limits(spec: JobSpec) -> JobLimits:
    """The limits the ledger bounds a claim by (the requester checks the same numbers)."""
    return JobLimits(
        cpus_milli=max(1, round(spec.limits.cpus * 1000)),
        gpus=spec.limits.gpus,
        wall_ms=max(1, round(spec.limits.wall_seconds * 1000)),
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


def claimable_ms(cpu_seconds: float, spec: JobSpec) -> int:
    """The measured CPU time in milliseconds, never above what the job's limits allowed (the
    CFS quota lets a job overshoot its share by a scheduler tick; the ledger refuses any excess)."""
    limits = job_limits(spec)
    ceiling = limits.cpus_milli * limits.wall_ms // 1000
    return max(0, min(round(cpu_seconds * 1000), ceiling))


def remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def spec_from(data: bytes) -> JobSpec:
    """The JobSpec in an offer or a task (SpecError if it is not one)."""
    return JobSpec.from_wire(_unpack(data))


def _unpack(data: bytes) -> object:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise SpecError("spec", f"not msgpack: {exc}") from None


def _offered_chain(data: bytes) -> ChainPage | None:
    """The page of its chain a requester sent with its offer (None if it sent none)."""
    if not data:
        return None
    msg = decode_message(data, (ChainPage,))  # RemoteFault if malformed
    assert isinstance(msg, ChainPage)
    return msg


def propose_from(data: bytes) -> Propose:
    """The ledger proposal inside a Finished message (RemoteProtocolError if malformed)."""
    try:
        msg = decode_message(data, (Propose,))
    except RemoteFault as exc:
        raise wire.RemoteProtocolError(f"proposal: {exc}") from None
    assert isinstance(msg, Propose)
    return msg
