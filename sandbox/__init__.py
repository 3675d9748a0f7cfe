"""Job isolation and accounting: run a stranger's job so it cannot touch the host, and meter it.

The node's entry points:

    backend = await open_backend(SandboxConfig.for_home(home, policy=...), "auto")
    async with backend.open_job(JobSpec.from_wire(msg), result_dir=...) as job:
        ...                      # job.output(), job.cpu_seconds(), job.suspend(), job.resume()
        result = await job.wait()  # JobResult: reason, cpu_seconds (credit), peak_memory, ...

`guest_cpu_seconds(config)` is the total CPU time of every job ever run (for the idle policy), and
`sweep(config)` removes what a crashed node left. Modules: `spec` (the job), `policy` (what the
owner allows), `result` (verdicts), `job` (lifecycle), `native` and `docker_backend` (the walls),
`cgroups`, `seccomp_filter`, `jobdir`, `hostfs`, `output`, `startfail`, `select`, `selftest`,
`cleanup`.
"""

from __future__ import annotations

from sandbox.cleanup import sweep
from sandbox.config import SandboxConfig
from sandbox.errors import (
    BackendUnavailable,
    ImageUnavailable,
    JobStateError,
    PolicyRefused,
    SandboxError,
    SandboxFailure,
    SpecError,
)
from sandbox.job import Backend, Job, JobState
from sandbox.output import OutputChunk, Stream
from sandbox.policy import OWNER_POLICY, WorkerPolicy
from sandbox.result import JobResult, OutputFile, Reason
from sandbox.select import open_backend, probe
from sandbox.spec import InputFile, JobSpec, Limits, Network


def guest_cpu_seconds(config: SandboxConfig) -> float:
    """CPU-seconds used by all jobs (running and finished) since boot, from the cgroup parent.

    Monotonic: subtract two readings to get the guests' share of the host's busy time.
    """
    from sandbox import cgroups

    return cgroups.total_cpu_ns(cgroups.detect_layout(), config.cgroup_base) / 1e9


__all__ = [
    "OWNER_POLICY",
    "Backend",
    "BackendUnavailable",
    "ImageUnavailable",
    "InputFile",
    "Job",
    "JobResult",
    "JobSpec",
    "JobState",
    "JobStateError",
    "Limits",
    "Network",
    "OutputChunk",
    "OutputFile",
    "PolicyRefused",
    "Reason",
    "SandboxConfig",
    "SandboxError",
    "SandboxFailure",
    "SpecError",
    "Stream",
    "WorkerPolicy",
    "guest_cpu_seconds",
    "open_backend",
    "probe",
    "sweep",
]
