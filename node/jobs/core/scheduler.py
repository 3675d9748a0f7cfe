"""Scheduling decisions, sans-io: which workers a requester offers a job to, and whether a worker
takes an offer.

Requester side: from the signed node records it knows (membership view, DHT lookups), keep the
workers that can run the job at all (state, CPUs, memory, GPUs, sandbox backend), prefer those
with room beside the jobs we already gave them, idle ones, then short round trips, and offer to
a few of them in turn; never broadcast.

Worker side: accept only while the idle policy lets guests in, within the CPUs and memory left,
and never for a requester past its credit floor (the ledger decides that; this module takes its
verdict). Waiting offers are ordered by the requester's verified balance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from node.units import format_size
from rainnet.records import NodeRecord

# States in which a worker takes new guests.
ACCEPTING_STATES = ("idle", "busy")


@dataclass(frozen=True)
class Needs:
    """What a job needs of a worker."""

    cpus: float
    memory: int
    gpus: int = 0
    image: str | None = None  # a Docker image: the worker needs the docker backend

    @property
    def backends(self) -> tuple[str, ...]:
        return ("docker",) if self.image else ("native", "docker")


@dataclass(frozen=True)
class Candidate:
    record: NodeRecord
    rtt: float | None = None


def can_run(record: NodeRecord, needs: Needs) -> str | None:
    """None if `record`'s worker could run the job; else why not (for the user's message)."""
    if record.state not in ACCEPTING_STATES:
        return f"{record.state}"
    if not set(record.backends) & set(needs.backends):
        return "no suitable sandbox" if record.backends else "no sandbox"
    if record.cpus < needs.cpus:
        return f"{record.cpus} CPUs < {needs.cpus:g}"
    if record.memory < needs.memory:
        return "not enough memory"
    if record.gpus < needs.gpus:
        return f"{record.gpus} GPUs < {needs.gpus}"
    return None


def rank_workers(
    candidates: Iterable[Candidate],
    needs: Needs,
    exclude: Iterable[str] = (),
    limit: int = 3,
    committed: Mapping[str, float] | None = None,
) -> list[NodeRecord]:
    """The workers to offer the job to, best first: those with room for it beside the CPUs this
    requester has already committed to them (`committed`: offered or running there), idle
    before busy, then the least loaded by us, then the nearest.

    A signed record is refreshed only every few seconds, so on its own it would send a burst of
    jobs all to the nearest worker while the others stood idle; our own commitments are the
    part of a worker's load we know at once."""
    excluded = set(exclude)
    ours = committed or {}
    fit = [
        c
        for c in candidates
        if c.record.peer_id not in excluded and can_run(c.record, needs) is None
    ]

    def preference(c: Candidate) -> tuple[bool, bool, float, float, str]:
        used = ours.get(c.record.peer_id, 0.0)
        room = used + needs.cpus <= c.record.cpus + 1e-9
        return (
            not room,
            c.record.state != "idle",
            used / max(c.record.cpus, 1),
            c.rtt if c.rtt is not None else math.inf,
            c.record.peer_id,
        )

    fit.sort(key=preference)
    return [c.record for c in fit[:limit]]


@dataclass(frozen=True)
class Capacity:
    """What a worker lends: its guest share of CPUs and memory."""

    cpus: float
    memory: int


@dataclass(frozen=True)
class Running:
    cpus: float
    memory: int


def admit(
    lending: bool,
    capacity: Capacity,
    running: Iterable[Running],
    needs: Needs,
    backends: Sequence[str],
) -> str | None:
    """None if a worker may start this job now; else the reason it declines."""
    if not lending:
        return "the owner is using this machine"
    if not set(backends) & set(needs.backends):
        return "no suitable sandbox on this worker"
    used_cpus = sum(r.cpus for r in running)
    used_mem = sum(r.memory for r in running)
    if used_cpus + needs.cpus > capacity.cpus + 1e-9:
        return f"only {max(0.0, capacity.cpus - used_cpus):g} of {capacity.cpus:g} CPUs free"
    if used_mem + needs.memory > capacity.memory:
        free = format_size(max(0, capacity.memory - used_mem))
        return f"not enough free memory for {format_size(needs.memory)} ({free} free)"
    return None
