"""The worker owner's policy: which valid jobs this machine accepts, and up to what size.

Pure and synchronous. A spec can be perfectly valid (see `sandbox.spec`) and still be more than an
owner lets strangers have: network access, pulling images, more memory than the machine can spare.
`WorkerPolicy.check()` raises `PolicyRefused` with the reason, so the submitter can try elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.errors import PolicyRefused
from sandbox.spec import GiB, JobSpec, Network


@dataclass(frozen=True)
class WorkerPolicy:
    """What this worker allows a job. The defaults are strict: no network, no pulls, no GPUs."""

    allow_network: bool = False
    allow_group: bool = False  # the ranks of MPI groups (Network.GROUP: the host's network)
    allow_pull: bool = False  # may the Docker backend pull an image that is not present locally?
    allowed_images: tuple[str, ...] | None = None  # None: any image present locally
    max_cpus: float = 64.0
    max_memory: int = 64 * GiB
    max_wall_seconds: float = 7 * 86400.0
    max_pids: int = 4096
    max_disk: int = 64 * GiB
    max_gpus: int = 0

    def check(self, spec: JobSpec) -> None:
        """Refuse (PolicyRefused) a spec this worker will not run; return quietly otherwise."""
        lim = spec.limits
        if lim.network is Network.GROUP:
            if not self.allow_group:
                raise PolicyRefused("MPI ranks: this worker takes no MPI groups")
        elif lim.network is not Network.NONE and not self.allow_network:
            raise PolicyRefused(f"network {lim.network.value!r}: this worker gives jobs no network")
        if lim.gpus > self.max_gpus:
            raise PolicyRefused(f"gpus {lim.gpus}: this worker offers {self.max_gpus} GPUs")
        if lim.cpus > self.max_cpus:
            raise PolicyRefused(f"cpus {lim.cpus:g}: this worker allows at most {self.max_cpus:g}")
        if lim.memory > self.max_memory:
            raise PolicyRefused(
                f"memory {lim.memory}: this worker allows at most {self.max_memory}"
            )
        if lim.wall_seconds > self.max_wall_seconds:
            raise PolicyRefused(
                f"wall time {lim.wall_seconds:g}s: this worker allows at most "
                f"{self.max_wall_seconds:g}s"
            )
        if lim.pids > self.max_pids:
            raise PolicyRefused(f"pids {lim.pids}: this worker allows at most {self.max_pids}")
        if lim.disk > self.max_disk:
            raise PolicyRefused(f"disk {lim.disk}: this worker allows at most {self.max_disk}")
        if (
            spec.image is not None
            and self.allowed_images is not None
            and spec.image not in self.allowed_images
        ):
            raise PolicyRefused(f"image {spec.image!r} is not among this worker's allowed images")


# The owner running a job of their own on their own machine (`rain sandbox run`): no stranger is
# involved, so only the walls' defaults apply, and asking for the network is the owner's choice.
OWNER_POLICY = WorkerPolicy(allow_network=True, max_cpus=1024.0, max_memory=1 << 40)
