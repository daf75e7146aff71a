"""Small server-rendered SVG charts: no script, no external asset, the same markup in the live console and the static report."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np
from markupsafe import Markup

COLOURS = ["#2f6fb0", "#d9822b", "#3a9a5b", "#b03a48", "#7b5ea7", "#8a7a3a"]


def _num(v: float) -> str:
    if abs(v) >= 1 or v == 0:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return np.format_float_positional(v, precision=3, fractional=False, trim="-")


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(v))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= v:
            return step * magnitude
    return 10 * magnitude


def _chart_start(title: str, width: int, height: int, left: int, names: Sequence[str]) -> list[str]:
    """An SVG chart's opening tag, its title, and the legend: one colour swatch per series, from `left`."""
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        f"<title>{escape(title)}</title>",
    ]
    for i, name in enumerate(names):
        parts.append(
            f'<rect x="{left + i * 110}" y="4" width="10" height="10" fill="{COLOURS[i % len(COLOURS)]}"/>'
            f'<text x="{left + i * 110 + 14}" y="13" class="legend">{escape(name)}</text>'
        )
    return parts


def hbars(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], unit: str = "", width: int = 760
) -> Markup:
    """Horizontal grouped bars: one group per label, one bar per series."""
    if not labels:
        return Markup(f'<p class="empty">{escape(title)}: no data in this range.</p>')
    bar_h, gap, left, right = 12, 10, 300, 90
    group_h = bar_h * len(series) + gap
    top = 22
    height = top + group_h * len(labels) + 24
    peak = _nice_max(max((v or 0) for _, values in series for v in values))
    plot_w = width - left - right
    parts = _chart_start(title, width, height, left, [name for name, _ in series])
    for g, label in enumerate(labels):
        y0 = top + g * group_h
        parts.append(f'<text x="{left - 6}" y="{y0 + group_h / 2}" text-anchor="end" class="axis">{escape(label)}</text>')
        for i, (_, values) in enumerate(series):
            v = values[g]
            if v is None:
                continue
            w = plot_w * v / peak
            y = y0 + i * bar_h
            parts.append(
                f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{COLOURS[i % len(COLOURS)]}"/>'
                f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}" class="value">{_num(v)}{escape(unit)}</text>'
            )
    axis_y = top + group_h * len(labels)
    parts.append(
        f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" class="grid"/>'
        f'<text x="{left}" y="{axis_y + 14}" class="axis">0</text>'
        f'<text x="{left + plot_w}" y="{axis_y + 14}" text-anchor="end" class="axis">{_num(peak)}{escape(unit)}</text></svg>'
    )
    return Markup("".join(parts))


def columns(
    title: str, labels: Sequence[str], stacks: Sequence[tuple[str, Sequence[float]]], width: int = 900, height: int = 220
) -> Markup:
    """Stacked columns over time (e.g. studies per minute: succeeded, failed); labels are the x values in order."""
    if not labels:
        return Markup(f'<p class="empty">{escape(title)}: no data in this range.</p>')
    left, right, top, bottom = 40, 10, 20, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for _, values in stacks) for i in range(len(labels))]
    peak = _nice_max(max(totals))
    step = plot_w / len(labels)
    bar_w = min(40.0, max(1.0, step * 0.8))
    parts = _chart_start(title, width, height, left, [name for name, _ in stacks])
    for x, label in enumerate(labels):
        base = 0.0
        for i, (name, values) in enumerate(stacks):
            v = values[x]
            if v:
                h = plot_h * v / peak
                y = top + plot_h - plot_h * (base + v) / peak
                parts.append(
                    f'<rect x="{left + x * step:.2f}" y="{y:.2f}" width="{bar_w:.2f}" height="{h:.2f}" fill="{COLOURS[i % len(COLOURS)]}">'
                    f"<title>{escape(label)}: {escape(name)} {_num(v)}</title></rect>"
                )
            base += v
    axis_y = top + plot_h
    parts.append(
        f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" class="grid"/>'
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" class="axis">{_num(peak)}</text>'
        f'<text x="{left - 4}" y="{axis_y}" text-anchor="end" class="axis">0</text>'
        f'<text x="{left}" y="{axis_y + 16}" class="axis">{escape(labels[0])}</text>'
        f'<text x="{width - right}" y="{axis_y + 16}" text-anchor="end" class="axis">{escape(labels[-1])}</text></svg>'
    )
    return Markup("".join(parts))


def timeline(document: dict, width: int = 900) -> Markup:
    """A trace's task attempts as a waterfall: one row per attempt, so a retry shows as a second row of the same task."""
    subsegments = document.get("subsegments", [])
    t0 = document["start_time"]
    total = max(document["end_time"] - t0, 1e-9)
    left, right, row_h, top = 170, 90, 20, 8
    plot_w = width - left - right
    height = top + row_h * max(1, len(subsegments)) + 26
    parts = [
        f'<svg class="chart timeline" role="img" aria-label="trace timeline" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
    ]
    for i, s in enumerate(subsegments):
        x = left + plot_w * (s["start_time"] - t0) / total
        w = max(1.5, plot_w * (s["end_time"] - s["start_time"]) / total)
        y = top + i * row_h
        failed = bool(s.get("error"))
        status = s["cause"]["exceptions"][0]["type"] if failed else "ok"
        ms = (s["end_time"] - s["start_time"]) * 1000
        parts.append(
            f'<g class="attempt{" failed" if failed else ""}" data-task="{escape(s["name"])}" data-status="{escape(str(status))}">'
            f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" class="axis">{escape(s["name"])}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{"#b03a48" if failed else "#2f6fb0"}"/>'
            f'<text x="{min(x + w + 4, width - right + 4):.1f}" y="{y + 14}" class="value">{_num(ms)} ms{"" if not failed else " " + escape(str(status))}</text></g>'
        )
    axis_y = top + row_h * max(1, len(subsegments))
    parts.append(
        f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" class="grid"/>'
        f'<text x="{left}" y="{axis_y + 16}" class="axis">0 ms</text>'
        f'<text x="{left + plot_w}" y="{axis_y + 16}" text-anchor="end" class="axis">{_num(total * 1000)} ms</text></svg>'
    )
    return Markup("".join(parts))
