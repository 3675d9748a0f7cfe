"""A scripted sandbox backend: jobs that do what their argv says, in trio time, with no process.

For in-memory tests of the job protocol (a fake is fine for what is not under test: here the
sandbox, which has its own process tests). Each argv word is one step:

    out:TEXT    write TEXT to stdout          err:TEXT    write TEXT to stderr
    cpu:S       use S CPU-seconds (taking S)  sleep:S     wait S seconds
    exit:N      end with exit code N (else 0 after the last step)
    random:N    write N random hex digits to stdout (a job that is not deterministic)

e.g. `JobSpec.create(["out:hi", "cpu:0.5", "exit:3"])`. Jobs obey cancel, suspend and resume
and the wall-time limit through the shared lifecycle (sandbox.job.Job), as real ones do.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import trio

from sandbox import startfail
from sandbox.config import SandboxConfig
from sandbox.errors import SpecError
from sandbox.job import Accounting, Backend, Job
from sandbox.output import Stream
from sandbox.spec import JobSpec

STEPS = ("out", "err", "cpu", "sleep", "exit", "random")


def check_script(argv: tuple[str, ...]) -> None:
    for word in argv:
        name, sep, arg = word.partition(":")
        if not sep or name not in STEPS:
            raise SpecError("argv", f"{word!r} is not a scripted step ({', '.join(STEPS)})")
        if name in ("cpu", "sleep"):
            float(arg)
        elif name in ("exit", "random"):
            int(arg)


class ScriptedBackend(Backend):
    name = "native"  # it stands in for the native backend
    # Its jobs always start (a step it does not know is refused with the spec): no launcher
    # ever says a command was not found.
    launcher_words = startfail.LauncherWords(
        start=b"\0", before=rb"\0(?!)", after=rb"", exit_codes=frozenset()
    )

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config)
        self.started: list[str] = []  # job ids, in the order they started
        # CPU-seconds each job's account claims beyond what it used: a dishonest worker's.
        self.overbill_seconds = 0.0

    def _check_supported(self, spec: JobSpec) -> None:
        if spec.image is not None:
            raise SpecError("image", "the scripted backend runs no images")
        check_script(spec.argv)

    def _new_job(self, spec: JobSpec, job_id: str, result_dir: Path | None) -> Job:
        return ScriptedJob(self, spec, job_id, result_dir)


class ScriptedJob(Job):
    def __init__(
        self, backend: ScriptedBackend, spec: JobSpec, job_id: str, result_dir: Path | None
    ) -> None:
        super().__init__(backend, spec, job_id, result_dir)
        self._scripted = backend
        self._cpu_ns = 0
        self._code: int | None = None
        self._ended = trio.Event()
        self._running = trio.Event()  # cleared while frozen
        self._running.set()
        self._frozen = trio.Event()  # set when frozen (then replaced on thaw)
        self._busy_since: float | None = None  # using CPU since then (trio time)
        self._killed = trio.CancelScope()

    async def _launch(self) -> None:
        self._scripted.started.append(self.id)

    async def _read_output(self, feed: Callable[[Stream, bytes], None]) -> None:
        code = 0
        with self._killed:
            for word in self.spec.argv:
                await self._running.wait()
                name, _, arg = word.partition(":")
                if name in ("out", "err"):
                    feed(Stream.STDOUT if name == "out" else Stream.STDERR, arg.encode())
                elif name in ("cpu", "sleep"):
                    await self._spend(float(arg), cpu=name == "cpu")
                elif name == "random":
                    feed(Stream.STDOUT, secrets.token_hex(int(arg) // 2 + 1)[: int(arg)].encode())
                elif name == "exit":
                    code = int(arg)
                    break
        self._code = -9 if self._killed.cancelled_caught else code
        self._ended.set()

    async def _spend(self, seconds: float, cpu: bool) -> None:
        """Take `seconds` of running time, not counting time frozen (in one sleep each while it
        runs: a mock clock then jumps once, not once per tick)."""
        left = seconds
        # (Not `left > 0`: a float residue too small to move a deadline past `now` would loop
        # for ever on a mock clock.)
        while left > 1e-6:
            await self._running.wait()
            start = trio.current_time()
            self._busy_since = start if cpu else None
            try:
                with trio.move_on_after(left):
                    await self._frozen.wait()
            finally:
                spent = trio.current_time() - start
                left -= spent
                if cpu:
                    self._cpu_ns += round(spent * 1e9)
                self._busy_since = None

    async def _watch_exit(self) -> None:
        await self._ended.wait()
        assert self._code is not None
        self._on_exit(self._code)

    async def _kill(self) -> None:
        self._killed.cancel()

    async def _reap(self) -> None:
        with trio.move_on_after(1):
            await self._ended.wait()
            assert self._code is not None
            self._on_exit(self._code)

    async def _freeze(self) -> None:
        self._running = trio.Event()
        self._frozen.set()

    async def _thaw(self) -> None:
        self._frozen = trio.Event()
        self._running.set()

    def _read_cpu_ns(self) -> int:
        busy = 0.0 if self._busy_since is None else trio.current_time() - self._busy_since
        return self._cpu_ns + round(busy * 1e9)

    async def _account(self) -> Accounting:
        cpu_ns = self._cpu_ns + round(self._scripted.overbill_seconds * 1e9)
        return Accounting(cpu_ns=cpu_ns, peak_memory=1 << 20, oom_kills=0, pids_limit_hits=0)

    async def _teardown(self) -> None:
        return None
