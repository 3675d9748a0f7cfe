"""node.jobs.requester.store: the requester's record of workers it no longer trusts."""

from __future__ import annotations

from pathlib import Path

from node.jobs.requester.store import UNTRUSTED_FOR, JobStore


def test_untrusted_workers_are_kept_across_reopening_and_for_a_while_only(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.distrust("worker-a", "job-1", now=1000.0)
    store.distrust("worker-b", "job-2", now=2000.0)
    store.close()
    store = JobStore(tmp_path / "jobs.sqlite3")  # as after a restart
    assert store.untrusted(now=2000.0) == {"worker-a", "worker-b"}
    assert store.untrusted(now=1500.0 + UNTRUSTED_FOR) == {"worker-b"}
    store.distrust("worker-a", "job-3", now=3000.0)  # outvoted again: the mark starts over
    assert store.untrusted(now=2500.0 + UNTRUSTED_FOR) == {"worker-a"}
    store.close()
