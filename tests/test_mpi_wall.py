"""The network wall of MPI ranks, sans-io: which addresses a member admits for a group
(node.mpi.wall), the nft rules it renders (sandbox.netwall), and the validation of the
addresses a Reserve names (malformed ones close the stream: RemoteProtocolError)."""

from __future__ import annotations

import ipaddress
from pathlib import Path, PurePosixPath

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.mpi import wall
from rainnet import mpiproto, wire
from sandbox import JobSpec, Limits, Network, netwall
from sandbox.errors import SandboxFailure
from sandbox.netwall import Endpoint, Target, Wall
from tests.test_mpi_assembly import GROUP, record

REQUESTER = record(0, ip="10.231.1.10")
A = record(1, ip="10.231.1.11")
B = record(2, ip="10.231.1.12")
STRANGER = "10.231.2.99"


def test_a_member_admits_only_addresses_of_peers_it_knows() -> None:
    known = [REQUESTER, A, B]
    peers = wall.admit(["10.231.1.11", "10.231.1.12"], "10.231.1.10", REQUESTER.peer_id, known)
    assert isinstance(peers, wall.GroupPeers)
    assert peers.hosts == {"10.231.1.11", "10.231.1.12"}
    # The nodes' own ports on those hosts (and the requester's, the launcher's host) are named
    # so that the wall refuses them.
    assert peers.node_ports == {
        Endpoint("10.231.1.10", 4000),
        Endpoint("10.231.1.11", 4001),
        Endpoint("10.231.1.12", 4002),
    }
    # A member is named too: its own addresses are not in its view, but are its own.
    me = wall.admit(["10.231.1.11", "10.231.1.13"], "10.231.1.10", REQUESTER.peer_id, known)
    assert isinstance(me, str)
    assert isinstance(
        wall.admit(
            ["10.231.1.11", "10.231.1.13"], "10.231.1.10", REQUESTER.peer_id, known, ["10.231.1.13"]
        ),
        wall.GroupPeers,
    )
    stranger = wall.admit(["10.231.1.11", STRANGER], "10.231.1.10", REQUESTER.peer_id, known)
    assert isinstance(stranger, str) and STRANGER in stranger
    # The launcher must be the requester's own, not another peer's (nor anybody's).
    other = wall.admit(["10.231.1.11"], "10.231.1.12", REQUESTER.peer_id, known)
    assert isinstance(other, str) and "launcher" in other
    unknown = wall.admit(["10.231.1.11"], "10.231.1.10", REQUESTER.peer_id, [A, B])
    assert isinstance(unknown, str) and "requester" in unknown
    old = wall.admit([], "", REQUESTER.peer_id, known)
    assert isinstance(old, str) and "predates" in old


def test_the_launchers_port_comes_from_hydras_command_and_must_be_the_launchers() -> None:
    peers = wall.GroupPeers(frozenset({"10.231.1.11"}), frozenset(), "10.231.1.10")
    argv = ["hydra_pmi_proxy", "--control-port", "10.231.1.10:41234", "--proxy-id", "0"]
    got = wall.wall_for(peers, argv)
    assert got == Wall(frozenset({"10.231.1.11"}), frozenset(), Endpoint("10.231.1.10", 41234))
    elsewhere = wall.wall_for(peers, ["p", "--control-port", "10.231.2.99:41234"])
    assert isinstance(elsewhere, str) and "launcher" in elsewhere
    for bad in (["p"], ["p", "--control-port"], ["p", "--control-port", "x:y"]):
        assert isinstance(wall.wall_for(peers, bad), str)


def target(parents: tuple[str, ...] = ("unified/rainnet-a", "unified/rainnet-b")) -> Target:
    return Target("rainnet_t_j", "unified/rainnet-a/job-1", 2, parents, 0x52000001)


def test_rules_match_the_jobs_cgroup_and_name_exactly_what_is_allowed() -> None:
    w = Wall(
        frozenset({"10.231.1.11", "fd00::11"}),
        frozenset({Endpoint("10.231.1.11", 4001)}),
        Endpoint("10.231.1.10", 41234),
    )
    script = netwall.render(w, target())
    assert script.startswith("table inet rainnet_t_j {")
    assert 'socket cgroupv2 level 2 "unified/rainnet-a/job-1" jump rank_out' in script
    assert "elements = { 10.231.1.11 }" in script and "elements = { fd00::11 }" in script
    assert "elements = { 10.231.1.11 . 4001 }" in script
    assert "ip daddr . tcp dport { 10.231.1.10 . 41234 } accept" in script
    # This host's own sockets: only ranks' (any node's) and the launcher's port.
    assert 'socket cgroupv2 level 1 { "unified/rainnet-a", "unified/rainnet-b" } accept' in script
    out = script[script.index("chain rank_out") :]
    # The order decides: replies, launcher, node ports refused, this host, members, the rest.
    order = [
        "established",
        "41234",
        "@nodes4",
        "fib daddr",
        "@hosts4",
        "l4proto tcp counter reject",
        "icmpx",
    ]
    positions = [out.index(word) for word in order]
    assert positions == sorted(positions)


def test_a_wall_of_nothing_leaves_only_this_hosts_ranks() -> None:
    script = netwall.render(Wall(frozenset()), target(()))
    assert "elements" not in script and "dport {" not in script
    assert "socket cgroupv2 level 1" not in script  # no parent known: nothing local either
    assert script.count("{") == script.count("}")


def test_names_of_tables_are_per_node_and_per_job() -> None:
    a, b = netwall.table_name("rainnet-a", "job-1"), netwall.table_name("rainnet-a", "job-2")
    assert a != b and a.startswith(netwall.table_prefix("rainnet-a"))
    assert not a.startswith(netwall.table_prefix("rainnet-b"))
    assert netwall.mark_of(a) >> 24 == netwall.MARK_BASE >> 24
    assert netwall.nft_cgroup(Path("/sys/fs/cgroup/unified"), PurePosixPath("r/j")) == (
        "unified/r/j"
    )
    assert netwall.nft_cgroup(Path("/sys/fs/cgroup"), PurePosixPath("r/j")) == "r/j"
    assert netwall.nft_cgroup(Path("/cg2"), PurePosixPath("r/j")) is None
    names = ["rainnet-a", "other", "rainnet-b", "rainnet"]
    assert netwall.rank_parents(Path("/sys/fs/cgroup"), names) == (
        "rainnet",
        "rainnet-a",
        "rainnet-b",
    )


def test_a_cgroup_path_that_could_break_out_of_the_script_is_refused() -> None:
    with pytest.raises(SandboxFailure):
        netwall.render(Wall(frozenset()), Target("t", 'a" accept; #', 1, (), 1))


def test_the_walls_registry_hands_each_admitted_spec_its_wall_once_and_stays_bounded() -> None:
    walls = netwall.Walls()

    def spec(i: int) -> JobSpec:
        return JobSpec.create(["p", str(i)], limits=Limits(network=Network.GROUP))

    w = Wall(frozenset({"10.0.0.1"}))
    walls.expect(spec(0), w)
    assert walls.take(spec(0)) == w and walls.take(spec(0)) is None
    for i in range(netwall.MAX_EXPECTED + 5):
        walls.expect(spec(i), w)
    assert walls.take(spec(0)) is None  # the oldest went
    assert walls.take(spec(netwall.MAX_EXPECTED + 4)) == w


def reserve_fields(**over: object) -> dict[str, object]:
    good = mpiproto.Reserve(
        GROUP, 2, 2.0, 1 << 30, 60.0, 30.0, bytes(32), ("10.231.1.11",), "10.231.1.10"
    )
    return {**wire.to_fields(good), "t": "mpi-reserve", "v": wire.WIRE_VERSION, **over}


def decode(fields: dict[str, object]) -> wire.Message:
    return wire.decode_payload(msgpack.packb(fields, use_bin_type=True), mpiproto.TO_MEMBER)


def test_reserve_addresses_round_trip_and_an_old_requester_sends_none() -> None:
    msg = decode(reserve_fields())
    assert isinstance(msg, mpiproto.Reserve)
    assert msg.members == ("10.231.1.11",) and msg.launcher == "10.231.1.10"
    fields = reserve_fields()
    del fields["members"], fields["launcher"]
    old = decode(fields)
    assert isinstance(old, mpiproto.Reserve) and old.members == () and old.launcher == ""


junk = st.one_of(
    st.text(max_size=80),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.binary(max_size=20),
    st.none(),
    st.lists(st.text(max_size=50), max_size=70),
)


@given(members=junk, launcher=junk)
def test_malformed_reserve_addresses_are_the_remotes_fault(
    members: object, launcher: object
) -> None:
    """Any value: a Reserve whose addresses are all canonical IP literals, or a protocol error
    (which closes that stream, never the node) -- never an address that is not one."""
    try:
        msg = decode(reserve_fields(members=members, launcher=launcher))
    except wire.RemoteProtocolError:
        return
    assert isinstance(msg, mpiproto.Reserve)
    for ip in (*msg.members, *([msg.launcher] if msg.launcher else [])):
        assert str(ipaddress.ip_address(ip)) == ip and "%" not in ip


@pytest.mark.parametrize(
    "bad",
    ["10.0.0.1; drop", "010.0.0.1", "fe80::1%eth0", "::FFFF:1.2.3.4", "10.0.0.1/8", " 10.0.0.1"],
)
def test_addresses_that_are_not_canonical_literals_are_refused(bad: str) -> None:
    with pytest.raises(wire.RemoteProtocolError):
        decode(reserve_fields(members=[bad]))
    with pytest.raises(wire.RemoteProtocolError):
        decode(reserve_fields(launcher=bad))
    with pytest.raises(ValueError):
        Wall(frozenset({bad}))


def test_where_the_wall_cannot_be_installed_ranks_are_refused_and_it_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netwall, "nft_path", lambda: None)
    status = netwall.probe(Path("/sys/fs/cgroup/unified"), PurePosixPath("rainnet-x"))
    assert status.kind is netwall.WallKind.HOST_NETWORK
    assert "nftables" in status.describe() and status.describe().startswith("refused")
    assert netwall.sweep("rainnet-x") == []  # (nothing to sweep without nft)
    monkeypatch.setattr(netwall, "nft_path", lambda: "/usr/sbin/nft")
    assert "not below" in netwall.probe(Path("/cg2"), PurePosixPath("r")).detail
    assert "no cgroup v2" in netwall.probe(None, PurePosixPath("r")).detail
    ok = netwall.WallStatus(netwall.WallKind.FIREWALL, "").describe()
    assert ok.startswith("only the group's members and launcher (nftables by cgroup")
