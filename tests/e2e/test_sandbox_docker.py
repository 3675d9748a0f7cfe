"""What only the Docker backend has to show: it never pulls an image it was not allowed to, and a
job in an image of its own gets the same walls (read-only root, no capabilities, not root)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

from sandbox.errors import ImageUnavailable
from sandbox.policy import WorkerPolicy
from sandbox.result import Reason
from sandbox.spec import JobSpec
from tests.e2e.dockerd import BUSYBOX_IMAGE, Dockerd
from tests.e2e.sandbox_helpers import leftovers, run

if TYPE_CHECKING:
    from sandbox.docker_backend import DockerBackend

pytest_plugins = ["tests.e2e.sandbox_fixtures"]


def image_names(dockerd: Dockerd) -> set[str]:
    return {tag for image in dockerd.api().images() for tag in image.get("RepoTags") or ()}


def test_a_missing_image_is_an_error_never_an_implicit_pull(
    docker_backend: DockerBackend, dockerd: Dockerd
) -> None:
    before = image_names(dockerd)
    spec = JobSpec.create(["true"], image="rainnet-test/absent:1")
    with pytest.raises(ImageUnavailable, match="does not allow pulling"):
        run(docker_backend.run, spec)
    assert image_names(dockerd) == before
    assert "pull" not in dockerd.log.read_text().lower()  # not even tried
    # Where the owner allows pulls, it does try (and here, with no registry, fails plainly).
    pulling = type(docker_backend)(
        dataclasses.replace(docker_backend.config, policy=WorkerPolicy(allow_pull=True)),
        api=docker_backend.api,
        layout=docker_backend.layout,
        host=docker_backend.host,
        host_image=docker_backend.host_image,
    )
    with pytest.raises(ImageUnavailable, match="cannot pull"):
        run(pulling.run, spec)
    assert image_names(dockerd) == before


def test_a_job_in_its_own_image_gets_every_wall(docker_backend: DockerBackend) -> None:
    script = (
        "id -u; touch /bin/x 2>/dev/null && echo ROOT-WRITABLE;"
        " grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; ls /usr 2>&1 | head -1"
    )
    spec = JobSpec.create(["sh", "-c", script], image=BUSYBOX_IMAGE)

    async def main() -> None:
        async with docker_backend.open_job(spec) as job:
            r = await job.wait()
        assert r.reason is Reason.OK, r.stderr
        lines = r.stdout.decode().splitlines()
        assert int(lines[0]) != 0
        assert "ROOT-WRITABLE" not in r.stdout.decode()
        assert lines[1:4] == ["CapEff:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"]
        assert "No such file" in lines[4]  # the image's own root: no host /usr in it
        assert leftovers(docker_backend, job) == []

    run(main)
