"""Result verification by replication, sans-io: which replicas of a job agree, who is paid.

A job with `--replicas K` runs on K distinct workers; each returns the hash of its result manifest
(node.jobs.core.results) before anyone is paid. Once K results are in, a result holding a strict
majority of them wins (both of 2, 2 of 3...); without one, one more run decides, and so on. The
workers whose results lost to a majority are paid nothing and remembered as untrustworthy. Runs are
bounded: with no majority after `max_runs`, the job fails ("results differ": a job that is not
deterministic looks just so), and as nobody is proven wrong, every run is paid and nobody marked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Tally:
    decided: bool
    failed: bool
    winning_hash: bytes | None
    winners: frozenset[str]  # paid (with `failed`: every run, as nobody was proven wrong)
    losers: frozenset[str]  # outvoted by a majority: paid nothing
    more_runs: int  # results still to collect before the next decision

    def differ_message(self, results: Mapping[str, bytes]) -> str:
        """Why a failed vote failed, for the job's owner."""
        distinct = len(set(results.values()))
        return (
            f"results differ (not deterministic?): {len(results)} runs gave {distinct} "
            "different results; each worker was paid, none is distrusted"
        )


def tally(results: Mapping[str, bytes], replicas: int, max_runs: int) -> Tally:
    """Decide on `results` (worker -> result hash) of a job run `replicas` times."""
    n = len(results)
    if n < replicas:
        return Tally(False, False, None, frozenset(), frozenset(), replicas - n)
    best, votes = Counter(results.values()).most_common(1)[0]
    if votes * 2 > n:  # a strict majority: all of 2, 2 of 3, 3 of 4 or 5...
        winners = frozenset(w for w, h in results.items() if h == best)
        return Tally(True, False, best, winners, frozenset(results) - winners, 0)
    if n >= max_runs:  # no proof against anyone: all are paid, none fetched
        return Tally(False, True, None, frozenset(results), frozenset(), 0)
    return Tally(False, False, None, frozenset(), frozenset(), 1)
