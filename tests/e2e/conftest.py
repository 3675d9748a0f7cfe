"""Shared fixtures: a cluster of real rain-node processes and a topology of network namespaces,
both always torn down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.netns import Topology, require_netns
from tests.e2e.nodes import Cluster
from tests.e2e.owner_helpers import stop_gracefully


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def nodes(cluster: Cluster) -> Iterator[Cluster]:
    """A cluster whose nodes are stopped gracefully (SIGTERM first: workers kill and remove
    their guests; a SIGKILLed worker would leave a frozen guest behind)."""
    try:
        yield cluster
    finally:
        stop_gracefully(cluster)


@pytest.fixture
def topology() -> Iterator[Topology]:
    require_netns()
    topo = Topology()
    try:
        yield topo
    finally:
        topo.destroy()
