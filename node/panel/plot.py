"""The contribution plot, drawn on the server as SVG: CPU-seconds given and used, and the credit
balance, over the recent exchanges.

No plotting library ships to the page: the series are short (the exchanges the snapshot carries)
and three step lines with their axes are a few kilobytes of SVG, made only when an exchange
happens (the x axis ends at the last exchange, not now, so the plot does not change each second).
Everything written into the SVG is a number or a time we formatted: it is safe to insert.
1 credit = 1 CPU-second, so the three lines share one axis.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from node.snapshot import ExchangeRow

WIDTH, HEIGHT = 520, 170
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 22, 24
COLORS = {"given": "#2e9d5b", "used": "#d9822b", "balance": "#2f6fd0"}


@dataclass(frozen=True)
class Point:
    time: float
    given: float  # CPU-seconds given to others so far (credit earned)
    used: float  # CPU-seconds others gave us (credit spent)

    @property
    def balance(self) -> float:
        return self.given - self.used


def credit_series(
    exchanges: Sequence[ExchangeRow], earned: float, spent: float
) -> tuple[Point, ...]:
    """Totals after each exchange, oldest first, from the newest-first `exchanges` and the totals
    now; the first point is the totals before the oldest of them. Pending ones do not count
    (credit is earned once the requester agreed)."""
    counted = [x for x in exchanges if x.role != "pending"]
    if not counted:
        return ()
    points = []
    given, used = earned, spent
    for x in counted:  # newest first: walk back in time
        points.append(Point(x.time, given, used))
        if x.role == "earned":
            given -= x.amount
        else:
            used += x.amount  # (spent amounts are negative)
    points.append(Point(counted[-1].time, given, used))
    return tuple(reversed(points))


def credit_svg(points: Sequence[Point]) -> str:
    if not points:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'class="plot" role="img"><text x="{WIDTH / 2}" y="{HEIGHT / 2}" '
            'text-anchor="middle" fill="#888" font-size="13">no exchanges yet</text></svg>'
        )
    t0, t1 = points[0].time, points[-1].time
    if t1 - t0 < 1:
        t0 -= 30
        t1 += 30
    values = [v for p in points for v in (p.given, p.used, p.balance)]
    low, high = min(0.0, *values), max(1.0, *values)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return TOP + (high - v) / (high - low) * plot_h

    def steps(values: list[float]) -> str:
        coords = [(x(points[0].time), y(values[0]))]
        for p, before, v in zip(points[1:], values, values[1:], strict=False):
            coords += [(x(p.time), y(before)), (x(p.time), y(v))]
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in coords)

    last = points[-1]
    lines = {
        "given": [p.given for p in points],
        "used": [p.used for p in points],
        "balance": [p.balance for p in points],
    }
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="plot" '
        'role="img" font-size="11" font-family="sans-serif">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ddd"/>',
        f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#bbb" '
        'stroke-dasharray="3 3"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" fill="#666">{_num(high)}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" fill="#666">{_num(low)}</text>',
        f'<text x="{LEFT}" y="{HEIGHT - 6}" fill="#666">{_clock(t0)}</text>',
        f'<text x="{LEFT + plot_w}" y="{HEIGHT - 6}" text-anchor="end" fill="#666">'
        f"{_clock(t1)}</text>",
    ]
    now = {"given": last.given, "used": last.used, "balance": last.balance}
    for i, (name, series) in enumerate(lines.items()):
        color = COLORS[name]
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{steps(series)}"'
            f' data-series="{name}"/>'
        )
        parts.append(
            f'<text x="{LEFT + 4 + i * 150}" y="{TOP - 8}" fill="{color}">'
            f"{name} {_num(now[name])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))
