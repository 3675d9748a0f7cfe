"""The sandbox's side of MPI ranks (sandbox.spec.Network.GROUP), sans-io: the host's network,
the node's runtime read-only, and only where the owner's policy takes MPI groups."""

from __future__ import annotations

import pytest

from sandbox import JobSpec, Limits, Network, PolicyRefused, WorkerPolicy, hostfs
from sandbox.native import BwrapFds, LaunchTools, RuntimeMount, bwrap_argv, launcher_argv

HOST = hostfs.HostFs((("/bin", "usr/bin"),), (), ())


def spec(network: Network) -> JobSpec:
    return JobSpec.create(["hydra_pmi_proxy"], limits=Limits(network=network))


def test_a_rank_keeps_the_host_network_and_sees_the_runtime_read_only() -> None:
    runtime = [RuntimeMount("/root/py", "/w/j.runtime/0", "/root/py")]
    fds = BwrapFds(7, 8, 9, 10)
    argv = bwrap_argv(
        "bwrap", spec(Network.GROUP), HOST, 1, 1, fds, [("/w/j.runtime/0", "/root/py")]
    )
    joined = " ".join(argv)
    assert "--share-net" in argv and argv.index("--share-net") > argv.index("--unshare-all")
    assert "--ro-bind /w/j.runtime/0 /root/py" in joined
    assert argv.index(["--ro-bind", "/w/j.runtime/0"][0]) < argv.index("--remount-ro")
    plain = bwrap_argv("bwrap", spec(Network.NONE), HOST, 1, 1, fds)
    assert "--share-net" not in plain
    # As root, the chain binds what the job's uid could not reach, before it drops to that uid
    # (bwrap refuses even a descriptor of a directory under /root, 0700).
    tools = LaunchTools("/usr/bin/setpriv", "/usr/bin/unshare")
    chain = launcher_argv(tools, 5, 5, runtime)
    mount_ns = chain.index("--mount")
    assert chain[mount_ns + 6 : mount_ns + 9] == ["/root/py", "/w/j.runtime/0", "--"]
    assert mount_ns < chain.index("--setuid=5")
    assert "--mount" not in launcher_argv(tools, 5, 5)


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
