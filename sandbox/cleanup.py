"""Sweeping what jobs of a previous run of the node left behind (after a crash or power loss).

A job's processes die with the node (each launch chain carries a parent-death signal), but its
cgroup, its job directory (and the file system mounted on it) and, for Docker, its container
outlive a node that was killed before it could tear them down. The node calls `sweep()` at start,
before it runs any job: everything under the sandbox's cgroup parent, its work directory and every
container with the sandbox's label is then a leftover, and is killed and removed; so is every
nftables table of this node's MPI ranks' network walls (sandbox.netwall), which would otherwise
hold rules for cgroups that are gone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

from sandbox import cgroups, jobdir, netwall
from sandbox.config import SandboxConfig


@dataclass
class SweepReport:
    cgroups: list[str] = field(default_factory=list)
    job_dirs: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    walls: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def sweep(config: SandboxConfig, *, docker_api: Any | None = None) -> SweepReport:
    """Remove every job leftover. Blocking: call it from a worker thread, with no job running."""
    report = SweepReport()
    if docker_api is not None:
        _sweep_containers(docker_api, report)
    try:
        layout = cgroups.detect_layout()
    except OSError as exc:
        report.errors.append(f"cgroup layout: {exc}")
    else:
        for name in sorted(cgroups.children(layout, config.cgroup_base)):
            try:
                cgroups.remove_tree(layout, config.cgroup_base / name)
                report.cgroups.append(name)
            except Exception as exc:
                report.errors.append(f"cgroup {name}: {exc}")
    try:
        report.walls = netwall.sweep(config.cgroup_name)
    except Exception as exc:
        report.errors.append(f"network walls: {exc}")
    if config.workdir.is_dir():
        for entry in sorted(config.workdir.iterdir()):
            try:
                jobdir.unmount(entry)
            except Exception as exc:
                report.errors.append(f"job directory {entry}: {exc}")
                continue
            shutil.rmtree(entry, ignore_errors=True)
            if entry.exists():
                report.errors.append(f"job directory {entry} could not be removed")
            else:
                report.job_dirs.append(entry.name)
    return report


def _sweep_containers(api: Any, report: SweepReport) -> None:
    from sandbox.docker_backend import LABEL

    try:
        found = api.containers(all=True, filters={"label": f"{LABEL}=1"})
    except Exception as exc:
        report.errors.append(f"listing containers: {exc}")
        return
    for c in found:
        try:
            api.remove_container(c["Id"], force=True, v=True)
            report.containers.append(c["Id"][:12])
        except Exception as exc:
            report.errors.append(f"container {c['Id'][:12]}: {exc}")
