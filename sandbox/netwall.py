"""The network wall of an MPI rank (`Network.GROUP`): which TCP connections a group job may open.

A rank shares the host's network (bubblewrap `--share-net`: MPI opens TCP connections between
every pair of ranks, on ephemeral ports). What narrows it is an nftables table of the job's own,
matching the job's cgroup v2 (`socket cgroupv2`), loaded before its first process runs (the
native launch's "go" comes after it) and deleted with the job; `sweep` deletes what a crashed
run left. The rules, for sockets of the job's cgroup:

- out: replies and connections already admitted pass; the launcher's exact address and port
  (hydra's control port) passes; the other members' nodes' own ports (from their signed
  records) are refused; any TCP port of the other members' hosts passes; a new TCP connection
  to this host itself (loopback, or one of our addresses) is marked and judged on input;
  everything else is refused (TCP with a reset, the rest with an ICMP "prohibited").
- in, for connections a rank of the job opened to this host: the receiving socket (nftables
  looks the listener up) must belong to a rank (a cgroup under some node's `rainnet*` parent,
  as listed when the job starts: members of a group on one machine are different nodes, and
  each node makes its parent when its sandbox opens), or be the launcher's port; the node's
  own ports (libp2p, the panel) and anything else listening here are refused.
- in, for new connections to the job's own sockets: only from this host, the group's hosts and
  the launcher's.
- in, for new connections a rank on another host opened (its first packet carries RANK_DSCP,
  set by that rank's own wall): as for this host's own ranks, the receiving socket must be a
  rank's. The group's other members run their ranks behind the same wall, so a rank reaches
  only ranks' sockets on their hosts too (and their nodes' ports are refused already at the
  rank's own end). A router that rewrote DSCP on the way would leave such connections unjudged
  there: on one LAN nothing does.

So a rank reaches the launcher's one port, and ranks' sockets on the group's hosts; nothing else
there, no other host. Ranks of another group on the same hosts are reachable too (a socket's
cgroup tells a rank from the rest, not which group it is of), and a member's host is judged
only while that member's ranks run (when its wall is there): a member host's listeners outside
the ranks are refused by that member's wall, not by ours.

`Wall`, `Target` and `render` are pure (tested in memory); `Walls` is the registry through which
the member (node.mpi) hands the native backend the wall of the job it admitted; `probe`,
`install`, `remove` and `sweep` run `nft`.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sandbox.errors import SandboxFailure
from sandbox.spec import JobSpec

# nftables resolves a `socket cgroupv2` path below this (a v2 mounted elsewhere cannot be named).
CGROUP_ROOT = Path("/sys/fs/cgroup")
TABLE_PREFIX = "rainnet_"
RANK_PARENT_PREFIX = "rainnet"  # every node's job cgroups are under rainnet-<tag> (SandboxConfig)
MAX_RANK_PARENTS = 1024
MAX_EXPECTED = 64  # walls of admitted group jobs not started yet (a declined one is dropped)
MARK_BASE = 0x52000000  # 'R': a rank's connections to this host carry MARK_BASE | job bits
# A rank's first packet to another member's host carries this DSCP (pool 2, "experimental or
# local use", RFC 2474): the walls there judge such connections as a rank's. A rank cannot
# clear it (set after its socket); another program setting it only refuses itself.
RANK_DSCP = 0x0B
NFT_TIMEOUT = 10.0
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class WallKind(enum.Enum):
    FIREWALL = "firewall"  # nftables, by the job's cgroup v2
    HOST_NETWORK = "host-network"  # not expressible here: ranks would get the whole network


def check_ip(text: str) -> str:
    """`text` if it is an IP literal in its canonical form (it is written into nft rules)."""
    if "%" in text or str(ipaddress.ip_address(text)) != text:
        raise ValueError(f"{text[:64]!r} is not a canonical IP literal")
    return text


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int

    def __post_init__(self) -> None:
        check_ip(self.ip)
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} outside 1..65535")


@dataclass(frozen=True)
class Wall:
    """What the ranks of one member of a group may reach, as decided by that member."""

    hosts: frozenset[str]  # IP literals of the group's other members' hosts
    node_ports: frozenset[Endpoint] = frozenset()  # their nodes' own ports: refused
    launcher: Endpoint | None = None  # hydra's control port on the requester

    def __post_init__(self) -> None:
        for ip in self.hosts:
            check_ip(ip)


@dataclass(frozen=True)
class Target:
    """Where the rules of one job go: its table, and its cgroup as nftables names it."""

    table: str
    cgroup: str  # below CGROUP_ROOT, e.g. "unified/rainnet-ab12/job-1"
    level: int  # the cgroup's depth in the v2 hierarchy
    rank_parents: tuple[str, ...]  # level-1 cgroups (below CGROUP_ROOT) of every node's ranks
    mark: int


@dataclass(frozen=True)
class WallStatus:
    kind: WallKind
    detail: str  # why not, where the wall cannot be installed

    def describe(self) -> str:
        """For `rain sandbox check` and the node's log."""
        if self.kind is WallKind.FIREWALL:
            return (
                "only the group's members and launcher (nftables by cgroup: their ranks' "
                "sockets and the launcher's port; not the nodes' ports, nor other hosts)"
            )
        return f"refused: the wall cannot be installed here ({self.detail})"


def table_prefix(cgroup_name: str) -> str:
    """The prefix of every table of one node's jobs (its sweep deletes only these)."""
    return TABLE_PREFIX + hashlib.sha256(cgroup_name.encode()).hexdigest()[:12] + "_"


def table_name(cgroup_name: str, job_id: str) -> str:
    return table_prefix(cgroup_name) + hashlib.sha256(job_id.encode()).hexdigest()[:16]


def mark_of(table: str) -> int:
    return MARK_BASE | int(hashlib.sha256(table.encode()).hexdigest()[:6], 16)


def nft_cgroup(v2_mount: Path, relpath: PurePosixPath) -> str | None:
    """A cgroup as nftables names it (a path below CGROUP_ROOT), or None if it cannot."""
    try:
        return str(PurePosixPath(v2_mount.relative_to(CGROUP_ROOT)) / relpath).lstrip("./")
    except ValueError:
        return None


def _quote(path: str) -> str:
    if any(c in path for c in '"\\\n;{}'):
        raise SandboxFailure(f"cgroup path {path!r} cannot be named to nftables")
    return f'"{path}"'


def _set(name: str, kind: str, elements: Iterable[str]) -> list[str]:
    items = sorted(elements)
    body = f"type {kind}; " + (f"elements = {{ {', '.join(items)} }}" if items else "")
    return [f"  set {name} {{ {body} }}"]


def render(wall: Wall, target: Target) -> str:
    """The nft script that installs `wall` for the job of `target` (one atomic transaction)."""
    v4 = {ip for ip in wall.hosts if ipaddress.ip_address(ip).version == 4}
    v6 = set(wall.hosts) - v4
    nodes4 = {f"{e.ip} . {e.port}" for e in wall.node_ports if ":" not in e.ip}
    nodes6 = {f"{e.ip} . {e.port}" for e in wall.node_ports if ":" in e.ip}
    cg = f"socket cgroupv2 level {target.level} {_quote(target.cgroup)}"
    launcher: list[str] = []
    if wall.launcher is not None:
        family = "ip6" if ":" in wall.launcher.ip else "ip"
        launcher = [f"{family} daddr . tcp dport {{ {wall.launcher.ip} . {wall.launcher.port} }}"]
    parents = ", ".join(_quote(p) for p in target.rank_parents)
    mark = f"0x{target.mark:08x}"
    dscp = f"0x{RANK_DSCP:02x}"
    lines = [
        f"table inet {target.table} {{",
        *_set("hosts4", "ipv4_addr", v4),
        *_set("hosts6", "ipv6_addr", v6),
        *_set("nodes4", "ipv4_addr . inet_service", nodes4),
        *_set("nodes6", "ipv6_addr . inet_service", nodes6),
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        f"    {cg} jump rank_out",
        "  }",
        "  chain rank_out {",
        "    ct state established,related accept",
        *(f"    {rule} accept" for rule in launcher),
        "    ip daddr . tcp dport @nodes4 counter reject with tcp reset",
        "    ip6 daddr . tcp dport @nodes6 counter reject with tcp reset",
        # To this host: which socket it would reach is known only on input (below).
        f"    fib daddr type local meta l4proto tcp ct state new ct mark set {mark} accept",
        # To another member's host: its first packet tells that host's walls it is a rank's.
        f"    ip daddr @hosts4 meta l4proto tcp ip dscp set {dscp} accept",
        f"    ip6 daddr @hosts6 meta l4proto tcp ip6 dscp set {dscp} accept",
        "    meta l4proto tcp counter reject with tcp reset",
        "    counter reject with icmpx admin-prohibited",
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f"    ct state new ct mark {mark} jump rank_to_here",
        f"    ct state new {cg} jump to_rank",
        f"    ct state new ip dscp {dscp} jump rank_from_afar",
        f"    ct state new ip6 dscp {dscp} jump rank_from_afar",
        "  }",
        "  chain rank_from_afar {",
        *([f"    socket cgroupv2 level 1 {{ {parents} }} accept"] if parents else []),
        "    counter reject with tcp reset",
        "  }",
        "  chain rank_to_here {",
        *(f"    {rule} accept" for rule in launcher),
        *([f"    socket cgroupv2 level 1 {{ {parents} }} accept"] if parents else []),
        "    counter reject with tcp reset",
        "  }",
        "  chain to_rank {",
        "    fib saddr type local accept",
        "    ip saddr @hosts4 accept",
        "    ip6 saddr @hosts6 accept",
        *(
            [f"    {'ip6' if ':' in wall.launcher.ip else 'ip'} saddr {wall.launcher.ip} accept"]
            if wall.launcher is not None
            else []
        ),
        "    counter reject with tcp reset",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def rank_parents(v2_mount: Path, names: Iterable[str]) -> tuple[str, ...]:
    """The level-1 cgroups of every node's jobs among the v2 root's children `names`."""
    out: list[str] = []
    for name in sorted(names):
        if name.startswith(RANK_PARENT_PREFIX) and len(out) < MAX_RANK_PARENTS:
            path = nft_cgroup(v2_mount, PurePosixPath(name))
            if path is not None:
                out.append(path)
    return tuple(out)


class Walls:
    """The walls of group jobs admitted and not yet started, by their (admitted) spec: the
    member registers one when it admits a job; the native backend takes it when it starts."""

    def __init__(self) -> None:
        self._expected: dict[JobSpec, Wall] = {}

    def expect(self, spec: JobSpec, wall: Wall) -> None:
        self._expected.pop(spec, None)
        self._expected[spec] = wall
        while len(self._expected) > MAX_EXPECTED:  # the oldest: a job admitted, then declined
            del self._expected[next(iter(self._expected))]

    def take(self, spec: JobSpec) -> Wall | None:
        return self._expected.pop(spec, None)

    def forget(self, spec: JobSpec) -> None:
        self._expected.pop(spec, None)


# -- nft (blocking: call from a worker thread) -------------------------------------------------


def nft_path() -> str | None:
    return shutil.which("nft", path=SYSTEM_PATH)


def _nft(args: list[str], script: str | None = None) -> subprocess.CompletedProcess[str]:
    nft = nft_path()
    if nft is None:
        raise SandboxFailure("nft is not installed (Debian package: nftables)")
    return subprocess.run(
        [nft, *args],
        input=script,
        capture_output=True,
        text=True,
        timeout=NFT_TIMEOUT,
        env={"PATH": SYSTEM_PATH},
    )


def install(script: str) -> None:
    res = _nft(["-f", "-"], script)
    if res.returncode != 0:
        raise SandboxFailure(f"cannot install the rank's network wall: {res.stderr.strip()}")


def remove(table: str) -> None:
    """Delete a job's table; quietly if it is gone already."""
    res = _nft(["delete", "table", "inet", table])
    if res.returncode != 0 and "No such file" not in res.stderr:
        raise SandboxFailure(f"cannot remove the rank's network wall {table}: {res.stderr.strip()}")


def tables(prefix: str) -> list[str]:
    res = _nft(["list", "tables", "inet"])
    if res.returncode != 0:
        return []
    words = (line.split() for line in res.stdout.splitlines())
    return [
        w[2]
        for w in words
        if len(w) == 3 and w[:2] == ["table", "inet"] and w[2].startswith(prefix)
    ]


def sweep(cgroup_name: str) -> list[str]:
    """Delete every table one node's jobs left (a crashed run); their names."""
    if nft_path() is None:
        return []
    gone = []
    for table in tables(table_prefix(cgroup_name)):
        remove(table)
        gone.append(table)
    return gone


def probe(v2_mount: Path | None, parent: PurePosixPath) -> WallStatus:
    """Whether walls can be installed here: nft present, a cgroup v2 it can name, and a kernel
    that takes every expression `render` uses (loaded for a cgroup of ours, then deleted)."""
    if nft_path() is None:
        return WallStatus(WallKind.HOST_NETWORK, "nft is not installed (Debian package: nftables)")
    if v2_mount is None:
        return WallStatus(WallKind.HOST_NETWORK, "no cgroup v2 mounted")
    cgroup = nft_cgroup(v2_mount, parent)
    if cgroup is None:
        return WallStatus(
            WallKind.HOST_NETWORK, f"cgroup v2 at {v2_mount}, not below {CGROUP_ROOT}"
        )
    table = f"{TABLE_PREFIX}probe_{os.getpid()}"
    wall = Wall(
        frozenset({"192.0.2.1"}), frozenset({Endpoint("192.0.2.1", 1)}), Endpoint("192.0.2.1", 2)
    )
    target = Target(table, cgroup, len(parent.parts), (cgroup,), mark_of(table))
    try:
        install(render(wall, target))
        remove(table)
    except (SandboxFailure, OSError, subprocess.SubprocessError) as exc:
        return WallStatus(WallKind.HOST_NETWORK, str(exc)[:300])
    return WallStatus(WallKind.FIREWALL, "")
