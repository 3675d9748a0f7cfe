"""`rain top`'s frame, drawn from a view (the control API's answer) into a plain console."""

from __future__ import annotations

import io

from rich.console import Console

from node.cli import top
from node.panel import view as views
from node.snapshot import ExchangeRow, GuestRow
from tests.test_panel_view import ME, job, peer, peer_id, snapshot


def _draw(data: dict[str, object], **kwargs: object) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None, force_terminal=False)
    console.print(top.render(data, **kwargs))  # type: ignore[arg-type]
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def _view() -> dict[str, object]:
    tasks = tuple(
        job(f"t{i}", "done" if i < 3 else "running", array_task=i, ended=5.0 if i < 3 else None)
        for i in range(4)
    )
    snap = snapshot(
        peers=(peer(1, state="busy", user1="on", load=8),),
        left=(peer(2),),
        jobs=tasks,
        guests=(GuestRow("g1", peer_id(1), 1.0, 1 << 30, 5.0, True),),
        exchanges=(ExchangeRow(3, 900.0, peer_id(1), "abcdef12", -2.5, "spent"),),
    )
    return views.as_json(views.build(snap))


def test_a_frame_shows_the_nodes_jobs_and_credit() -> None:
    out = _draw(_view())
    assert ME in out and "2 up, 1 left" in out and "credit 3.00" in out
    lines = out.splitlines()
    me_row = next(line for line in lines if "* …" + ME[-8:] in line)
    busy_row = next(line for line in lines if "…" + peer_id(1)[-8:] in line and "busy" in line)
    gone_row = next(line for line in lines if "…" + peer_id(2)[-8:] in line)
    assert "idle" in me_row and "left" in gone_row and "▮" * 8 in busy_row
    assert "[4] sh -c work" in out and "3/4" in out
    assert "running here for others" in out and "-2.50" in out and "MPI groups: none" in out


def test_load_bars_instead_of_lights() -> None:
    out = _draw(_view(), load_bars=True)
    assert "up net tmp u1 u2" not in out and "load" in out


def test_a_short_terminal_shows_the_first_nodes() -> None:
    many = views.as_json(views.build(snapshot(peers=tuple(peer(i) for i in range(1, 30)))))
    out = _draw(many, height=20)
    assert "nodes (" in out and " of 30)" in out and ME in out


def test_a_silent_node() -> None:
    assert "does not answer" in _draw({})
