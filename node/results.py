"""What a job's result *is*, byte for byte: the manifest both sides hash, and its checks. Pure.

The worker signs (in its ledger proposal) the sha256 of a canonical manifest: the exit status and
verdict, and for each released file (the job's stdout and stderr, then its output files) the path,
size and sha256. The requester countersigns that hash before it receives anything; once the files
arrive it rebuilds the manifest from what it got, and a mismatch is proof the worker cheated.
Replicas of a job agree when their manifests' hashes are equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from rainnet.jobproto import FileEntry

STDOUT = "/stdout"  # absolute: no output path of the job (always relative) can collide with it
STDERR = "/stderr"


class ResultMismatch(Exception):
    """Released files that are not what the worker signed for (the worker's fault)."""


@dataclass(frozen=True)
class Verdict:
    exit_code: int | None
    reason: str


def entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, size=len(data), sha256=hashlib.sha256(data).digest())


def manifest_bytes(verdict: Verdict, files: Sequence[FileEntry]) -> bytes:
    body = [
        1,  # manifest format
        verdict.exit_code,
        verdict.reason,
        [[f.path, f.size, f.sha256, f.executable] for f in files],
    ]
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def result_hash(verdict: Verdict, files: Sequence[FileEntry]) -> bytes:
    return hashlib.sha256(manifest_bytes(verdict, files)).digest()


def check_files(expected: Sequence[FileEntry], received: Sequence[FileEntry]) -> None:
    """ResultMismatch unless the received files are exactly the announced ones."""
    if len(expected) != len(received):
        raise ResultMismatch(f"{len(received)} files released, {len(expected)} announced")
    for want, got in zip(expected, received, strict=True):
        if (want.path, want.size, want.sha256) != (got.path, got.size, got.sha256):
            raise ResultMismatch(f"{want.path}: released bytes differ from the signed result")
