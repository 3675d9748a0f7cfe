"""Helpers for the sandbox tests (the fixtures are in `tests.e2e.sandbox_fixtures`).

Tests skip only where the machine truly cannot run them (not root: no job uids, no cgroups).
A missing tool (bubblewrap, dockerd, busybox-static) skips on a developer's machine with the
package to install, but fails under CI (`CI` set), where scripts/bootstrap --test installs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from sandbox import cgroups
from sandbox.config import SandboxConfig, uid_base_for
from sandbox.job import Backend, Job
from sandbox.policy import WorkerPolicy
from sandbox.selftest import processes_of_uid
from tests.e2e.dockerd import BUSYBOX_IMAGE

T = TypeVar("T")
PYTHON = "/usr/bin/python3"
BURN = "import time\nwhile time.process_time() < {0}: pass\n"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: jobs run as their own uids, in cgroups the sandbox creates")


def require(missing: list[str]) -> None:
    if not missing:
        return
    message = f"missing {', '.join(missing)}: run scripts/bootstrap --test"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(fn: Callable[..., Any], *args: Any) -> Any:
    return trio.run(fn, *args)


def make_config(root: Path, **kw: Any) -> SandboxConfig:
    policy = kw.pop("policy", WorkerPolicy())
    # A uid range of its own, as every node home has: uids of another backend's jobs (or their
    # zombies, on a machine whose PID 1 does not reap) must not look like this one's leftovers.
    kw.setdefault("uid_base", uid_base_for(root))
    return SandboxConfig(workdir=root / "jobs", policy=policy, **kw)


def image_for(backend: Backend) -> str | None:
    """The busybox image for Docker (made with `docker import`), the host's /usr for native."""
    return BUSYBOX_IMAGE if backend.name == "docker" else None


def leftovers(backend: Backend, job: Job) -> list[str]:
    """Everything of a finished job that still exists anywhere on the machine."""
    left = [
        str(d)
        for d in cgroups.detect_layout().all_dirs(backend.config.cgroup_base / job.id)
        if d.exists()
    ]
    job_dir = backend.config.workdir / job.id
    if job_dir.exists():
        left.append(str(job_dir))
    mountinfo = Path("/proc/self/mountinfo").read_text()
    left += [line for line in mountinfo.splitlines() if str(job_dir) in line]
    if job.uid is not None and job.uid != os.getuid():
        left += [f"process {p}" for p in processes_of_uid(job.uid)]
    if backend.name == "docker":
        api = backend.api  # type: ignore[attr-defined]
        label = {"label": f"rainnet.job={job.id}"}
        left += [f"container {c['Id'][:12]}" for c in api.containers(all=True, filters=label)]
    return left
