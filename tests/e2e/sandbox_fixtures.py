"""Fixtures for the sandbox tests: real backends on this machine, a private Docker engine.

Loaded by the sandbox test modules with `pytest_plugins = ["tests.e2e.sandbox_fixtures"]`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sandbox.job import Backend
from tests.e2e.dockerd import Dockerd, missing_tools
from tests.e2e.sandbox_helpers import make_config, require, require_root, run

if TYPE_CHECKING:
    from sandbox.docker_backend import DockerBackend


@pytest.fixture(scope="session")
def sandbox_root() -> Iterator[Path]:
    """Where job directories go: job uids must be able to walk there (pytest's tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="rainnet-sandbox-test-", dir="/tmp"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    require_root()
    require(missing_tools())
    engine = Dockerd()
    try:
        engine.start()
        engine.import_busybox()
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def native_backend(sandbox_root: Path) -> Backend:
    require_root()
    require([f"{t} (bubblewrap)" for t in ["bwrap"] if shutil.which(t) is None])
    from sandbox.native import NativeBackend

    config = make_config(sandbox_root / "native")
    backend: Backend = run(NativeBackend.open, config)
    return backend


@pytest.fixture(scope="session")
def docker_backend(sandbox_root: Path, dockerd: Dockerd) -> DockerBackend:
    from sandbox.docker_backend import DockerBackend

    config = make_config(sandbox_root / "docker", docker_url=dockerd.url)
    backend: DockerBackend = run(DockerBackend.open, config)
    return backend


@pytest.fixture(params=["native", "docker"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each wall test runs against both backends."""
    name = request.param
    fixture: Backend = request.getfixturevalue(f"{name}_backend")
    return fixture
