"""What this machine offers: CPUs, memory, GPUs and the sandbox backends that work here."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Capabilities:
    cpus: int
    memory: int
    gpus: int
    backends: tuple[str, ...]


def count_gpus() -> int:
    """NVIDIA device nodes (`/dev/nvidia0`, ...); `RAIN_FAKE_GPUS` stands in where none exist."""
    fake = os.environ.get("RAIN_FAKE_GPUS")
    if fake is not None and fake.isdigit():
        return int(fake)
    return len([p for p in glob.glob("/dev/nvidia[0-9]*") if p[len("/dev/nvidia") :].isdigit()])


def detect(backends: tuple[str, ...]) -> Capabilities:
    return Capabilities(
        cpus=os.cpu_count() or 1,
        memory=psutil.virtual_memory().total,
        gpus=count_gpus(),
        backends=backends,
    )
