"""Where a member's ranks may connect, decided by the member, sans-io.

The requester names the group's addresses in its reservation (rainnet.mpiproto.Reserve: every
direct IP of each member, and the launcher's). The member does not take them on trust: each must
be a direct address in the signed record of a peer in its own view (or its own), the launcher's
one of the requester's own; a group naming anything else is refused. What is admitted
(`GroupPeers`) is kept with the reservation; when the group's job arrives, `wall_for` adds the
launcher's port (hydra's `--control-port HOST:PORT`, whose host must be the admitted launcher),
and gives the sandbox its `Wall` (sandbox.netwall): the ports of the peers' nodes themselves
refused, any other TCP port of the members' hosts allowed, the launcher's one port allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from node.mpi.assembly import CIRCUIT
from rainnet.records import NodeRecord
from sandbox.netwall import Endpoint, Wall, check_ip

CONTROL_PORT = "--control-port"


@dataclass(frozen=True)
class GroupPeers:
    hosts: frozenset[str]
    node_ports: frozenset[Endpoint]
    launcher: str


def tcp_endpoints(record: NodeRecord) -> list[Endpoint]:
    """The direct `/ip4|ip6/IP/tcp/PORT...` addresses of a record (relay circuits left out)."""
    out = []
    for addr in record.addrs:
        parts = addr.split("/")
        if CIRCUIT in addr or len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
            continue
        try:
            out.append(Endpoint(parts[2], int(parts[4])))
        except ValueError:
            continue  # (a malformed address in a signed record: simply not one of its hosts)
    return out


def canonical_ips(ips: Iterable[str]) -> list[str]:
    """The IP literals among `ips` in canonical form (what a reservation may name)."""
    out = []
    for ip in ips:
        try:
            out.append(check_ip(ip))
        except ValueError:
            continue
    return out


def admit(
    members: Sequence[str],
    launcher: str,
    requester: str,
    records: Iterable[NodeRecord],
    ours: Iterable[str] = (),
) -> GroupPeers | str:
    """The addresses of a reservation this member lets its ranks reach, or why not. `ours`:
    this node's own IPs (a group names us too; our view holds only the others)."""
    known = list(records)
    if not members or not launcher:
        return "the group names no member addresses (its requester predates the network wall)"
    by_ip: dict[str, list[NodeRecord]] = {}
    for record in known:
        for e in tcp_endpoints(record):
            by_ip.setdefault(e.ip, []).append(record)
    theirs = next((r for r in known if r.peer_id == requester), None)
    if theirs is None:
        return "the requester's signed record is not in this member's view"
    if launcher not in {e.ip for e in tcp_endpoints(theirs)}:
        return f"the launcher address {launcher} is not one of the requester's"
    mine = set(ours)
    for ip in members:
        if ip not in by_ip and ip not in mine:
            return f"the member address {ip} is not one of a peer this member knows"
    hosts = frozenset(members)
    seen = hosts | {launcher}
    ports = frozenset(
        e for ip in seen for r in by_ip.get(ip, []) for e in tcp_endpoints(r) if e.ip in seen
    )
    return GroupPeers(hosts, ports, launcher)


def control_port(argv: Sequence[str]) -> Endpoint | str:
    """hydra's `--control-port HOST:PORT` in a proxy's command line, or why there is none."""
    for i, word in enumerate(argv[:-1]):
        if word == CONTROL_PORT:
            host, _, port = argv[i + 1].rpartition(":")
            try:
                return Endpoint(host.strip("[]"), int(port))
            except ValueError:
                break
    return f"the proxy's command names no {CONTROL_PORT} IP:PORT"


def wall_for(peers: GroupPeers, argv: Sequence[str]) -> Wall | str:
    """The wall of a group job whose proxy runs `argv`, or why it may not run."""
    launcher = control_port(argv)
    if isinstance(launcher, str):
        return launcher
    if launcher.ip != peers.launcher:
        return f"the proxy connects back to {launcher.ip}, not the group's launcher"
    return Wall(peers.hosts, peers.node_ports, launcher)
