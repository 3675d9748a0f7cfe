"""The sandbox's error types, named for whose fault a failure is.

The node turns these into different answers: a `SpecError` goes back to the submitter (fix your
job), a `PolicyRefused` says this worker will not take such a job (try another worker), and a
`BackendUnavailable` or `SandboxFailure` is the local machine's problem (the job may run elsewhere,
and the owner should look at `rain sandbox check`).
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base of every error the sandbox raises on purpose."""


class SpecError(SandboxError, ValueError):
    """The submitter's job spec is invalid; `field` names the field at fault (`limits.memory`)."""

    def __init__(self, field: str, problem: str, bounds: tuple[float, float] | None = None) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.bounds = bounds  # a number out of range: the range (the CLI says it in its units)


class PolicyRefused(SandboxError):
    """The spec is valid, but this worker's owner does not allow what it asks (network, size...)."""


class BackendUnavailable(SandboxError):
    """This machine cannot run this backend (or this kind of job): not the submitter's fault."""


class ImageUnavailable(BackendUnavailable):
    """The job's image is not present locally and the worker's policy forbids pulling it."""


class SandboxFailure(SandboxError):
    """Setting up or tearing down a sandbox failed at run time: the local machine's fault."""


class JobStateError(SandboxError):
    """The caller asked a job for something its state does not allow (e.g. resume a running job)."""
