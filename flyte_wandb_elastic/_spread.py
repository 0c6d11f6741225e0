"""The spread of one metric across many writers, and the writers that stand out: what the report
tab draws once a metric has more writers than the chart draws lines.

Pure: writers' curves, exit codes and last-row times in; a band and short lists of writers out.

- **Aligning steps**: every curve arrives thinned to 100-200 points, each writer at steps of its
  own (see `_stored_runs.Curve`), so steps are binned: at most `BINS` equal bins over the steps
  logged. In a bin a writer counts once, by its last finite value there, and the bin's min, median
  and max are taken over the writers that have one. As a curve keeps at least `MAX_POINTS`
  (>= `BINS`) finite points evenly spread, every bin within a writer's steps holds one of them.
- **Non-finite values** (NaN, +inf, -inf) are counted apart, per bin, and never enter min, median
  or max.
- **Standing out**: a failed writer (a non-zero exit code; 143, stopped because a peer failed,
  after the others), one with a non-finite value (the first to diverge first), a stalled one (no
  end recorded, and no row for `STALLED_INTERVALS` report intervals while another writer logged
  rows) and, by their last values, the `FURTHEST` writers furthest from the median.

Process: wherever the tab is built (see `_report_html`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Bins over the steps of one chart: no more than a curve's fewest kept points (`Curve`).
BINS = 100
# Writers drawn for being furthest from the median by their last values.
FURTHEST = 3
# The most writers drawn on one chart at scale (each with a name and why).
STANDOUT_LINES = 10
# A writer is stalled once another writer logged rows this many report intervals after its last.
STALLED_INTERVALS = 3
# The exit code of a rank stopped because another one failed: a consequence, listed after causes.
STOPPED_EXIT = 143

Points = Sequence[tuple[int, float]]


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def _finite(value: float) -> bool:
    return value - value == 0.0  # NaN - NaN and inf - inf are NaN (`v - v` below too)


@dataclass(frozen=True)
class Band:
    """One metric across writers, per bin of steps.

    Attributes:
        first: Each bin's first step.
        last: Each bin's last step.
        low: The smallest finite value in each bin (`None`: no writer has one there).
        median: The median of the writers' finite values in each bin.
        high: The largest finite value in each bin.
        writers: How many writers have a finite value in each bin.
        nonfinite: How many writers logged a non-finite value in each bin (counted in no other field).
        diverged: The writers with a non-finite value: `(writer, step, value)` of each one's first,
            the first to diverge first.
    """

    first: list[int]
    last: list[int]
    low: list[float | None]
    median: list[float | None]
    high: list[float | None]
    writers: list[int]
    nonfinite: list[int]
    diverged: list[tuple[int, int, float]]


def band(curves: Sequence[Points | None], bins: int = BINS) -> Band:
    """The min, median and max across `curves` at each bin of steps, non-finite values counted apart
    (and each writer's first).

    Args:
        curves: Each writer's `(step, value)` points (`None` or empty: the writer logged none).
        bins: The most bins: fewer when the steps span fewer.

    Returns:
        The band; no bins when no curve has a point.
    """
    spans = [(min(curve)[0], max(curve)[0]) for curve in curves if curve]  # a restart's steps go back
    if not spans:
        return Band([], [], [], [], [], [], [], [])
    x0 = min(lo for lo, _ in spans)
    span = max(hi for _, hi in spans) - x0 + 1
    bins = min(bins, span)  # step s lies in bin (s - x0) * bins // span: integers, exact
    values: list[list[float]] = [[] for _ in range(bins)]
    nonfinite = [0] * bins
    diverged = []
    for i, curve in enumerate(curves):
        if not curve:
            continue
        # comprehensions, not a loop: this runs for every point of every writer (`v - v` is 0.0
        # only for a finite v)
        kept = {(s - x0) * bins // span: v for s, v in curve if v - v == 0.0}
        for at, value in kept.items():
            values[at].append(value)
        broken = [(s, v) for s, v in curve if v - v != 0.0]
        if broken:
            diverged.append((i, *broken[0]))
            for at in {(s - x0) * bins // span for s, _ in broken}:
                nonfinite[at] += 1
    low: list[float | None] = []
    median: list[float | None] = []
    high: list[float | None] = []
    for found in values:
        found.sort()
        low.append(found[0] if found else None)
        median.append(_median(found) if found else None)
        high.append(found[-1] if found else None)
    first = [x0 + -(-i * span // bins) for i in range(bins)]  # ceil(i * span / bins)
    last = [*(f - 1 for f in first[1:]), x0 + span - 1]
    diverged.sort(key=lambda found: (found[1], found[0]))
    return Band(first, last, low, median, high, [len(v) for v in values], nonfinite, diverged)


def failed(exit_codes: Sequence[int | None]) -> list[int]:
    """The writers whose exit code is non-zero: those stopped because a peer failed (143) last."""
    return sorted(
        (i for i, code in enumerate(exit_codes) if code not in (None, 0)), key=lambda i: exit_codes[i] == STOPPED_EXIT
    )


def stalled(last_times: Sequence[float | None], ended: Sequence[bool], interval_s: float) -> list[int]:
    """The writers with no end recorded whose last row is more than `STALLED_INTERVALS` intervals
    older than the newest row of any writer, longest stalled first.

    Args:
        last_times: When each writer logged its last row (W&B's `_timestamp`; `None`: no row yet).
        ended: Whether each writer recorded its end (an exit code).
        interval_s: The report's interval (`persist_interval`).
    """
    times = [t for t in last_times if t is not None]
    if not times:
        return []
    limit = max(times) - STALLED_INTERVALS * interval_s
    found = [i for i, t in enumerate(last_times) if t is not None and t < limit and not ended[i]]
    return sorted(found, key=lambda i: last_times[i] or 0.0)


def furthest(curves: Sequence[Points | None], count: int = FURTHEST) -> list[tuple[int, float]]:
    """The `count` writers whose last value is furthest from the median of the writers' last
    values (finite ones only), furthest first, each with that value; none where every last value
    is the median."""
    last = [(i, curve[-1][1]) for i, curve in enumerate(curves) if curve and _finite(curve[-1][1])]
    if not last:
        return []
    middle = _median(sorted(v for _, v in last))
    away = sorted((-abs(v - middle), i, v) for i, v in last if v != middle)
    return [(i, v) for _, i, v in away[:count]]


def drawn(groups: Sequence[Sequence[int]], lines: int = STANDOUT_LINES) -> list[int]:
    """The writers to draw from `groups` (each ranked, most notable first): taken one from each
    group in turn, so that every kind of standing out is shown, until `lines` writers."""
    chosen: list[int] = []
    queues = [list(group) for group in groups]
    while len(chosen) < lines and any(queues):
        for queue in queues:
            while queue and queue[0] in chosen:
                queue.pop(0)
            if queue and len(chosen) < lines:
                chosen.append(queue.pop(0))
    return chosen


def first_ranked(count: int, groups: Sequence[Sequence[int]]) -> list[int]:
    """`range(count)` with the writers of `groups` first, in the groups' order, the rest as they were."""
    order = list(dict.fromkeys(i for group in groups for i in group))
    shown = set(order)
    return order + [i for i in range(count) if i not in shown]
