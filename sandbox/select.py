"""Choosing a backend: by name, or `auto` (Docker where an engine answers, else native).

A backend is only handed out after it has proven itself on this machine (each backend's `open()`
runs a job through its whole chain). When none can isolate, `open_backend("auto")` raises
`BackendUnavailable` saying why for each: the node must then refuse others' jobs (it can still
submit its own to the network).
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.config import SandboxConfig
from sandbox.errors import BackendUnavailable
from sandbox.job import Backend
from sandbox.spec import JobSpec

BACKENDS = ("docker", "native")
AUTO_ORDER = ("docker", "native")


@dataclass(frozen=True)
class Availability:
    name: str
    available: bool
    reason: str  # why not, when not available


async def open_named(config: SandboxConfig, name: str) -> Backend:
    if name == "docker":
        from sandbox.docker_backend import DockerBackend

        return await DockerBackend.open(config)
    if name == "native":
        from sandbox.native import NativeBackend

        return await NativeBackend.open(config)
    raise BackendUnavailable(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})")


async def probe(
    config: SandboxConfig, names: tuple[str, ...] = BACKENDS
) -> tuple[dict[str, Backend], list[Availability]]:
    """Open every named backend that works here; say why for the others."""
    opened: dict[str, Backend] = {}
    report = []
    for name in names:
        try:
            opened[name] = await open_named(config, name)
            report.append(Availability(name, True, ""))
        except BackendUnavailable as exc:
            report.append(Availability(name, False, str(exc)))
    return opened, report


def no_isolation_message(report: list[Availability]) -> str:
    reasons = "; ".join(f"{a.name}: {a.reason}" for a in report if not a.available)
    return (
        f"no sandbox backend can isolate jobs on this machine ({reasons}). This node will refuse "
        "other people's jobs; it can still submit its own."
    )


async def open_backend(
    config: SandboxConfig, name: str = "auto", *, for_spec: JobSpec | None = None
) -> Backend:
    """The named backend, or for `auto` the first of docker, native that works here (and, given
    `for_spec`, can run that job: an image needs docker, for instance)."""
    if name != "auto":
        return await open_named(config, name)
    report = []
    opened_any = False
    for candidate in AUTO_ORDER:
        try:
            backend = await open_named(config, candidate)
        except BackendUnavailable as exc:
            report.append(Availability(candidate, False, str(exc)))
            continue
        opened_any = True
        try:
            if for_spec is not None:
                backend.check_spec(for_spec)
            return backend
        except BackendUnavailable as exc:
            report.append(Availability(candidate, False, str(exc)))
    if opened_any:
        reasons = "; ".join(f"{a.name}: {a.reason}" for a in report)
        raise BackendUnavailable(f"no backend here can run this job ({reasons})")
    raise BackendUnavailable(no_isolation_message(report))
