"""LAN discovery over mDNS, in the libp2p mDNS format (`_p2p._udp.local.`, TXT `dnsaddr=<addr>`).

py-libp2p's own mDNS opens zeroconf on every interface with no way to narrow it; a node listening
only on one address must not announce itself (or send queries) on others, so this module runs
zeroconf on the interfaces of the node's listen addresses (all of them for a wildcard listener).

zeroconf runs its own thread. `MdnsDiscovery` hands each peer it finds to `on_found` on that thread;
the node moves it into trio through a bounded channel. Names are random and not probed for conflict
(`cooperating_responders`), which saves ~0.75 s of probing per start: 32 random characters do not
collide.

A node of a private pool (rainnet.pool) browses and announces only its pool's own service type
(`_rain-<tag>._udp.local.`, the tag derived from the pool key) instead of `_p2p._udp.local.`: it
answers no query of the open network's or another pool's, and hears none of their announcements.
"""

from __future__ import annotations

import logging
import secrets
import socket
import string
from collections.abc import Callable, Sequence

from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceListener,
    Zeroconf,
)

log = logging.getLogger("rainnet.mdns")

SERVICE_TYPE = "_p2p._udp.local."
MAX_TXT_ADDRS = 8
RESOLVE_TIMEOUT_MS = 3000

FoundCallback = Callable[[str, tuple[str, ...]], None]


def peer_of_dnsaddr(addr: str) -> str | None:
    """The peer id at the end of `/.../p2p/<id>`, or None."""
    head, sep, tail = addr.rpartition("/p2p/")
    if not sep or not head or "/" in tail or not tail:
        return None
    return tail


class _Listener(ServiceListener):
    def __init__(self, own_name: str, own_peer: str, on_found: FoundCallback) -> None:
        self._own_name = own_name
        self._own_peer = own_peer
        self._on_found = on_found

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._resolve(zc, type_, name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._resolve(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        # Departure is decided by liveness checks, not by a goodbye that a crashed node never sends.
        pass

    def _resolve(self, zc: Zeroconf, type_: str, name: str) -> None:
        if name == self._own_name:
            return
        try:
            info = zc.get_service_info(type_, name, timeout=RESOLVE_TIMEOUT_MS)
        except Exception as exc:  # zeroconf raises on malformed packets from anyone on the LAN
            log.debug("mDNS: cannot resolve %s: %s", name, exc)
            return
        if info is None:
            return
        by_peer: dict[str, list[str]] = {}
        for key, value in (info.properties or {}).items():
            if key != b"dnsaddr" or not value:
                continue
            try:
                addr = value.decode("ascii")
            except UnicodeDecodeError:
                continue
            peer = peer_of_dnsaddr(addr)
            if peer and peer != self._own_peer and len(addr) <= 256:
                by_peer.setdefault(peer, []).append(addr)
        # zeroconf keeps one value per TXT key; libp2p peers may send several dnsaddr strings, which
        # arrive in `info.text` too.
        for addr in _all_dnsaddrs(info.text or b""):
            peer = peer_of_dnsaddr(addr)
            if peer and peer != self._own_peer:
                by_peer.setdefault(peer, [])
                if addr not in by_peer[peer]:
                    by_peer[peer].append(addr)
        for peer, addrs in by_peer.items():
            self._on_found(peer, tuple(addrs[:MAX_TXT_ADDRS]))


def _all_dnsaddrs(text: bytes) -> list[str]:
    """Every `dnsaddr=` string in a raw TXT rdata (length-prefixed strings)."""
    out = []
    i = 0
    while i < len(text):
        n = text[i]
        chunk = text[i + 1 : i + 1 + n]
        i += 1 + n
        if chunk.startswith(b"dnsaddr="):
            try:
                out.append(chunk[len(b"dnsaddr=") :].decode("ascii"))
            except UnicodeDecodeError:
                continue
    return out


class MdnsDiscovery:
    """Announce this node and report others on the given interfaces (None: all)."""

    def __init__(
        self,
        peer_id: str,
        addrs: Sequence[str],
        interface_ips: Sequence[str] | None,
        on_found: FoundCallback,
        service_type: str = SERVICE_TYPE,
    ) -> None:
        self.peer_id = peer_id
        self.service_type = service_type
        self._addrs = [a for a in addrs if a.endswith(f"/p2p/{peer_id}")][:MAX_TXT_ADDRS]
        self._interfaces = list(interface_ips) if interface_ips else None
        self._on_found = on_found
        instance = "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(32)
        )
        self._name = f"{instance}.{service_type}"
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None

    def start(self) -> None:
        """Blocking (a few hundred ms): run it in a thread."""
        interfaces = self._interfaces if self._interfaces is not None else InterfaceChoice.All
        self._zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        port = _first_tcp_port(self._addrs)
        ips = sorted({ip for ip in (_ip_of(a) for a in self._addrs) if ip})
        info = ServiceInfo(
            self.service_type,
            self._name,
            addresses=[socket.inet_aton(ip) for ip in ips],
            port=port,
            properties=_txt([f"dnsaddr={a}".encode() for a in self._addrs]),
            server=f"{self._name.split('.')[0]}.local.",
        )
        self._browser = ServiceBrowser(
            self._zc,
            self.service_type,
            listener=_Listener(self._name, self.peer_id, self._on_found),
        )
        self._zc.register_service(info, cooperating_responders=True)

    def stop(self) -> None:
        """Blocking: says goodbye and closes zeroconf. Run it in a thread."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            if self._browser is not None:
                self._browser.cancel()
            zc.unregister_all_services()
        except Exception as exc:
            log.debug("mDNS: goodbye failed: %s", exc)
        finally:
            zc.close()


def _txt(strings: list[bytes]) -> bytes:
    """Raw TXT rdata: one length-prefixed string each, so several `dnsaddr=` keys can coexist."""
    return b"".join(bytes([len(s)]) + s for s in strings if len(s) <= 255)


def _ip_of(addr: str) -> str | None:
    parts = addr.split("/")
    if len(parts) > 2 and parts[1] == "ip4":
        return parts[2]
    return None


def _first_tcp_port(addrs: Sequence[str]) -> int:
    for addr in addrs:
        parts = addr.split("/")
        if "tcp" in parts:
            i = parts.index("tcp")
            if i + 1 < len(parts) and parts[i + 1].isdigit():
                return int(parts[i + 1])
    return 0
