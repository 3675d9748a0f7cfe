"""Shared fixtures: a cluster of real rain-node processes and a topology of network namespaces,
both always torn down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.netns import Topology, require_netns
from tests.e2e.nodes import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def topology() -> Iterator[Topology]:
    require_netns()
    topo = Topology()
    try:
        yield topo
    finally:
        topo.destroy()
