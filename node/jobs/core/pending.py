"""Why a job waits, and how it ended, sans-io: the words `rain jobs` and `rain submit --wait` show.

Slurm users read squeue's REASON column and sacct's exit codes; this module is that column. A job
not yet running is explained from what the requester knows at that moment: the signed records of
the workers it knows (who could ever run it, who is in owner state), the workers it distrusts,
and the last typed decline of each worker it asked (`Refusal`). A job no known worker could ever
run is `hopeless`: the requester fails it within seconds instead of waiting for a worker that
cannot come; anything else may change, so the job waits, saying why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from node.jobs.core.scheduler import ACCEPTING_STATES, Needs
from node.units import format_duration, format_size
from rainnet.jobproto import DeclineKind
from rainnet.records import NodeRecord
from sandbox.result import Reason
from sandbox.spec import Limits


@dataclass(frozen=True)
class Refusal:
    """A worker's reason to decline an offer: what it is about, and the words for the user."""

    kind: DeclineKind
    text: str

    def said(self) -> str:
        """The words for the job's owner (a credit refusal says it is about credit)."""
        if self.kind is DeclineKind.CREDIT and not self.text.startswith("credit"):
            return f"credit: {self.text}"
        return self.text


@dataclass(frozen=True)
class Pending:
    text: str
    hopeless: bool = False  # no known worker could ever run it


NO_WORKERS = "no workers known yet (is this node connected? see `rain peers`)"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _never_fits(records: Sequence[NodeRecord], needs: Needs) -> str | None:
    """What no worker in `records` has, however idle: None if one could run the job."""
    if any(fits(r, needs) for r in records):
        return None
    lacking = []
    if not any(set(r.backends) & set(needs.backends) for r in records):
        lacking.append("the docker sandbox (for --image)" if needs.image else "a working sandbox")
    if not any(r.cpus >= needs.cpus for r in records):
        lacking.append(f"{needs.cpus:g} CPUs (largest: {max(r.cpus for r in records):g})")
    if not any(r.memory >= needs.memory for r in records):
        most = format_size(max(r.memory for r in records))
        lacking.append(f"{format_size(needs.memory)} of memory (largest: {most})")
    if not any(r.gpus >= needs.gpus for r in records):
        lacking.append(f"{needs.gpus} GPUs (most: {max(r.gpus for r in records)})")
    if not lacking:  # each need is met somewhere, never all on one worker
        return "all it asks on one machine (CPUs, memory, GPUs and sandbox together)"
    return " or ".join(lacking)


def fits(record: NodeRecord, needs: Needs) -> bool:
    """Whether the worker of `record` could ever run a job of `needs` (whatever its state)."""
    return (
        bool(set(record.backends) & set(needs.backends))
        and record.cpus >= needs.cpus
        and record.memory >= needs.memory
        and record.gpus >= needs.gpus
    )


def explain(
    records: Sequence[NodeRecord],
    needs: Needs,
    declined: Mapping[str, Refusal],
    distrusted: Collection[str],
) -> Pending:
    """Why a job with `needs` is not running, given the workers known (`records`), the last
    decline of each worker that declined it (`declined`, by peer id) and those we distrust."""
    if not records:
        return Pending(NO_WORKERS)
    never = _never_fits(records, needs)
    if never is not None:
        return Pending(f"no worker has {never}", hopeless=True)
    capable = [r for r in records if fits(r, needs)]
    trusted = [r for r in capable if r.peer_id not in distrusted]
    if not trusted:
        return Pending(
            f"the {_plural(len(capable), 'capable worker')} {'is' if len(capable) == 1 else 'are'}"
            " distrusted (see `rain workers`)"
        )
    owner = [r for r in trusted if r.state not in ACCEPTING_STATES]
    if len(owner) == len(trusted):
        verb = "is" if len(owner) == 1 else "are"
        return Pending(f"{_plural(len(owner), 'worker')} {verb} in owner state")
    open_ = [r for r in trusted if r.state in ACCEPTING_STATES]
    refusals = [declined[r.peer_id] for r in open_ if r.peer_id in declined]
    if refusals:
        kind, n = Counter(r.kind for r in refusals).most_common(1)[0]
        text = next(r.said() for r in reversed(refusals) if r.kind is kind)
        return Pending(f"{_plural(n, 'worker')} declined: {text}")
    extra = f" ({len(owner)} more in owner state)" if owner else ""
    return Pending(f"all {_plural(len(open_), 'capable worker')} busy{extra}")


def ending(
    state: str,
    exit_code: int | None,
    reason: str | None,
    error: str | None,
    limits: Limits,
    peak_memory: int | None = None,
) -> str:
    """How an ended job ended, in a few words: `done`, `failed (exit 3)`, `out of memory
    (limit 100M, peak 99.8M)`, `time limit (3s)`, `cancelled`, or the requester's error."""
    if state == "cancelled":
        return "cancelled"
    if state != "done":
        return f"{state}: {error}" if error else state
    peak = f", peak {format_size(peak_memory)}" if peak_memory else ""
    words = {
        Reason.OUT_OF_MEMORY: f"out of memory (limit {format_size(limits.memory)}{peak})",
        Reason.WALL_TIME: f"time limit ({format_duration(limits.wall_seconds)})",
        Reason.CPU_LIMIT: "CPU limit",
        Reason.DISK_LIMIT: f"disk limit ({format_size(limits.disk)} in /job and /tmp)",
        Reason.KILLED: "killed by a signal",
        Reason.CANCELLED: "cancelled",
    }
    try:
        known = words.get(Reason(reason)) if reason else None
    except ValueError:
        known = None
    if known is not None:
        return known
    if exit_code:
        return f"failed (exit {exit_code})"
    return "done"
