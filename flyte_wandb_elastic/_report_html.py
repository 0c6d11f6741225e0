"""The "Weights & Biases" report tab as HTML: a table of the job's runs, a chart per metric, the layout.

Pure: rows in, one self-contained HTML fragment out (inline CSS and SVG, nothing fetched). Bounded
for any job: the table shows `TABLE_ROWS` rows and folds the rest, at most `MAX_CHARTS` metrics
are charted with at most `MAX_LINES` lines each, and every curve arrives downsampled (see
`_stored_runs.Curve`).

Process: wherever the tab is built (rank 0's report thread, the benchmark, the tests).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

from ._values import nonfinite_name, short

TABLE_ROWS = 50
MAX_CHARTS = 12
MAX_LINES = 20
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 560, 200, 56, 12, 10, 24
# How a chart marks a non-finite value: its label, and whether it sits at the top (else the bottom).
_MARKS = {"NaN": ("NaN", True), "Infinity": ("+inf", True), "-Infinity": ("-inf", False)}

_STYLE = """<style>
.fwe { font-family: system-ui, sans-serif; font-size: 13px; color: #222; }
.fwe table { border-collapse: collapse; margin: 8px 0; }
.fwe th, .fwe td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
.fwe th { background: #f4f4f4; }
.fwe .fwe-running { color: #1f6feb; } .fwe .fwe-finished { color: #1a7f37; } .fwe .fwe-failed { color: #cf222e; }
.fwe .fwe-charts { display: flex; flex-wrap: wrap; gap: 12px; }
.fwe figure { margin: 0; } .fwe figcaption { font-weight: 600; margin: 4px 0; }
.fwe .fwe-legend span { display: inline-block; margin-right: 10px; }
.fwe .fwe-legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
.fwe pre { background: #f6f8fa; padding: 8px; overflow-x: auto; }
.fwe code { font-size: 12px; }
</style>"""


@dataclass
class Row:
    """One writer of the job: a run, or one writer of a shared run.

    Attributes:
        run_id: W&B run id.
        label: The shared-mode writer label ("" outside shared mode).
        ranks: The global ranks that write it.
        rows: History rows logged so far.
        metrics: The last value of each metric.
        state: `running`, `finished`, `failed (exit N)`, `not started` or `no end recorded`.
        link: The run's W&B page, for online runs.
        sync: The command that uploads it, for offline runs.
        curves: Each numeric metric's downsampled `(step, value)` points.
    """

    run_id: str
    label: str = ""
    ranks: list[int] = field(default_factory=list)
    rows: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    state: str = "running"
    link: str | None = None
    sync: str | None = None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.run_id} ({self.label})" if self.label else self.run_id


def render_tab(rows: list[Row], layout: str, status: str) -> str:
    """The tab's HTML: `status` (when, and whether the job still runs), the table, the charts, the layout."""
    e = html.escape
    parts = [_STYLE, '<div class="fwe">', f'<p class="fwe-status">{e(status)}</p>']
    parts.append(_table(rows[:TABLE_ROWS]))
    if len(rows) > TABLE_ROWS:
        folded = _table(rows[TABLE_ROWS:])
        parts.append(f"<details><summary>{len(rows) - TABLE_ROWS} more runs</summary>{folded}</details>")
    parts.append(_charts(rows))
    parts.append(f"<h4>Layout</h4><pre>{e(layout)}</pre></div>")
    return "\n".join(parts)


def _table(rows: list[Row]) -> str:
    e = html.escape
    columns = ("Run", "Label", "Ranks", "Steps", "Last metrics", "State", "W&amp;B")
    head = f"<tr>{''.join(f'<th>{c}</th>' for c in columns)}</tr>"
    body = []
    for row in rows:
        metrics = ", ".join(f"{k}={short(v)}" for k, v in sorted(row.metrics.items())) or "-"
        state_class = row.state.split()[0] if row.state.split()[0] in ("running", "finished", "failed") else "other"
        if row.link:
            where = f'<a href="{e(row.link, quote=True)}" target="_blank">open in W&amp;B</a>'
        elif row.sync:
            where = f"offline: <code>{e(row.sync)}</code>"
        else:
            where = "-"
        body.append(
            f'<tr class="fwe-run"><td>{e(row.run_id)}</td><td>{e(row.label or "-")}</td>'
            f"<td>{e(', '.join(map(str, row.ranks)) or '-')}</td><td>{row.rows}</td><td>{e(metrics)}</td>"
            f'<td class="fwe-{state_class}">{e(row.state)}</td><td>{where}</td></tr>'
        )
    return f'<table class="fwe-runs">{head}{"".join(body)}</table>'


def _charts(rows: list[Row]) -> str:
    metrics = sorted({m for row in rows for m in row.curves})
    if not metrics:
        return "<p>No metric logged yet.</p>"
    figures = [_chart(metric, [r for r in rows if r.curves.get(metric)]) for metric in metrics[:MAX_CHARTS]]
    more = f"<p>{len(metrics) - MAX_CHARTS} more metrics not charted.</p>" if len(metrics) > MAX_CHARTS else ""
    return f'<h4>Metrics</h4><div class="fwe-charts">{"".join(figures)}</div>{more}'


def _chart(metric: str, rows: list[Row]) -> str:
    """One metric's chart: a line per writer, broken at each non-finite value, which is marked
    (NaN, +inf, -inf) at its step. The axes span the finite values only."""
    e = html.escape
    shown = rows[:MAX_LINES]
    steps = [s for row in shown for s, _ in row.curves[metric]]
    finite = [v for row in shown for _, v in row.curves[metric] if math.isfinite(v)]
    x0, x1 = min(steps), max(steps)
    y0, y1 = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    width, height = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(step: int) -> str:
        return f"{_LEFT + (step - x0) / (x1 - x0) * width:.1f}"

    def y(value: float) -> str:
        return f"{_TOP + (y1 - value) / (y1 - y0) * height:.1f}"

    lines, marks = [], []
    for i, row in enumerate(shown):
        color = COLORS[i % len(COLORS)]
        segments: list[list[str]] = [[]]  # the finite stretches of this writer's curve
        for step, value in row.curves[metric]:
            kind = nonfinite_name(value)
            if kind is None:
                segments[-1].append(f"{x(step)},{y(value)}")
                continue
            if segments[-1]:
                segments.append([])
            label, at_top = _MARKS[kind]
            ty = _TOP + 9 + (i % 3) * 10 if at_top else _TOP + height - 3 - (i % 3) * 10
            marks.append(
                f'<g class="fwe-mark" data-value="{kind}"><title>{e(row.name)}: {e(metric)} = {kind} at step {step}'
                f'</title><line x1="{x(step)}" y1="{_TOP}" x2="{x(step)}" y2="{_TOP + height}" stroke="{color}" '
                f'stroke-dasharray="3,3"/><text x="{x(step)}" y="{ty}" text-anchor="middle" font-size="10" '
                f'fill="{color}">{label}</text></g>'
            )
        # "M a L b L c": one subpath per finite stretch; a lone point is drawn as a dot ("h0")
        path = " ".join(f"M{seg[0]} " + (f"L{' L'.join(seg[1:])}" if len(seg) > 1 else "h0") for seg in segments if seg)
        if path:
            lines.append(
                f'<path class="fwe-line" fill="none" stroke-width="2" stroke-linecap="round" stroke="{color}" '
                f'd="{path}"><title>{e(row.name)}</title></path>'
            )
    note = (
        ""
        if finite
        else f'<text x="{_LEFT + width / 2:.1f}" y="{_TOP + height / 2:.1f}" text-anchor="middle" font-size="12">'
        "no finite value: every value is NaN or infinite</text>"
    )
    top, bottom = (short(y1), short(y0)) if finite else ("", "")
    axes = (
        f'<line x1="{_LEFT}" y1="{_TOP + height}" x2="{_LEFT + width}" y2="{_TOP + height}" stroke="#999"/>'
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + height}" stroke="#999"/>'
        f'<text x="{_LEFT - 4}" y="{_TOP + 10}" text-anchor="end" font-size="11">{top}</text>'
        f'<text x="{_LEFT - 4}" y="{_TOP + height}" text-anchor="end" font-size="11">{bottom}</text>'
        f'<text x="{_LEFT}" y="{_H - 6}" font-size="11">step {x0}</text>'
        f'<text x="{_LEFT + width}" y="{_H - 6}" text-anchor="end" font-size="11">{x1}</text>'
    )
    legend = "".join(
        f'<span><i style="background:{COLORS[i % len(COLORS)]}"></i>{e(row.name)}</span>' for i, row in enumerate(shown)
    )
    more = f"<span>{len(rows) - len(shown)} more runs not drawn</span>" if len(rows) > len(shown) else ""
    return (
        f'<figure class="fwe-chart" data-metric="{e(metric, quote=True)}"><figcaption>{e(metric)}</figcaption>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}">'
        f'{axes}{note}{"".join(lines)}{"".join(marks)}</svg><div class="fwe-legend">{legend}{more}</div></figure>'
    )
