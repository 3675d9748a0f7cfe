"""`rain credit`, `rain credit history` and `rain credit verify [PEER]`, run as the real CLI in a
subprocess against real homes; tampering is done in SQLite directly."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.block import JobLimits
from ledger.service import Ledger
from ledger.store import LEDGER_FILE
from rainnet.identity import load_or_create

REPO = Path(__file__).resolve().parent.parent.parent
# The installed `rain` console script of this venv: the real CLI, as a user runs it.
RAIN = Path(sys.executable).parent / "rain"
LIMITS = JobLimits(cpus_milli=2000, gpus=0, wall_ms=600_000)


def rain(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAIN), "--home", str(home), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """Two homes; A worked 3 times for B, B twice for A, and B fetched A's chain."""
    ha, hb = tmp_path / "a", tmp_path / "b"
    ia, ib = load_or_create(ha), load_or_create(hb)
    with Ledger.open(ha, ia) as a, Ledger.open(hb, ib) as b:
        for i in range(5):
            worker, requester = (a, b) if i % 2 == 0 else (b, a)
            p = worker.propose(
                requester=requester.public_key,
                job_id=f"job-{i}",
                cpu_ms=1000 * (i + 1),
                gpu_ms=0,
                limits=LIMITS,
                result_hash=bytes(32),
            )
            worker.accept_agreement(requester.agree(p, LIMITS))
        b.ingest_page(a.serve_chain(b.chain_request(a.public_key)))
    return ha, hb, ia.peer_id, ib.peer_id


def tamper(home: Path, sql: str, *params: object) -> None:
    db = sqlite3.connect(home / LEDGER_FILE)
    with db:
        changed = db.execute(sql, params).rowcount
    db.close()
    assert changed == 1


def owner_clause() -> str:
    return "public_key = (SELECT value FROM meta WHERE key = 'owner')"


def test_balance_json_and_history(homes: tuple[Path, Path, str, str]) -> None:
    ha, _, _, peer_b = homes
    out = rain(ha, "credit", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    # A earned jobs 0, 2, 4 (1+3+5 CPU-s) and spent jobs 1, 3 (2+4).
    assert (data["earned"], data["spent"], data["balance"]) == (9.0, 6.0, 3.0)
    assert data["limit"] == -3600.0
    text = rain(ha, "credit")
    assert text.returncode == 0 and "3 credits" in text.stdout and "-3600" in text.stdout
    history = rain(ha, "credit", "history")
    lines = history.stdout.strip().splitlines()
    assert len(lines) == 5
    assert lines[0].endswith("job-4  +5") and peer_b in lines[0]
    assert lines[1].endswith("job-3  -4")
    assert len(json.loads(rain(ha, "credit", "history", "-n", "2", "--json").stdout)) == 2


def test_verify_passes_on_an_intact_ledger(homes: tuple[Path, Path, str, str]) -> None:
    ha, hb, peer_a, _ = homes
    out = rain(ha, "credit", "verify")
    assert out.returncode == 0, out.stderr
    assert "ok: 5 blocks" in out.stdout
    peer = rain(hb, "credit", "verify", peer_a)
    assert peer.returncode == 0, peer.stderr
    assert f"5 blocks of {peer_a}" in peer.stdout


def test_verify_names_a_block_whose_amount_was_altered(homes: tuple[Path, Path, str, str]) -> None:
    ha, _, peer_a, _ = homes
    tamper(ha, f"UPDATE blocks SET cpu_ms = cpu_ms * 10 WHERE {owner_clause()} AND sequence = 3")
    out = rain(ha, "credit", "verify")
    assert out.returncode != 0
    assert f"block #3 of {peer_a}" in out.stderr
    data = json.loads(rain(ha, "credit", "verify", "--json").stdout)
    assert data["ok"] is False and data["first_bad_block"] == 3


def test_verify_names_the_head_when_it_was_altered(homes: tuple[Path, Path, str, str]) -> None:
    ha, _, peer_a, _ = homes
    tamper(ha, f"UPDATE blocks SET time_ms = time_ms + 1 WHERE {owner_clause()} AND sequence = 5")
    out = rain(ha, "credit", "verify")
    assert out.returncode != 0 and f"block #5 of {peer_a}" in out.stderr


def test_verify_names_the_block_whose_countersignature_was_altered(
    homes: tuple[Path, Path, str, str],
) -> None:
    """B's agreement to A's proposal #1, inflated in A's database: A's #1 is named."""
    ha, _, peer_a, _ = homes
    tamper(
        ha,
        f"UPDATE blocks SET cpu_ms = 999999 WHERE NOT {owner_clause()} AND link_sequence = 1",
    )
    out = rain(ha, "credit", "verify")
    assert out.returncode != 0 and f"block #1 of {peer_a}" in out.stderr


def test_verify_names_a_deleted_block(homes: tuple[Path, Path, str, str]) -> None:
    ha, _, peer_a, _ = homes
    tamper(ha, f"DELETE FROM blocks WHERE {owner_clause()} AND sequence = 2")
    out = rain(ha, "credit", "verify")
    assert out.returncode != 0 and f"block #2 of {peer_a}" in out.stderr


def test_verify_peer_names_an_altered_block_of_its_copy(
    homes: tuple[Path, Path, str, str],
) -> None:
    _, hb, peer_a, _ = homes
    tamper(
        hb,
        f"UPDATE blocks SET job_id = 'other' WHERE NOT {owner_clause()} AND sequence = 4 "
        "AND public_key = (SELECT public_key FROM chains)",
    )
    out = rain(hb, "credit", "verify", peer_a)
    assert out.returncode != 0 and f"block #4 of {peer_a}" in out.stderr


def test_unknown_peer_and_bad_peer_id_are_one_line_errors(
    homes: tuple[Path, Path, str, str], tmp_path: Path
) -> None:
    ha, _, _, peer_b = homes
    stranger = load_or_create(tmp_path / "stranger").peer_id
    out = rain(ha, "credit", "verify", stranger)
    assert out.returncode == 1 and "hold no copy of" in out.stderr
    # A holds blocks of B from their exchanges, but never fetched B's chain: that is no copy
    # (it said "ok: 0 blocks verified, balance 0").
    out = rain(ha, "credit", "verify", peer_b)
    assert out.returncode == 1 and f"hold no copy of {peer_b}'s chain" in out.stderr
    out = rain(ha, "credit", "verify", "not-a-peer")
    assert out.returncode == 1 and out.stderr.startswith("rain: ")


def test_a_new_identity_reads_as_zero_and_nothing_is_created(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    data = json.loads(rain(tmp_path, "credit", "--json").stdout)
    assert (data["balance"], data["earned"], data["spent"], data["limit"]) == (0, 0, 0, -3600)
    assert rain(tmp_path, "credit", "verify").returncode == 0
    assert "no exchanges yet" in rain(tmp_path, "credit", "history").stdout
    assert not (tmp_path / LEDGER_FILE).exists()


def test_no_identity_is_a_one_line_error(tmp_path: Path) -> None:
    out = rain(tmp_path, "credit")
    assert out.returncode == 1 and "no identity" in out.stderr


def test_credit_commands_import_neither_libp2p_nor_trio() -> None:
    """`rain credit` must start fast: the ledger is plain Python over SQLite."""
    code = (
        "import sys, node.cli.credit, ledger.service, ledger.messages; "
        "bad = [m for m in ('libp2p', 'trio') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
