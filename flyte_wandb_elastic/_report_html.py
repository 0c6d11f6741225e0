"""The "Weights & Biases" report tab as HTML: a table of the job's runs, a chart per metric, the layout.

Pure: rows in, one self-contained HTML fragment out (inline CSS and SVG, nothing fetched). Bounded
for any job: the table lists at most `MAX_TABLE_ROWS` rows, shows `TABLE_ROWS` of them and folds
the rest, at most `MAX_CHARTS` metrics are charted, and every curve arrives downsampled (see
`_stored_runs.Curve`). A metric with at most `MAX_LINES` writers (or the task's
`FLYTE_WANDB_ELASTIC_REPORT_LINES`) gets a line per writer; one with more gets the spread across
writers (min, median, max per bin of steps) and the lines of the few writers that stand out, named
with why (see `_spread`); the table then lists the writers that stand out first.

Process: wherever the tab is built (rank 0's report thread, the benchmark, the tests).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _spread
from ._options import invalid
from ._values import nonfinite_name, short

TABLE_ROWS = 50
# Rows listed at all (shown and folded), and the most characters they take once past
# `TABLE_ROWS`: the rest are counted, so that the page stays under 1 MB at 8,192 writers. The
# writers that stand out are listed first.
MAX_TABLE_ROWS = 1000
TABLE_CHARS = 400_000
MAX_CHARTS = 12
MAX_LINES = 20
# Where a task sets its own line count (its `env_vars`): a chart of more writers shows their spread.
LINES_ENV = "FLYTE_WANDB_ELASTIC_REPORT_LINES"
_BAND, _MEDIAN, _COUNT = "#dcdcdc", "#444444", "#cf222e"
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
.fwe .fwe-why { color: #9a6700; font-size: 12px; }
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
        exit_code: The exit code its newest start recorded (`None`: none yet).
        last_time: When its newest row was logged (W&B's `_timestamp`, seconds since the epoch).
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
    exit_code: int | None = None
    last_time: float | None = None

    @property
    def name(self) -> str:
        return f"{self.run_id} ({self.label})" if self.label else self.run_id


def chart_lines(environ: Mapping[str, str]) -> int:
    """The most writers a chart draws as lines: `FLYTE_WANDB_ELASTIC_REPORT_LINES` where set, else `MAX_LINES`.

    Raises:
        ValueError: It is set to anything but an int >= 1 (named, with its value).
    """
    value = environ.get(LINES_ENV)
    if value is None:
        return MAX_LINES
    lines = int(value) if value.strip().isdigit() else 0
    if lines < 1:
        allowed = f"an int >= 1, the most writers a report chart draws as lines (default {MAX_LINES})"
        raise invalid(f"env_vars[{LINES_ENV!r}]", value, allowed)
    return lines


def render_tab(
    rows: list[Row], layout: str, status: str, interval_s: float | None = None, lines: int = MAX_LINES
) -> str:
    """The tab's HTML: `status` (when, and whether the job still runs), the table, the charts, the layout.

    Args:
        rows: Every writer of the job.
        layout: The planner's picture of who writes what.
        status: The line above the table.
        interval_s: The report's interval, by which a stalled writer is told (`None`: none is).
        lines: The most writers a chart draws as lines (see `chart_lines`).
    """
    e = html.escape
    metrics = sorted({m for row in rows for m in row.curves})
    scale = _Scale(rows, metrics[:MAX_CHARTS], interval_s, lines)
    listed = _table_rows(rows, scale.order, scale.why)
    parts = [_STYLE, '<div class="fwe">', f'<p class="fwe-status">{e(status)}</p>']
    parts.append(_table(listed[:TABLE_ROWS]))
    if len(listed) > TABLE_ROWS:
        folded = _table(listed[TABLE_ROWS:])
        parts.append(f"<details><summary>{len(listed) - TABLE_ROWS} more runs</summary>{folded}</details>")
    if len(rows) > len(listed):
        parts.append(
            f'<p class="fwe-unlisted">{len(rows) - len(listed)} more runs not listed: '
            "<code>python -m flyte_wandb_elastic inspect</code> on the run files lists every one.</p>"
        )
    parts.append(_charts(rows, metrics, scale))
    parts.append(f"<h4>Layout</h4><pre>{e(layout)}</pre></div>")
    return "\n".join(parts)


class _Scale:
    """For each charted metric with more than `lines` writers: its band and the writers drawn
    (indices into `rows`) with why; why each writer stands out (for the table, whose state column
    already says which failed); and the table's order: failed, stalled, then outlying writers first."""

    def __init__(self, rows: list[Row], charted: list[str], interval_s: float | None, lines: int) -> None:
        self.bands: dict[str, _spread.Band] = {}
        self.drawn: dict[str, list[tuple[int, str]]] = {}
        self.nonfinite: dict[str, int] = {}  # writers with a non-finite value, per metric
        self.why: dict[int, list[str]] = {}
        self.order = list(range(len(rows)))
        scaled = [m for m in charted if sum(1 for r in rows if r.curves.get(m)) > lines]
        if not scaled:
            return
        failed = _spread.failed([r.exit_code for r in rows])
        times = [r.last_time for r in rows]
        stalled = _spread.stalled(times, [r.exit_code is not None for r in rows], interval_s) if interval_s else []
        newest = max((t for t in times if t is not None), default=0.0)
        writer_wide: dict[int, list[str]] = {i: [rows[i].state] for i in failed}
        for i in stalled:
            why = f"stalled: last row {newest - (rows[i].last_time or 0.0):.0f} s before the newest"
            self.why[i] = [why]
            writer_wide.setdefault(i, []).append(why)
        outlying: list[int] = []
        for metric in scaled:
            curves = [r.curves.get(metric) for r in rows]
            self.bands[metric] = _spread.band(curves)
            diverged = self.bands[metric].diverged
            furthest = _spread.furthest(curves)
            self.nonfinite[metric] = len(diverged)
            reasons: dict[int, list[str]] = {}
            for i, step, value in diverged:
                reasons.setdefault(i, []).append(f"{nonfinite_name(value)} at step {step}")
            for i, last in furthest:
                reasons.setdefault(i, []).append(f"last value {short(last)}, furthest from the median")
            groups = [
                [i for i in failed if curves[i]],
                [i for i, _, _ in diverged],
                [i for i in stalled if curves[i]],
                [i for i, _ in furthest],
            ]
            shown = _spread.drawn(groups, min(lines, _spread.STANDOUT_LINES))
            self.drawn[metric] = [(i, "; ".join([*writer_wide.get(i, []), *reasons.get(i, [])])) for i in shown]
            for i, its in reasons.items():
                self.why.setdefault(i, []).append(f"{metric}: {', '.join(its)}")
            outlying += groups[1] + groups[3]
        self.order = _spread.first_ranked(len(rows), [failed, stalled, outlying])


def _table(body: list[str]) -> str:
    columns = ("Run", "Label", "Ranks", "Steps", "Last metrics", "State", "W&amp;B")
    head = f"<tr>{''.join(f'<th>{c}</th>' for c in columns)}</tr>"
    return f'<table class="fwe-runs">{head}{"".join(body)}</table>'


def _table_rows(rows: list[Row], order: list[int], why: dict[int, list[str]]) -> list[str]:
    """The table's rows in `order`, as many as `MAX_TABLE_ROWS` and `TABLE_CHARS` allow."""
    e = html.escape
    body: list[str] = []
    size = 0
    for i in order[:MAX_TABLE_ROWS]:
        row = rows[i]
        metrics = ", ".join(f"{k}={short(v)}" for k, v in sorted(row.metrics.items())) or "-"
        state_class = row.state.split()[0] if row.state.split()[0] in ("running", "finished", "failed") else "other"
        if row.link:
            where = f'<a href="{e(row.link, quote=True)}" target="_blank">open in W&amp;B</a>'
        elif row.sync:
            where = f"offline: <code>{e(row.sync)}</code>"
        else:
            where = "-"
        html_row = (
            f'<tr class="fwe-run"><td>{e(row.run_id)}</td><td>{e(row.label or "-")}</td>'
            f"<td>{e(', '.join(map(str, row.ranks)) or '-')}</td><td>{row.rows}</td><td>{e(metrics)}</td>"
            f'<td class="fwe-{state_class}">{e(row.state)}{_why(why.get(i))}</td><td>{where}</td></tr>'
        )
        size += len(html_row)
        if size > TABLE_CHARS and len(body) >= TABLE_ROWS:
            break
        body.append(html_row)
    return body


def _why(reasons: list[str] | None) -> str:
    """Why a writer stands out, in its table row (nothing for one that does not)."""
    return f'<div class="fwe-why">{html.escape("; ".join(reasons))}</div>' if reasons else ""


def _charts(rows: list[Row], metrics: list[str], scale: _Scale) -> str:
    if not metrics:
        return "<p>No metric logged yet.</p>"
    figures = [
        _spread_chart(metric, rows, scale)
        if metric in scale.bands
        else _chart(metric, [r for r in rows if r.curves.get(metric)])
        for metric in metrics[:MAX_CHARTS]
    ]
    more = f"<p>{len(metrics) - MAX_CHARTS} more metrics not charted.</p>" if len(metrics) > MAX_CHARTS else ""
    return f'<h4>Metrics</h4><div class="fwe-charts">{"".join(figures)}</div>{more}'


class _Frame:
    """A chart's axes: steps `x0`-`x1` across, finite values `y0`-`y1` up (empty: no finite value)."""

    def __init__(self, steps: list[int], finite: list[float]) -> None:
        self.x0, self.x1 = min(steps), max(steps)
        self.finite = bool(finite)
        self.y0, self.y1 = (min(finite), max(finite)) if finite else (0.0, 1.0)
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y0, self.y1 = self.y0 - 1, self.y1 + 1
        self.width, self.height = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(self, step: float) -> str:
        return f"{_LEFT + (step - self.x0) / (self.x1 - self.x0) * self.width:.1f}"

    def y(self, value: float) -> str:
        return f"{_TOP + (self.y1 - value) / (self.y1 - self.y0) * self.height:.1f}"

    def axes(self) -> str:
        width, height = self.width, self.height
        note = (
            ""
            if self.finite
            else f'<text x="{_LEFT + width / 2:.1f}" y="{_TOP + height / 2:.1f}" text-anchor="middle" font-size="12">'
            "no finite value: every value is NaN or infinite</text>"
        )
        top, bottom = (short(self.y1), short(self.y0)) if self.finite else ("", "")
        return (
            f'<line x1="{_LEFT}" y1="{_TOP + height}" x2="{_LEFT + width}" y2="{_TOP + height}" stroke="#999"/>'
            f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + height}" stroke="#999"/>'
            f'<text x="{_LEFT - 4}" y="{_TOP + 10}" text-anchor="end" font-size="11">{top}</text>'
            f'<text x="{_LEFT - 4}" y="{_TOP + height}" text-anchor="end" font-size="11">{bottom}</text>'
            f'<text x="{_LEFT}" y="{_H - 6}" font-size="11">step {self.x0}</text>'
            f'<text x="{_LEFT + width}" y="{_H - 6}" text-anchor="end" font-size="11">{self.x1}</text>{note}'
        )


def _line(frame: _Frame, metric: str, row: Row, i: int, why: str = "") -> tuple[str, list[str]]:
    """One writer's line, broken at each non-finite value, and the marks of those values (NaN, +inf,
    -inf at their step); `why` it is drawn, where it stands out."""
    e, x, y = html.escape, frame.x, frame.y
    color = COLORS[i % len(COLORS)]
    segments: list[list[str]] = [[]]  # the finite stretches of this writer's curve
    marks = []
    for step, value in row.curves[metric]:
        kind = nonfinite_name(value)
        if kind is None:
            segments[-1].append(f"{x(step)},{y(value)}")
            continue
        if segments[-1]:
            segments.append([])
        label, at_top = _MARKS[kind]
        ty = _TOP + 9 + (i % 3) * 10 if at_top else _TOP + frame.height - 3 - (i % 3) * 10
        marks.append(
            f'<g class="fwe-mark" data-value="{kind}"><title>{e(row.name)}: {e(metric)} = {kind} at step {step}'
            f'</title><line x1="{x(step)}" y1="{_TOP}" x2="{x(step)}" y2="{_TOP + frame.height}" stroke="{color}" '
            f'stroke-dasharray="3,3"/><text x="{x(step)}" y="{ty}" text-anchor="middle" font-size="10" '
            f'fill="{color}">{label}</text></g>'
        )
    # "M a L b L c": one subpath per finite stretch; a lone point is drawn as a dot ("h0")
    path = " ".join(f"M{seg[0]} " + (f"L{' L'.join(seg[1:])}" if len(seg) > 1 else "h0") for seg in segments if seg)
    if not path:
        return "", marks
    data = f' data-why="{e(why, quote=True)}"' if why else ""
    line = (
        f'<path class="fwe-line" fill="none" stroke-width="2" stroke-linecap="round" stroke="{color}"{data} '
        f'd="{path}"><title>{e(row.name)}</title></path>'
    )
    return line, marks


def _swatch(color: str, text: str) -> str:
    return f'<span><i style="background:{color}"></i>{html.escape(text)}</span>'


def _figure(metric: str, frame: _Frame, drawn: str, legend: str) -> str:
    e = html.escape
    return (
        f'<figure class="fwe-chart" data-metric="{e(metric, quote=True)}"><figcaption>{e(metric)}</figcaption>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}">'
        f'{frame.axes()}{drawn}</svg><div class="fwe-legend">{legend}</div></figure>'
    )


def _chart(metric: str, rows: list[Row]) -> str:
    """One metric's chart, for at most `lines` writers (see `render_tab`): a line per writer, broken at each
    non-finite value, which is marked (NaN, +inf, -inf) at its step. The axes span the finite
    values only."""
    steps = [s for row in rows for s, _ in row.curves[metric]]
    finite = [v for row in rows for _, v in row.curves[metric] if math.isfinite(v)]
    frame = _Frame(steps, finite)
    lines, marks = [], []
    for i, row in enumerate(rows):
        line, its_marks = _line(frame, metric, row, i)
        lines.append(line)
        marks += its_marks
    legend = "".join(_swatch(COLORS[i % len(COLORS)], row.name) for i, row in enumerate(rows))
    return _figure(metric, frame, "".join(lines) + "".join(marks), legend)


def _spread_chart(metric: str, rows: list[Row], scale: _Scale) -> str:
    """One metric's chart at scale: the band from min to max across writers and their median, at
    each bin of steps (finite values only), the count of writers with a non-finite value in each bin,
    and the lines of the writers that stand out, named with why."""
    e = html.escape
    band, drawn = scale.bands[metric], scale.drawn[metric]
    writers = sum(1 for r in rows if r.curves.get(metric))
    finite = [v for v in (*band.low, *band.high) if v is not None]
    finite += [v for i, _ in drawn for _, v in rows[i].curves[metric] if math.isfinite(v)]
    steps = [band.first[0], band.last[-1]] + [s for i, _ in drawn for s, _ in rows[i].curves[metric]]
    frame = _Frame(steps, finite)
    x, y = frame.x, frame.y
    stretches: list[list[tuple[str, float, float, float]]] = [[]]  # runs of bins with a finite value
    for first, last, low, median, high in zip(band.first, band.last, band.low, band.median, band.high, strict=True):
        if low is None or median is None or high is None:
            stretches.append([])
        else:
            stretches[-1].append((x((first + last) / 2), low, median, high))
    areas, medians, counts = [], [], []
    for stretch in filter(None, stretches):
        top = [f"{at},{y(high)}" for at, _, _, high in stretch]
        bottom = [f"{at},{y(low)}" for at, low, _, _ in reversed(stretch)]
        areas.append(f"M{' L'.join(top + bottom)} Z")
        medians.append("M" + " L".join(f"{at},{y(median)}" for at, _, median, _ in stretch) + " h0")
    for at, count in enumerate(band.nonfinite):
        if count:
            x0, x1 = float(x(band.first[at])), float(x(min(band.last[at] + 1, frame.x1)))
            counts.append(
                f'<rect class="fwe-count" data-count="{count}" x="{x0}" y="{_TOP}" width="{max(1.0, x1 - x0):.1f}" '
                f'height="4" fill="{_COUNT}"><title>{count} of {writers} writers: NaN or infinite at steps '
                f"{band.first[at]}-{band.last[at]} (not in the band)</title></rect>"
            )
    svg = []
    if areas:  # some bin has a finite value
        svg.append(
            f'<path class="fwe-band" fill="{_BAND}" stroke="none" d="{" ".join(areas)}">'
            f"<title>{e(metric)}: min to max of {writers} writers</title></path>"
            f'<path class="fwe-median" fill="none" stroke="{_MEDIAN}" stroke-width="1.5" stroke-linecap="round" '
            f'd="{" ".join(medians)}"><title>{e(metric)}: median of {writers} writers</title></path>'
        )
    svg += counts
    marks, legend = [], [_swatch(_BAND, f"min to max of {writers} writers"), _swatch(_MEDIAN, "median")]
    for n, (i, why) in enumerate(drawn):
        line, its_marks = _line(frame, metric, rows[i], n, why)
        svg.append(line)
        marks += its_marks
        legend.append(_swatch(COLORS[n % len(COLORS)], f"{rows[i].name}: {why}"))
    if scale.nonfinite[metric]:
        legend.append(
            f"<span>NaN or infinite values from {scale.nonfinite[metric]} of {writers} writers (not in the band)</span>"
        )
    legend.append(f"<span>{writers - len(drawn)} more writers in the band only</span>")
    return _figure(metric, frame, "".join(svg) + "".join(marks), "".join(legend))
