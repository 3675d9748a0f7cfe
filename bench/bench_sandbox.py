"""Start-to-exit of a trivial job per sandbox backend, against the same command run bare.

    sudo .venv/bin/python bench/bench_sandbox.py [-n 20]

native: `Backend.run(true)` (job directory, cgroups, launcher, bwrap, seccomp, accounting,
teardown) against `true` spawned bare from the same Python and trio. Goal: within 20 ms.
docker: the Docker backend running `true` in a local busybox image against `docker run --rm` of
that image with the CLI, on a private engine started for the benchmark. Goal: within 10%.
Figures are medians of N runs after 2 warm-up runs. Needs root (job uids, cgroups, dockerd).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from sandbox.config import SandboxConfig
from sandbox.result import Reason
from sandbox.spec import JobSpec
from tests.e2e.dockerd import BUSYBOX_IMAGE, Dockerd, missing_tools


async def median_async(fn: Callable[[], Awaitable[object]], n: int) -> float:
    for _ in range(2):
        await fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_sync(fn: Callable[[], object], n: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def line(name: str, sandboxed: float, baseline: float, against: str) -> str:
    return (
        f"{name:<7} sandbox {sandboxed * 1000:8.1f} ms   {against} {baseline * 1000:8.1f} ms   "
        f"ratio {sandboxed / baseline:6.2f}   difference {(sandboxed - baseline) * 1000:+7.1f} ms"
    )


async def bench_native(root: Path, n: int) -> str:
    from sandbox.native import NativeBackend

    backend = await NativeBackend.open(SandboxConfig(workdir=root / "native"))
    spec = JobSpec.create(["true"])

    async def sandboxed() -> None:
        result = await backend.run(spec)
        assert result.reason is Reason.OK, result

    async def bare() -> None:
        await trio.run_process(["true"])

    sandbox_s = await median_async(sandboxed, n)
    bare_s = await median_async(bare, n)
    verdict = "met" if sandbox_s - bare_s <= 0.020 else "NOT met"
    return line("native", sandbox_s, bare_s, "bare      ") + f"   (goal +20 ms: {verdict})"


async def bench_docker_backend(engine: Dockerd, root: Path, n: int) -> float:
    from sandbox.docker_backend import DockerBackend

    backend = await DockerBackend.open(
        SandboxConfig(workdir=root / "docker", docker_url=engine.url)
    )
    spec = JobSpec.create(["true"], image=BUSYBOX_IMAGE)

    async def sandboxed() -> None:
        result = await backend.run(spec)
        assert result.reason is Reason.OK, result

    return await median_async(sandboxed, n)


def docker_cli() -> str:
    # The engine's own client (Debian docker.io) where present.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="runs per figure (default 20)")
    parser.add_argument("--skip-docker", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_sandbox: needs root (job uids, cgroups, a private dockerd)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="rainnet-bench-", dir="/tmp"))
    root.chmod(0o711)
    try:
        print(f"median of {args.n} runs, start to exit of `true`")
        print(trio.run(bench_native, root, args.n))
        if args.skip_docker:
            return 0
        if missing := missing_tools():
            print(f"docker: skipped, missing {', '.join(missing)}")
            return 0
        engine = Dockerd()
        engine.start()
        try:
            engine.import_busybox()
            sandbox_s = trio.run(bench_docker_backend, engine, root, args.n)
            plain = [docker_cli(), "-H", engine.url, "run", "--rm", "--pull", "never"]
            walled = [
                *plain,
                "--network", "none", "--read-only", "--init", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges", "--pids-limit", "257",
                "--memory", "516m", "--memory-swap", "516m", "--user", "65534:65534",
            ]  # fmt: skip
            cli_s = median_sync(
                lambda: subprocess.run([*plain, BUSYBOX_IMAGE, "true"], check=True), args.n
            )
            walled_s = median_sync(
                lambda: subprocess.run([*walled, BUSYBOX_IMAGE, "true"], check=True), args.n
            )
        finally:
            engine.stop()
        verdict = "met" if sandbox_s <= 1.10 * cli_s else "NOT met"
        print(line("docker", sandbox_s, cli_s, "docker run") + f"   (goal <= 1.10: {verdict})")
        print(line("docker", sandbox_s, walled_s, "docker run*"))
        print("  * docker run with the same walls: no network, read-only, init, no caps, ...")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
