"""`rain-node`: the peer process's command line, logging and signal handling.

SIGINT or SIGTERM cancels the node's nursery; it says goodbye on mDNS and removes its node.json and
socket, within a few seconds. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from node.home import NODE_INFO_FILE, ensure_home, resolve_home
from rainnet.neighbourhood import DEFAULT_MAX_CONNECTIONS

DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4001"
LEND_MODES = ("idle", "always", "never")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rain-node", description="Run a rainnet peer: join the network, lend idle CPU."
    )
    p.add_argument("--home", help="state directory (default: $RAIN_HOME or the XDG data dir)")
    p.add_argument("--name", default="", help="this machine's name for others (default: hostname)")
    p.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help=f"address to listen on, repeatable (default {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a peer to join through, /ip4/.../tcp/.../p2p/<id> (repeatable)",
    )
    p.add_argument("--no-mdns", action="store_true", help="do not discover LAN peers by mDNS")
    p.add_argument("--no-mpi", action="store_true", help="take no ranks of MPI groups")
    p.add_argument(
        "--pool",
        metavar="NAME",
        help="join only the private pool NAME (its secret in this home: `rain pool join FILE`); "
        "default: the open network",
    )
    p.add_argument(
        "--relay",
        action="store_true",
        help="offer circuit relay v2 to peers behind NAT (needs a reachable --listen)",
    )
    p.add_argument(
        "--relay-via",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="this node is behind NAT: be reachable through this relay (repeatable)",
    )
    p.add_argument(
        "--lend",
        choices=LEND_MODES,
        default=None,
        help="when to run others' jobs: idle (default), always (a dedicated server), never",
    )
    p.add_argument(
        "--sandbox",
        choices=("auto", "native", "docker", "none"),
        default="auto",
        help="sandbox backend for others' jobs (default auto: every one that works here)",
    )
    p.add_argument("--heartbeat", type=float, default=2.0, help="seconds between liveness checks")
    p.add_argument(
        "--peer-timeout",
        type=float,
        default=10.0,
        help="seconds without an answer before a peer leaves",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="peers to keep connections to at most (default %(default)s; trimmed to 3/4 of it "
        "past it; at least 4): the neighbourhood heartbeats go to",
    )
    panel = p.add_mutually_exclusive_group()
    panel.add_argument(
        "--panel",
        type=int,
        metavar="PORT",
        help="serve the local panel on 127.0.0.1:PORT (0: any free port; default 4080, or a "
        "free port if that is taken); `rain panel` prints its URL",
    )
    panel.add_argument("--no-panel", action="store_true", help="serve no local panel")
    p.add_argument(
        "--front-panel",
        metavar="i2c:BUS:ADDR",
        help="mirror this node's lights on a hardware front panel: an MCP23017 GPIO expander "
        "at ADDR on /dev/i2c-BUS (e.g. i2c:1:0x20)",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("RAIN_LOG", "info"),
        help="debug, info, warning, error",
    )
    return p


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # py-libp2p and zeroconf log warnings in quantity for routine events (a peer went away, a
    # DHT query found nothing); ours say what matters.
    # Importing libp2p resets its logger (level WARNING, no propagation, no handler, so Python's
    # last-resort handler prints bare lines): configure it after that import.
    import libp2p  # noqa: F401

    debug = level.lower() == "debug"
    for name in LIBRARY_LOGGERS:
        lib_log = logging.getLogger(name)
        lib_log.setLevel(logging.DEBUG if debug else logging.CRITICAL)
        lib_log.propagate = True
        lib_log.handlers[:] = [logging.NullHandler()] if not debug else []
    if not debug:
        # Some py-libp2p modules set their own levels; filter at our handler too.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_libraries)


LIBRARY_LOGGERS = ("libp2p", "zeroconf", "multiaddr", "async_service")


def _quiet_libraries(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL or record.name.split(".")[0] not in LIBRARY_LOGGERS


def _running_pid(home: Path) -> int | None:
    """The pid of a live rain-node already using `home`, if any."""
    try:
        pid = int(json.loads((home / NODE_INFO_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    log = logging.getLogger("rainnet.node")
    try:
        home = ensure_home(resolve_home(args.home))
    except OSError as exc:
        print(f"rain-node: {exc}", file=sys.stderr)
        return 1
    other = _running_pid(home)
    if other is not None:
        print(f"rain-node: another rain-node (pid {other}) is using {home}", file=sys.stderr)
        return 1

    import trio

    from node.daemon import Node, NodeConfig
    from node.owner.config import ConfigError, load_policy_config
    from node.panel.front import FrontPanelSpec
    from node.panel.server import DEFAULT_PORT, PanelConfig
    from node.pools import load as load_pool
    from rainnet import host as rhost
    from rainnet import relay as rrelay
    from rainnet.neighbourhood import Limits
    from rainnet.network import NetworkConfig

    try:
        policy = load_policy_config(home, lend=args.lend)
    except ConfigError as exc:
        print(f"rain-node: {exc}", file=sys.stderr)
        return 2

    listen = tuple(args.listen or [DEFAULT_LISTEN])
    try:
        rhost.parse_multiaddrs(listen)
        for addr in args.bootstrap:
            rhost.bootstrap_info(addr)
        for addr in args.relay_via:
            rrelay.relay_info(addr)
        pool = load_pool(home, args.pool) if args.pool else None
        front = FrontPanelSpec.parse(args.front_panel) if args.front_panel else None
        Limits.of(args.max_connections)  # (ValueError: too few)
        if args.panel is not None and not 0 <= args.panel <= 65535:
            raise ValueError(f"--panel {args.panel}: a port is 0 to 65535")
    except ValueError as exc:  # (a PoolError too)
        print(f"rain-node: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"rain-node: cannot read the pool's secret: {exc}", file=sys.stderr)
        return 1
    try:
        rhost.check_ports_free(listen)
    except OSError as exc:
        print(f"rain-node: {exc.strerror}", file=sys.stderr)
        return 1

    network = NetworkConfig(
        listen=listen,
        bootstrap=tuple(args.bootstrap),
        mdns=not args.no_mdns,
        heartbeat_interval=args.heartbeat,
        peer_timeout=args.peer_timeout,
        max_connections=args.max_connections,
        relay=args.relay,
        relay_via=tuple(args.relay_via),
        pool=pool,
    )
    if pool is not None:
        log.info("in private pool %r (fingerprint %s)", pool.name, pool.fingerprint())
    panel = PanelConfig(
        port=None if args.no_panel else DEFAULT_PORT if args.panel is None else args.panel,
        port_given=args.panel is not None,
        front_panel=front,
    )
    config = NodeConfig(
        home=home,
        network=network,
        sandbox=args.sandbox,
        policy=policy,
        panel=panel,
        name=args.name,
        mpi=not args.no_mpi,
    )

    async def run() -> None:
        node = Node(config)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.run)

                async for signum in signals:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    # A second signal while shutting down leaves at once.
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    break

    try:
        trio.run(run)
    except BaseExceptionGroup as group:
        # A port in use or an unwritable home arrives wrapped by trio's nurseries: say it plainly.
        os_errors = group.subgroup(lambda exc: isinstance(exc, OSError))
        if os_errors is None:
            raise
        print(f"rain-node: {_first_leaf(os_errors)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"rain-node: {exc}", file=sys.stderr)
        return 1
    return 0


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


if __name__ == "__main__":
    sys.exit(main())
