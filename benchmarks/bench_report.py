"""The report tab for a large job: 1,000 runs x 100,000 rows (two metrics each).

    python -m benchmarks.bench_report [--runs 1000] [--rows 100000]

Each run's rows go through the same downsampling the report thread applies as it reads the copies
(`_stored_runs.Curve`); then the tab is built as rank 0 builds it every `persist_interval`. Prints
the time per row of the downsampling, the curve points kept, the time to build the tab, its size
in bytes, and how long a browser-free parse of it takes (a check that it is well formed).
"""

from __future__ import annotations

import argparse
import math
import time
from html.parser import HTMLParser

from flyte_wandb_elastic._report_html import Row, render_tab
from flyte_wandb_elastic._stored_runs import Curve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    started = time.perf_counter()
    rows = []
    for run in range(args.runs):
        loss, acc = Curve(), Curve()
        for step in range(args.rows):
            loss.add(step, math.exp(-step / 20_000) + run * 1e-3)
            acc.add(step, step / args.rows)
        rows.append(
            Row(
                f"r1-a0-rank-{run}",
                ranks=[run],
                rows=args.rows,
                metrics={"loss": loss.last[1] if loss.last else 0.0, "acc": acc.last[1] if acc.last else 0.0},
                state="running",
                sync=f"python -m flyte_wandb_elastic sync s3://bucket/r1/wandb/a0/rank-{run}",
                curves={"loss": loss.shown(), "acc": acc.shown()},
            )
        )
    fed_s = time.perf_counter() - started
    points = sum(len(c) for r in rows for c in r.curves.values())

    started = time.perf_counter()
    page = render_tab(rows, "new / global, 250 x 4 ranks", "Live, while the job runs")
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    HTMLParser().feed(page)
    parse_s = time.perf_counter() - started

    total_rows = args.runs * args.rows * 2
    print("| runs | rows per run | downsampling per row | curve points kept | build the tab | tab size | parse |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.runs:,} | {args.rows:,} | {fed_s / total_rows * 1e9:.0f} ns | {points:,} | "
        f"{build_s * 1000:.0f} ms | {len(page.encode()) / 1024:.0f} KiB | {parse_s * 1000:.0f} ms |"
    )


if __name__ == "__main__":
    main()
