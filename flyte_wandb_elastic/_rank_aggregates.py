"""The cross-rank aggregates of each metric: one row of `ranks/*` values from every rank's newest values.

Pure: it takes, for each rank, the newest value of each metric it logged (what `_stored_runs.Writer.metrics`
holds after a refresh of the stored run files) and returns the row to log into the primary's run,
charted against its own step metric (`ranks/step`), so that W&B never drops it for a `_step` that
goes back. For each numeric metric `m`:

- `ranks/m/mean`, `ranks/m/min`, `ranks/m/max`: over the ranks whose newest value is finite;
- `ranks/m/min_rank`, `ranks/m/max_rank`: the rank that holds each extreme (the lowest on a tie);
- `ranks/m/finite`: how many ranks the three above are taken over;
- `ranks/m/nonfinite`: how many ranks' newest value is NaN, +inf or -inf (never inside min, mean
  or max).

Keys that start with `_` (W&B's own) or with `ranks/` (aggregates already) and values that are not
numbers (booleans, strings, media) are left out. The work is one pass over the values given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

PREFIX = "ranks/"
# The step metric every aggregate is charted against (`define_metric("ranks/*", step_metric=STEP)`).
STEP = "ranks/step"


def aggregate(latest: Mapping[int, Mapping[str, Any]]) -> dict[str, float | int]:
    """The `ranks/*` row of the newest values of each rank.

    Args:
        latest: For each global rank, the newest value of each metric it logged.

    Returns:
        The aggregates of every numeric metric, keyed `ranks/<metric>/<statistic>` (without
        `ranks/step`, which the caller numbers); empty when no rank logged a number.
    """
    finite: dict[str, list[tuple[float, int]]] = {}
    nonfinite: dict[str, int] = {}
    for rank in sorted(latest):
        for key, value in latest[rank].items():
            if key.startswith(("_", PREFIX)) or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            number = float(value)
            if math.isfinite(number):
                finite.setdefault(key, []).append((number, rank))
                nonfinite.setdefault(key, 0)
            else:
                nonfinite[key] = nonfinite.get(key, 0) + 1
                finite.setdefault(key, [])
    row: dict[str, float | int] = {}
    for key in sorted(finite):
        values = finite[key]
        name = f"{PREFIX}{key}"
        row[f"{name}/finite"] = len(values)
        row[f"{name}/nonfinite"] = nonfinite[key]
        if not values:
            continue
        low = min(values)  # (value, rank): the lowest rank on a tie
        high = max(values, key=lambda item: (item[0], -item[1]))
        row[f"{name}/mean"] = math.fsum(v for v, _ in values) / len(values)
        row[f"{name}/min"], row[f"{name}/min_rank"] = low
        row[f"{name}/max"], row[f"{name}/max_rank"] = high
    return row
