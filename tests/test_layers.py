"""The layer rule, enforced (as trio's test keeps its public API off `_core`): which package may
import which. Every import in the source tree counts, at module level or inside a function.

    sandbox          imports nothing of ours: it runs a stranger's job, and knows no network
    rainnet          the network: imports only rainnet
    ledger           credit: imports only ledger and rainnet.identity (peer ids and signatures)
    sim              the simulator: the network's and the jobs' sans-io cores, nothing else
    node             above all three; within it:
      node.jobs.core       the job protocol's rules, sans-io: no trio, no libp2p, no I/O
                           (ledger and rainnet messages, sandbox specs, node.faults only)
      node.jobs.requester  never imports node.jobs.worker, nor the worker the requester:
      node.jobs.worker     what they share is in node.jobs.core
      node.jobs            never imports node.panel (the panel reads the jobs, not the reverse)
      node.cli             the `rain` commands: never the daemon, the job ends, libp2p or the
                           network (a command costs Python's start-up, not libp2p's second)
      node.owner           owner first: the sandbox, units and config only, none of the jobs
      node.snapshot        plain values: imports nothing of ours
      node.panel           the local panel: reads node.snapshot (and the records' vocabulary);
                           its actions go through the control operations handed to it, never
                           to the job ends, the daemon, the ledger or the sandbox directly
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rainnet", "ledger", "sandbox", "node", "sim")

# (importer prefix, allowed prefixes or None, forbidden prefixes): first match wins.
RULES: list[tuple[str, tuple[str, ...] | None, tuple[str, ...]]] = [
    ("sandbox", ("sandbox",), ()),
    ("rainnet", ("rainnet",), ()),
    ("sim", ("sim", "rainnet", "node.jobs.core"), ()),
    ("ledger", ("ledger", "rainnet.identity"), ()),
    (
        "node.jobs.core",
        ("node.jobs.core", "node.faults", "node.units", "ledger", "rainnet", "sandbox"),
        ("trio", "libp2p", "rainnet.host", "rainnet.network", "rainnet.streams"),
    ),
    ("node.jobs.requester", None, ("node.jobs.worker", "node.panel")),
    ("node.jobs.worker", None, ("node.jobs.requester", "node.panel")),
    ("node.jobs", None, ("node.panel",)),
    (  # `rain jobs` reads the requester's store while the node is down, and nothing else of it
        "node.cli.jobs",
        None,
        (
            "libp2p",
            "node.daemon",
            "node.jobs.requester.requester",
            "node.jobs.requester.settle",
            "node.jobs.requester.sessions",
            "node.jobs.requester.offers",
            "node.jobs.worker",
            "rainnet.host",
            "rainnet.network",
        ),
    ),
    (
        "node.cli",
        None,
        (
            "libp2p",
            "node.daemon",
            "node.jobs.requester",
            "node.jobs.worker",
            "rainnet.host",
            "rainnet.network",
        ),
    ),
    ("node.owner", ("node.owner", "node.units", "sandbox"), ()),
    ("node.snapshot", (), ()),
    ("node.panel", ("node.panel", "node.snapshot", "rainnet.records"), ()),
]


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _imports(path: Path, module: str) -> set[str]:
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _ours(name: str) -> bool:
    return any(_under(name, p) for p in PACKAGES)


def violations(module: str, imports: set[str]) -> list[str]:
    for prefix, allowed, forbidden in RULES:
        if not _under(module, prefix):
            continue
        bad = [name for name in imports if any(_under(name, f) for f in forbidden)]
        if allowed is not None:
            bad += [
                name
                for name in imports
                if _ours(name) and not any(_under(name, a) for a in allowed)
            ]
        return sorted(set(bad))
    return []


def test_every_package_keeps_to_its_layer() -> None:
    broken = {}
    for module, path in _modules():
        bad = violations(module, _imports(path, module))
        if bad:
            broken[module] = bad
    assert broken == {}, f"imports across the layers: {broken}"


@pytest.mark.parametrize(
    ("module", "imports"),
    [
        ("rainnet.host", {"node.daemon"}),
        ("rainnet.wire", {"ledger.messages"}),
        ("sandbox.native", {"rainnet.identity"}),
        ("ledger.service", {"rainnet.host"}),
        ("node.jobs.core.conversation", {"trio"}),
        ("node.jobs.requester.settle", {"node.jobs.worker.claims"}),
        ("node.cli.status", {"libp2p.peer.id"}),
        ("node.owner.policy", {"node.jobs.core.scheduler"}),
        ("node.panel.view", {"node.jobs.requester.record"}),
        ("node.panel.app", {"node.daemon"}),
        ("node.jobs.worker.worker", {"node.panel.lights"}),
    ],
)
def test_the_rule_catches_a_layer_broken(module: str, imports: set[str]) -> None:
    assert violations(module, imports) == sorted(imports)
