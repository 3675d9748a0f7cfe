"""The sandbox's side of MPI ranks (sandbox.spec.Network.GROUP), sans-io: the host's network,
the node's runtime read-only, and only where the owner's policy takes MPI groups."""

from __future__ import annotations

import pytest

from sandbox import JobSpec, Limits, Network, PolicyRefused, WorkerPolicy, hostfs
from sandbox.native import BwrapFds, bwrap_argv

HOST = hostfs.HostFs((("/bin", "usr/bin"),), (), ())


def spec(network: Network) -> JobSpec:
    return JobSpec.create(["hydra_pmi_proxy"], limits=Limits(network=network))


def test_a_rank_keeps_the_host_network_and_sees_the_runtime_read_only() -> None:
    fds = BwrapFds(7, 8, 9, 10, runtime=((12, "/opt/py"), (13, "/srv/venv")))
    argv = bwrap_argv("bwrap", spec(Network.GROUP), HOST, 1, 1, fds)
    joined = " ".join(argv)
    assert "--share-net" in argv and argv.index("--share-net") > argv.index("--unshare-all")
    assert "--ro-bind-fd 12 /opt/py" in joined and "--ro-bind-fd 13 /srv/venv" in joined
    assert argv.index("--ro-bind-fd") < argv.index("--remount-ro")
    plain = bwrap_argv("bwrap", spec(Network.NONE), HOST, 1, 1, BwrapFds(7, 8, 9, 10))
    assert "--share-net" not in plain and "--ro-bind-fd" not in plain


def test_only_an_owner_who_takes_mpi_groups_runs_ranks() -> None:
    with pytest.raises(PolicyRefused, match="MPI"):
        WorkerPolicy().check(spec(Network.GROUP))
    with pytest.raises(PolicyRefused, match="MPI"):
        WorkerPolicy(allow_network=True).check(spec(Network.GROUP))  # (network is not MPI)
    WorkerPolicy(allow_group=True).check(spec(Network.GROUP))
    with pytest.raises(PolicyRefused):
        WorkerPolicy(allow_group=True).check(spec(Network.INTERNET))
    # The wire knows the new value, and an older one's refusal of it is an unknown-value error.
    assert JobSpec.from_wire(spec(Network.GROUP).to_wire()).limits.network is Network.GROUP
