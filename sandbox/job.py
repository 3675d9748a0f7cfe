"""A running job as the node sees it, and the lifecycle every backend shares.

`Backend.open_job(spec)` is an async context manager yielding a `Job`: start, stream output, wait,
cancel, suspend and resume, and read its CPU-seconds while it runs. Leaving the context ends the job
(cancelling it if it still runs) and removes everything of it; only its `JobResult` (and the output
files copied to `result_dir`) remain. `Backend.run(spec)` does all of that in one call.

One supervisor task per job owns the lifecycle: it launches the job through the backend's hooks,
enforces the wall-time, CPU-time and disk limits (wall time counts only time not suspended; CPU time
is read from the job's cgroup, the same counter credit is paid by; the kernel refuses writes past
the disk limits, and a job that went past them is ended), notices the exit, then reads the
counters, collects outputs and tears down. Every wait is bounded: killing, draining output, reading
counters and teardown each have a deadline, and teardown runs even when the rest failed.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

import trio

from sandbox import jobdir, startfail
from sandbox.config import SandboxConfig
from sandbox.errors import JobStateError, SandboxFailure, SpecError
from sandbox.output import OutputBuffer, OutputChunk, Stream
from sandbox.result import JobResult, KillCause, Observation, OutputFile, split_status, verdict
from sandbox.spec import JobSpec, check_relative_path

if TYPE_CHECKING:
    # trio's own annotations are shadowed by the trio-stubs package (a dependency of libp2p),
    # which spells TaskStatus this way.
    from trio_typing import TaskStatus

_JOB_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
KILL_TIMEOUT = 10.0  # a killed job must be gone by then, or the sandbox is broken
DRAIN_TIMEOUT = 2.0  # output still in flight after the exit


class JobState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    SUSPENDED = "suspended"
    EXITING = "exiting"  # its processes are gone; counters and outputs are being read
    DONE = "done"


@dataclass(frozen=True)
class Accounting:
    """A backend's counters for a job that has ended, read before its cgroup is removed."""

    cpu_ns: int
    peak_memory: int
    oom_kills: int
    pids_limit_hits: int


def new_job_id() -> str:
    return secrets.token_hex(8)


def check_job_id(job_id: str) -> str:
    # The id names a cgroup, a directory and a container label, so it must be a plain name.
    if not _JOB_ID_RE.fullmatch(job_id):
        raise SpecError("job_id", f"{job_id[:80]!r} is not 1-64 of [a-z0-9_-]")
    return job_id


class Job(abc.ABC):
    """One job. Create through `Backend.open_job()`; the methods below are the node's API."""

    def __init__(
        self, backend: Backend, spec: JobSpec, job_id: str, result_dir: Path | None
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.id = job_id
        self.result_dir = result_dir
        self._config = backend.config
        self.uid: int | None = None  # the uid the job runs as, once started
        # Inputs on the node's disk, (path in the job, host file): see jobdir.prepare.
        self.staged_inputs: tuple[tuple[str, Path], ...] = ()
        self._dir: jobdir.JobDir | None = None  # made by the backend's _launch
        self._output = OutputBuffer(spec.limits.output_bytes)
        # Between the two: the launcher's words for a command it could not start, rewritten.
        self._start = startfail.StartWatch(backend.launcher_words, spec.argv[0], self._output.feed)
        self._state = JobState.STARTING
        self._exited = trio.Event()
        self._done = trio.Event()
        self._wake = trio.Event()
        self._control = trio.Lock()  # suspend, resume and kill one at a time
        self._returncode: int | None = None
        self._kill_cause: KillCause | None = None
        self._killed_at: float | None = None
        self._started_at: float | None = None
        self._exited_at: float | None = None
        self._suspended_since: float | None = None
        self._suspended_total = 0.0
        self._last_cpu_ns = 0
        self._final_cpu_ns: int | None = None
        self._result: JobResult | None = None
        self._error: BaseException | None = None

    @property
    def cgroup_path(self) -> PurePosixPath:
        """The job's cgroup, relative to each hierarchy's root (both backends put it here)."""
        return self._config.cgroup_base / self.id

    # -- the node's API --------------------------------------------------------------------------

    @property
    def state(self) -> JobState:
        return self._state

    @property
    def directory(self) -> Path | None:
        """The job's directory on the host (/job inside), while it exists: what the job wrote
        is hostile (see sandbox.jobdir)."""
        return self._dir.path if self._dir is not None else None

    @property
    def result(self) -> JobResult | None:
        """The result once the job is done (also returned by `wait()`)."""
        return self._result

    def cpu_seconds(self) -> float:
        """CPU-seconds used so far by all the job's processes (live; final once done)."""
        if self._final_cpu_ns is not None:
            return self._final_cpu_ns / 1e9
        if self._state is JobState.STARTING:
            return 0.0
        with contextlib.suppress(OSError, ValueError):
            self._last_cpu_ns = max(self._last_cpu_ns, self._read_cpu_ns())
        return self._last_cpu_ns / 1e9

    def output(self) -> AsyncIterator[OutputChunk]:
        """The job's stdout/stderr chunks from the start, following new ones until it ends."""
        return self._output.chunks()

    async def wait(self, timeout: float | None = None) -> JobResult:
        """The job's result, once it has ended and been torn down.

        Bounded even without `timeout`: by the job's wall limit (plus time suspended), the kill
        timeout and the teardown deadlines.
        """
        with trio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            await self._done.wait()
        if self._error is not None:
            raise SandboxFailure(f"job {self.id}: {self._error}") from self._error
        assert self._result is not None
        return self._result

    async def cancel(self) -> None:
        """Kill the job now (running or suspended); its result says `cancelled`."""
        await self._kill_for(KillCause.CANCELLED)

    async def suspend(self) -> None:
        """Freeze every process of the job at once: it uses no CPU until `resume()`.

        Idempotent; a no-op once the job has ended. Suspended time does not count against the
        job's wall-time limit.
        """
        async with self._control:
            if self._state is JobState.STARTING:
                raise JobStateError(f"job {self.id} has not started")
            if self._state is not JobState.RUNNING or self._kill_cause is not None:
                return
            await self._freeze()
            self._suspended_since = trio.current_time()
            self._state = JobState.SUSPENDED
            self._poke()

    async def resume(self) -> None:
        """Let a suspended job run again. Idempotent."""
        async with self._control:
            if self._state is not JobState.SUSPENDED:
                return
            await self._thaw()
            self._end_suspension(trio.current_time())
            self._state = JobState.RUNNING
            self._poke()

    # -- what each backend provides ------------------------------------------------------------

    @abc.abstractmethod
    async def _launch(self) -> None:
        """Prepare and start the job; on failure, leave what was made for `_teardown()`."""

    @abc.abstractmethod
    async def _watch_exit(self) -> None:
        """Wait for the job's end and call `_on_exit(returncode)`."""

    @abc.abstractmethod
    async def _read_output(self, feed: Callable[[Stream, bytes], None]) -> None:
        """Pass the job's output to `feed` as it comes; return when its streams are closed."""

    @abc.abstractmethod
    async def _kill(self) -> None:
        """SIGKILL every process of the job, frozen or not."""

    @abc.abstractmethod
    async def _reap(self) -> None:
        """After `_kill()`, wait (bounded) for the end and call `_on_exit()` if it came."""

    @abc.abstractmethod
    async def _freeze(self) -> None: ...

    @abc.abstractmethod
    async def _thaw(self) -> None: ...

    @abc.abstractmethod
    def _read_cpu_ns(self) -> int: ...

    @abc.abstractmethod
    async def _account(self) -> Accounting:
        """Make sure nothing of the job runs any more, then read its final counters."""

    @abc.abstractmethod
    async def _teardown(self) -> None:
        """Remove everything the job had (processes, container, cgroups, directory, uid)."""

    def _sample(self) -> None:  # noqa: B027 - optional hook
        """Called at least once a second while running: sample what no kernel counter keeps."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def _supervise(self, *, task_status: TaskStatus[None]) -> None:
        try:
            try:
                await self._launch()
            except OSError as exc:
                raise SandboxFailure(f"cannot start job {self.id}: {exc}") from exc
        except BaseException:
            # The launch error is the one to report; a teardown failure on top would hide it.
            with trio.CancelScope(shield=True) as scope, contextlib.suppress(Exception):
                scope.deadline = trio.current_time() + self._config.cleanup_timeout
                await self._teardown()
            self._state = JobState.DONE
            self._done.set()
            raise
        self._started_at = trio.current_time()
        self._state = JobState.RUNNING
        task_status.started()
        try:
            async with trio.open_nursery() as io:
                io.start_soon(self._watch_exit)
                io.start_soon(self._read_output, self._start.feed)
                await self._watch_limits()
                # The job has ended; what it wrote last may still be in the pipes.
                io.cancel_scope.deadline = trio.current_time() + DRAIN_TIMEOUT
        finally:
            self._start.close()
            self._output.close()
            await self._finish()

    async def _watch_limits(self) -> None:
        lim = self.spec.limits
        cpus = max(0.01, min(lim.cpus, float(os.cpu_count() or 1)))
        while not self._exited.is_set():
            now = trio.current_time()
            timeout = 1.0
            if self._kill_cause is not None:
                assert self._killed_at is not None
                if now - self._killed_at > KILL_TIMEOUT:
                    raise SandboxFailure(
                        f"job {self.id} did not die {KILL_TIMEOUT:g}s after SIGKILL"
                    )
            elif self._state is JobState.RUNNING:
                wall_left = lim.wall_seconds - self._running_seconds(now)
                if wall_left <= 0:
                    await self._kill_for(KillCause.WALL_TIME)
                    continue
                timeout = min(timeout, wall_left)
                if lim.cpu_seconds is not None:
                    cpu_left = lim.cpu_seconds - self.cpu_seconds()
                    if cpu_left <= 0:
                        await self._kill_for(KillCause.CPU_LIMIT)
                        continue
                    # The job cannot burn CPU faster than `cpus` cores: sleep until it could
                    # first have reached its limit, so the overshoot stays within milliseconds.
                    timeout = min(timeout, max(0.002, cpu_left / cpus))
                if self._disk_over():
                    # The kernel refused the write past the limit already; ending the job says so
                    # at once rather than at its wall limit.
                    await self._kill_for(KillCause.DISK_LIMIT)
                    continue
                self._sample()
            with trio.move_on_after(timeout):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _kill_for(self, cause: KillCause) -> None:
        async with self._control:
            if self._exited.is_set() or self._kill_cause is not None:
                return
            if self._state is JobState.STARTING:
                raise JobStateError(f"job {self.id} has not started")
            self._kill_cause = cause
            self._killed_at = trio.current_time()
            await self._kill()
            self._poke()

    def _on_exit(self, returncode: int) -> None:
        if self._exited.is_set():
            return
        now = trio.current_time()
        self._returncode = returncode
        self._exited_at = now
        if self._suspended_since is not None:
            self._end_suspension(now)
        self._state = JobState.EXITING
        self._exited.set()
        self._poke()

    async def _finish(self) -> None:
        """Read the counters, collect outputs, tear down: each step bounded, teardown always."""
        result: JobResult | None = None
        error: BaseException | None = None
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self._config.cleanup_timeout
            try:
                if not self._exited.is_set():
                    # We are here because the supervisor was cancelled or failed mid-run.
                    if self._kill_cause is None:
                        self._kill_cause = KillCause.CANCELLED
                    await self._kill()
                    await self._reap()
                acct = await self._account()
                self._final_cpu_ns = acct.cpu_ns
                outputs: tuple[OutputFile, ...] = ()
                missing: tuple[str, ...] = tuple(self.spec.outputs)
                if self._dir is not None and self.spec.outputs:
                    outputs, missing = await trio.to_thread.run_sync(
                        jobdir.collect, self._dir, tuple(self.spec.outputs), self.result_dir
                    )
                result = self._build_result(acct, outputs, missing)
            except trio.Cancelled:
                raise  # our own deadline: the scope catches it
            except Exception as exc:
                error = exc  # recorded; wait() raises it
        if scope.cancelled_caught and error is None and result is None:
            error = SandboxFailure(f"reading job {self.id}'s counters timed out")
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self._config.cleanup_timeout
            try:
                await self._teardown()
            except trio.Cancelled:
                raise
            except Exception as exc:
                error = error or exc
        if scope.cancelled_caught:
            error = error or SandboxFailure(f"tearing down job {self.id} timed out")
        self._result = result if error is None else None
        self._error = error
        self._state = JobState.DONE
        self._done.set()

    def _build_result(
        self, acct: Accounting, outputs: tuple[OutputFile, ...], missing: tuple[str, ...]
    ) -> JobResult:
        exit_code, sig = (None, None)
        if self._returncode is not None:
            exit_code, sig = split_status(self._returncode)
            exit_code = self._start.exit_code(exit_code)
        cpu_seconds = acct.cpu_ns / 1e9
        obs = Observation(
            exit_code=exit_code,
            signal=sig,
            kill_cause=self._kill_cause,
            cpu_seconds=cpu_seconds,
            cpu_limit=self.spec.limits.cpu_seconds,
            oom_kills=acct.oom_kills,
            disk_over=self._disk_over(),
        )
        started = self._started_at or trio.current_time()
        ended = self._exited_at or trio.current_time()
        return JobResult(
            job_id=self.id,
            backend=self.backend.name,
            reason=verdict(obs),
            exit_code=exit_code,
            signal=sig,
            cpu_seconds=cpu_seconds,
            peak_memory=acct.peak_memory,
            wall_seconds=max(0.0, ended - started),
            suspended_seconds=self._suspended_total,
            stdout=self._output.value(Stream.STDOUT),
            stderr=self._output.value(Stream.STDERR),
            stdout_truncated=self._output.truncated(Stream.STDOUT),
            stderr_truncated=self._output.truncated(Stream.STDERR),
            outputs=outputs,
            missing_outputs=missing,
            oom_kills=acct.oom_kills,
            pids_limit_hit=acct.pids_limit_hits > 0,
        )

    # -- helpers ---------------------------------------------------------------------------------

    def _disk_over(self) -> bool:
        if self._dir is None:
            return False
        try:
            return jobdir.exceeded(self._dir)
        except OSError:
            return False  # not mounted any more: teardown has begun

    def _running_seconds(self, now: float) -> float:
        assert self._started_at is not None
        suspended = self._suspended_total
        if self._suspended_since is not None:
            suspended += now - self._suspended_since
        return now - self._started_at - suspended

    def _end_suspension(self, now: float) -> None:
        if self._suspended_since is not None:
            self._suspended_total += now - self._suspended_since
            self._suspended_since = None

    def _poke(self) -> None:
        self._wake.set()


class Backend(abc.ABC):
    """A way of running jobs behind walls. Subclasses: `NativeBackend`, `DockerBackend`."""

    name: ClassVar[str]
    launcher_words: ClassVar[startfail.LauncherWords]  # how it says a command did not start

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._jobs: dict[str, Job] = {}

    def check_spec(self, spec: JobSpec) -> None:
        """Refuse a spec the owner's policy or this backend cannot take (raises)."""
        self.config.policy.check(spec)
        self._check_supported(spec)

    @abc.abstractmethod
    def _check_supported(self, spec: JobSpec) -> None: ...

    @abc.abstractmethod
    def _new_job(self, spec: JobSpec, job_id: str, result_dir: Path | None) -> Job: ...

    def jobs(self) -> list[Job]:
        """The jobs open right now (for the idle policy: `sum(j.cpu_seconds() for j in ...)`)."""
        return list(self._jobs.values())

    @contextlib.asynccontextmanager
    async def open_job(
        self,
        spec: JobSpec,
        *,
        job_id: str | None = None,
        result_dir: Path | None = None,
        staged_inputs: Sequence[tuple[str, Path]] = (),
        _own_probe: bool = False,
    ) -> AsyncIterator[Job]:
        """Start `spec`; yield its running `Job`; on leaving, cancel it if needed and clean up.

        Raises `PolicyRefused`, `BackendUnavailable` or `SandboxFailure` before yielding if the
        job cannot start. `result_dir` receives copies of the output files. (`_own_probe`: the
        backend's start-up test, which the owner's limits on guests' jobs do not apply to.)
        """
        if _own_probe:
            self._check_supported(spec)
        else:
            self.check_spec(spec)
        job_id = check_job_id(job_id or new_job_id())
        if job_id in self._jobs:
            raise JobStateError(f"job {job_id} is already running")
        job = self._new_job(spec, job_id, result_dir)
        job.staged_inputs = _check_staged(spec, staged_inputs)
        self._jobs[job_id] = job
        try:
            with _unwrap_single():
                async with trio.open_nursery() as nursery:
                    await nursery.start(job._supervise)
                    try:
                        yield job
                    finally:
                        with trio.CancelScope(shield=True):
                            with trio.move_on_after(KILL_TIMEOUT + 2 * self.config.cleanup_timeout):
                                await job.cancel()
                                await job._done.wait()
                            nursery.cancel_scope.cancel()
        finally:
            self._jobs.pop(job_id, None)

    async def run(
        self,
        spec: JobSpec,
        *,
        job_id: str | None = None,
        result_dir: Path | None = None,
        staged_inputs: Sequence[tuple[str, Path]] = (),
        _own_probe: bool = False,
    ) -> JobResult:
        """Run `spec` to its end and return its result."""
        async with self.open_job(
            spec,
            job_id=job_id,
            result_dir=result_dir,
            staged_inputs=staged_inputs,
            _own_probe=_own_probe,
        ) as job:
            return await job.wait()


def _check_staged(
    spec: JobSpec, staged: Sequence[tuple[str, Path]]
) -> tuple[tuple[str, Path], ...]:
    """Staged inputs with job paths as safe as the spec's own, none placed twice."""
    seen = {f.path for f in spec.inputs}
    for rel, _ in staged:
        check_relative_path("staged input", rel)
        if rel in seen:
            raise SpecError("staged input", f"{rel!r} is given twice")
        seen.add(rel)
    return tuple(staged)


@contextlib.contextmanager
def _unwrap_single() -> Iterator[None]:
    """Re-raise a nursery's group of one exception as that exception.

    Callers of `open_job` expect `SandboxFailure` (or their own exception from the body of the
    `async with`), not an ExceptionGroup wrapping it.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
