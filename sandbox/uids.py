"""Which uid each running job gets: a distinct unprivileged one per concurrent job.

Process-wide (both backends share it): with a uid of its own, a job cannot signal or trace another
job's processes nor read the files another left, and RLIMIT_NPROC (counted per uid) is its alone.
When the node does not run as root it cannot switch uids; every job then runs as the node's own
uid, inside a user namespace, and the pool hands out that uid.
"""

from __future__ import annotations

import os
import threading

from sandbox.errors import BackendUnavailable


class UidPool:
    def __init__(self, base: int, count: int) -> None:
        self._base = base
        self._count = count
        self._used: set[int] = set()
        self._lock = threading.Lock()  # the Docker backend releases from worker threads

    def acquire(self) -> int:
        if os.geteuid() != 0:
            return os.getuid()
        with self._lock:
            for uid in range(self._base, self._base + self._count):
                if uid not in self._used:
                    self._used.add(uid)
                    return uid
        raise BackendUnavailable(f"all {self._count} job uids are in use")

    def release(self, uid: int) -> None:
        with self._lock:
            self._used.discard(uid)


_pools: dict[tuple[int, int], UidPool] = {}
_pools_lock = threading.Lock()


def pool(base: int, count: int) -> UidPool:
    with _pools_lock:
        return _pools.setdefault((base, count), UidPool(base, count))
