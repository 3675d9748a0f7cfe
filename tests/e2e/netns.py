"""Test LANs made of network namespaces: hosts on bridges, a router namespace between the LANs.

Addresses are only ever those of namespaces the test made (10.231.x.0/24 inside them); nothing
is routed to the machine's own interfaces. Everything is removed at the end, even after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest


def require_netns() -> None:
    """Skip (not fail) where network namespaces cannot be made: not root, no iproute2, or a
    kernel or container that refuses them (tried once, with a namespace made and removed)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces")
    probe = f"rn{os.getpid() % 100000}-probe"
    made = sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"network namespaces cannot be made here: {made.stderr.strip()}")
    sh("ip", "netns", "del", probe, check=False)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {res.stderr.strip()}")
    return res


@dataclass
class Lan:
    name: str
    subnet: int  # the third octet: 10.231.<subnet>.0/24
    bridge: str
    hosts: list[str] = field(default_factory=list)

    def ip(self, index: int) -> str:
        return f"10.231.{self.subnet}.{index}"


@dataclass
class Topology:
    """LANs of namespaces joined by a router namespace (optionally masquerading for some)."""

    prefix: str = field(default_factory=lambda: f"rn{os.getpid() % 100000}")
    router: str = ""
    lans: list[Lan] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.router = f"{self.prefix}-r"
        try:
            self._ns(self.router)
            self.exec(self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        except BaseException:
            self.destroy()  # (the fixture's finally never sees a topology that was not made)
            raise

    def _ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.exec(name, "ip", "link", "set", "lo", "up")

    def exec(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *args)

    def add_lan(self, name: str, hosts: int) -> Lan:
        lan = Lan(name, subnet=len(self.lans) + 1, bridge=f"br{len(self.lans)}")
        self.exec(self.router, "ip", "link", "add", lan.bridge, "type", "bridge")
        self.exec(self.router, "ip", "addr", "add", f"{lan.ip(1)}/24", "dev", lan.bridge)
        self.exec(self.router, "ip", "link", "set", lan.bridge, "up")
        for i in range(hosts):
            ns = f"{self.prefix}-{name}{i}"
            self._ns(ns)
            host_if, port_if = f"{self.prefix}{name}{i}h", f"{self.prefix}{name}{i}p"
            sh(
                "ip",
                "link",
                "add",
                host_if,
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                port_if,
                "netns",
                self.router,
            )
            self.exec(self.router, "ip", "link", "set", port_if, "master", lan.bridge, "up")
            self.exec(ns, "ip", "link", "set", host_if, "name", "eth0")
            self.exec(ns, "ip", "addr", "add", f"{lan.ip(10 + i)}/24", "dev", "eth0")
            self.exec(ns, "ip", "link", "set", "eth0", "up", "multicast", "on")
            self.exec(ns, "ip", "route", "add", "default", "via", lan.ip(1))
            lan.hosts.append(ns)
        self.lans.append(lan)
        return lan

    def masquerade(self, lan: Lan) -> None:
        """Put `lan` behind NAT: its hosts reach out, nobody outside reaches in."""
        subnet = f"10.231.{lan.subnet}.0/24"
        r = self.router
        self.exec(
            r,
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            subnet,
            "!",
            "-o",
            lan.bridge,
            "-j",
            "MASQUERADE",
        )
        self.exec(
            r,
            "iptables",
            "-A",
            "FORWARD",
            "-d",
            subnet,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        )
        self.exec(r, "iptables", "-A", "FORWARD", "-d", subnet, "!", "-i", lan.bridge, "-j", "DROP")

    def cut(self, src: Lan, dst: Lan) -> None:
        """Nothing from `src` reaches `dst` through the router (as if `dst` were behind a NAT of
        its own too); both still reach the router itself."""
        self.exec(
            self.router,
            "iptables",
            "-I",
            "FORWARD",
            "-s",
            f"10.231.{src.subnet}.0/24",
            "-d",
            f"10.231.{dst.subnet}.0/24",
            "-j",
            "DROP",
        )

    def destroy(self) -> None:
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
