"""The report tab for a large job: many writers x long runs x several metrics.

    python -m benchmarks.bench_report [--runs 1000] [--rows 100000] [--metrics 2] [--repeats 1]
    python -m benchmarks.bench_report --runs 8192 --rows 20000 --metrics 8

Each run's rows go through the same downsampling the report thread applies as it reads the copies
(`_stored_runs.Curve`); then the tab is built as rank 0 builds it every `persist_interval`. With
more writers than a chart draws lines (`MAX_LINES`), every chart is the spread across writers
and the lines of those that stand out (`_spread`): some writers here fail, stall, diverge or
drift, as a large job's do. Prints the time per row of the downsampling, the curve points kept,
the time to build the tab (wall and CPU time: the machine may be shared), its size in bytes, and
how long a browser-free parse of it takes (a check that it is well formed).

With many writers, each distinct curve is downsampled once and shared by the writers that log it
(offset per writer): the downsampling per row is measured the same, and the tab is built from
exactly what the reader would hold.
"""

from __future__ import annotations

import argparse
import math
import time
from html.parser import HTMLParser

from flyte_wandb_elastic._report_html import Row, render_tab
from flyte_wandb_elastic._stored_runs import Curve

# Distinct curve shapes downsampled per metric (writers share them, each with its own offset).
SHAPES = 16


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="builds of the tab; the fastest is shown")
    args = parser.parse_args()
    names = ["loss", "acc", *(f"metric-{m:02d}" for m in range(args.metrics - 2))][: args.metrics]

    started = time.perf_counter()
    fed = 0
    shapes: dict[str, list[list[tuple[int, float]]]] = {}
    for m, name in enumerate(names):
        shapes[name] = []
        for k in range(min(SHAPES, args.runs)):
            curve = Curve()
            for step in range(args.rows):
                curve.add(step, math.exp(-step / (args.rows / 5)) * (1 + k / 100) + m if m != 1 else step / args.rows)
            fed += args.rows
            shapes[name].append(curve.shown())
    fed_s = time.perf_counter() - started

    rows = []
    for run in range(args.runs):
        curves = {name: [(s, v + run * 1e-6) for s, v in shapes[name][run % len(shapes[name])]] for name in names}
        rows.append(
            Row(
                f"r1-a0-rank-{run}",
                ranks=[run],
                rows=args.rows,
                metrics={name: c[-1][1] for name, c in curves.items()},
                state="running",
                sync=f"python -m flyte_wandb_elastic sync s3://bucket/r1/wandb/a0/rank-{run}",
                curves=curves,
                last_time=86_400.0,
            )
        )
    _stand_out(rows, args.rows)
    points = sum(len(c) for r in rows for c in r.curves.values())

    builds = []
    for _ in range(args.repeats):  # the fastest build: the least disturbed by other work on the machine
        started, cpu = time.perf_counter(), time.process_time()
        page = render_tab(rows, f"new / global, {args.runs // 8} x 8 ranks", "Live, while the job runs", 30.0)
        builds.append((time.perf_counter() - started, time.process_time() - cpu))
    build_s, build_cpu_s = min(builds)
    started = time.perf_counter()
    HTMLParser().feed(page)
    parse_s = time.perf_counter() - started

    columns = ("runs", "rows per run", "metrics", "downsampling per row", "curve points kept", "build the tab")
    print(f"| {' | '.join(columns)} | its CPU time | tab size | parse |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.runs:,} | {args.rows:,} | {args.metrics} | {fed_s / fed * 1e9:.0f} ns | {points:,} | "
        f"{build_s * 1000:.0f} ms | {build_cpu_s * 1000:.0f} ms | {len(page.encode()) / 1024:.0f} KiB | "
        f"{parse_s * 1000:.0f} ms |"
    )


def _stand_out(rows: list[Row], steps: int) -> None:
    """What a large job's writers do: one in 500 fails (its node's peers stopped, 143), one in 1,000
    stalls, one in 2,000 diverges (NaN), one in 700 drifts away from the others."""
    for i, row in enumerate(rows):
        if i % 500 == 499:
            row.exit_code, row.state = 1, "failed (exit 1)"
            row.curves = {name: curve[: len(curve) // 2] for name, curve in row.curves.items()}
        elif i % 500 in (497, 498):
            row.exit_code, row.state = 143, "failed (exit 143)"
        elif i % 1000 == 333:
            row.last_time = 86_400.0 - 600
            row.curves = {name: curve[: len(curve) * 3 // 4] for name, curve in row.curves.items()}
        elif i % 2000 == 77:
            row.curves = {name: [*curve, (steps, math.nan)] for name, curve in row.curves.items()}
        elif i % 700 == 11:
            row.curves = {name: [(s, v * 1.5) for s, v in curve] for name, curve in row.curves.items()}


if __name__ == "__main__":
    main()
