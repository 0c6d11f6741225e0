"""The report tab at scale: once a metric has more writers than the chart draws lines, the spread
across writers (a band: min, median, max per bin of steps) and the lines of the writers that stand
out, named with why; the table lists failed, stalled and outlying writers first; the page stays
bounded.

The pure parts (`_spread`) are checked on small curves; the page is checked in a real headless
browser, built by the report's own code (`ReportTab`) from real W&B offline runs of 24 writers,
copied by the real copier and read back by the real reader: no launch is needed for that.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from flyte_wandb_elastic import WandbOptions
from flyte_wandb_elastic._persist import RunFilesCopier
from flyte_wandb_elastic._report import ReportTab
from flyte_wandb_elastic._report_html import MAX_LINES, MAX_TABLE_ROWS, TABLE_ROWS, Row, render_tab
from flyte_wandb_elastic._spread import (
    BINS,
    FURTHEST,
    STANDOUT_LINES,
    band,
    drawn,
    failed,
    first_ranked,
    furthest,
    stalled,
)
from flyte_wandb_elastic._stored_runs import MAX_POINTS, Curve
from tests.browser import CHROMIUM, rendered
from tests.conftest import wandb_env

NAN, INF = math.nan, math.inf

# -- the pure parts ---------------------------------------------------------------------------


def test_the_band_aligns_writers_thinned_at_different_steps_by_binning() -> None:
    # writer 0 kept every step, writer 1 every 4th: each bin of 4 steps holds one value of each
    every = [(s, float(s)) for s in range(40)]
    fourth = [(s, 100.0 + s) for s in range(0, 40, 4)]
    spread = band([every, fourth, None, []], bins=10)
    assert spread.first == list(range(0, 40, 4)) and spread.last == list(range(3, 40, 4))
    assert spread.writers == [2] * 10 and spread.nonfinite == [0] * 10
    # a writer counts once per bin, by its last value there (writer 0: steps 3, 7, ...)
    assert spread.low == [float(s) for s in range(3, 40, 4)]
    assert spread.high == [100.0 + s for s in range(0, 40, 4)]
    assert spread.median == [(low + high) / 2 for low, high in zip(spread.low, spread.high, strict=True)]


def test_the_band_never_counts_a_non_finite_value_in_min_median_or_max() -> None:
    curves = [
        [(0, 1.0), (1, 1.0), (2, 1.0)],
        [(0, 2.0), (1, NAN), (2, INF)],
        [(0, 3.0), (1, -INF), (2, 5.0)],
        [(0, NAN), (1, NAN), (2, NAN)],
    ]
    spread = band(curves)
    assert len(spread.first) == 3  # three steps: three bins
    assert spread.low == [1.0, 1.0, 1.0] and spread.high == [3.0, 1.0, 5.0]
    assert spread.median == [2.0, 1.0, 3.0]
    assert spread.writers == [3, 1, 2] and spread.nonfinite == [1, 3, 2]
    # a bin where no writer has a finite value has no band there, only its count
    only_nan = band([[(0, 1.0), (5, NAN)], [(0, 2.0), (5, NAN)]], bins=2)
    assert only_nan.low == [1.0, None] and only_nan.median == [1.5, None] and only_nan.nonfinite == [0, 2]
    assert band([None, []]).first == []


def test_the_band_spans_every_start_of_a_restarted_writer_and_at_most_bins_bins() -> None:
    restarted = [(s, 1.0) for s in range(0, 1000, 5)] + [(s, 2.0) for s in range(0, 500, 5)]
    spread = band([restarted, [(s, 3.0) for s in range(0, 300, 3)]])
    assert len(spread.first) == BINS and spread.first[0] == 0 and spread.last[-1] == 995
    assert spread.high[:10] == [3.0] * 10 and spread.high[-1] == 1.0  # the other writer stopped at 297


def test_standouts_are_chosen_for_why_they_stand_out() -> None:
    # failed: a real failure before a rank stopped because of it (143)
    assert failed([0, 143, None, 1, 143, 7]) == [3, 5, 1, 4]
    # stalled: no end recorded and no row for 3 intervals while another writer logged rows
    times = [100.0, 60.0, 71.0, 50.0, None, 40.0]
    assert stalled(times, [False, False, False, True, False, False], interval_s=10) == [5, 1]
    assert stalled([40.0, 45.0], [False, False], interval_s=10) == []  # nobody progressed since
    # non-finite: each writer once, by its first non-finite value, the first to diverge first
    curves = [[(0, 1.0), (9, NAN), (10, INF)], [(0, 1.0)], [(0, -INF)], None, [(0, 1.0), (3, INF)]]
    assert band(curves).diverged == [(2, 0, -INF), (4, 3, INF), (0, 9, NAN)]
    # furthest from the median of the last (finite) values, furthest first
    lasts = [[(0, 0.0), (5, v)] for v in (1.0, 1.1, 0.9, 9.0, 1.0, -3.0, 1.05, NAN)]
    assert furthest(lasts) == [(3, 9.0), (5, -3.0), (1, 1.1)] and FURTHEST == 3
    assert furthest([[(0, 2.0)]] * 30) == []  # nobody away from the median: nobody stands out
    # drawn: one of each kind in turn (a writer once), at most STANDOUT_LINES
    assert drawn([[7, 8, 9], [8, 1], [], [2, 3]]) == [7, 8, 2, 9, 1, 3]
    assert drawn([list(range(100)), list(range(100, 200))]) == [100 * (i % 2) + i // 2 for i in range(10)]
    assert STANDOUT_LINES == 10
    # the table: the groups' writers first, in order, each once, then the rest as they were
    assert first_ranked(8, [[5], [2, 5], [7, 2]]) == [5, 2, 7, 0, 1, 3, 4, 6]


def test_a_small_job_keeps_a_line_per_writer_and_its_table_order() -> None:
    rows = [Row(f"run-{i}", ranks=[i], curves={"loss": [(0, 1.0), (1, float(i))]}) for i in range(MAX_LINES)]
    rows[3] = Row("run-3", ranks=[3], state="failed (exit 1)", exit_code=1, curves={"loss": [(0, 9.0)]})
    page = render_tab(rows, "layout", "Live", interval_s=1.0)
    assert 'class="fwe-band"' not in page and page.count('class="fwe-line"') == MAX_LINES
    assert [page.index(f"<td>run-{i}</td>") for i in range(MAX_LINES)] == sorted(
        page.index(f"<td>run-{i}</td>") for i in range(MAX_LINES)
    )


def test_the_page_stays_under_a_megabyte_at_thousands_of_writers() -> None:
    # 3,000 writers x 8 metrics, every curve thinned by the reader's own `Curve` (20,000 steps)
    metrics = 8
    shapes = []
    for m in range(metrics):
        curve = Curve()
        for step in range(20_000):
            curve.add(step, math.exp(-step / 5_000) + m)
        shapes.append(curve.shown())
    assert MAX_POINTS <= len(shapes[0]) <= 2 * MAX_POINTS + 1
    rows = []
    for w in range(3_000):
        curves = {f"metric-{m:02d}": [(s, v + w * 1e-5) for s, v in shapes[m]] for m in range(metrics)}
        rows.append(
            Row(
                f"r1-a0-rank-{w}",
                ranks=[w],
                rows=20_000,
                metrics={k: c[-1][1] for k, c in curves.items()},
                sync=f"python -m flyte_wandb_elastic sync s3://bucket/r1/wandb/a0/rank-{w}",
                curves=curves,
                exit_code=None,
                last_time=1_000.0,
            )
        )
    rows[2_999].exit_code, rows[2_999].state = 1, "failed (exit 1)"
    page = render_tab(rows, "layout", "Live", interval_s=30)
    assert len(page.encode()) < 1_000_000
    assert page.count('class="fwe-run"') == MAX_TABLE_ROWS and TABLE_ROWS < MAX_TABLE_ROWS
    assert f"{3_000 - MAX_TABLE_ROWS} more runs not listed" in page
    assert page.count('class="fwe-band"') == metrics
    # the failed writer is listed first, and drawn on every chart with why
    assert page.index("<td>r1-a0-rank-2999</td>") < page.index("<td>r1-a0-rank-0</td>")
    assert page.count('data-why="failed (exit 1)') == metrics
    # writers that log many more metrics than are charted: the table lists fewer of them
    for row in rows:
        row.metrics.update({f"train/a-rather-long-metric-name-{k:02d}": 0.123456 for k in range(40)})
    page = render_tab(rows, "layout", "Live", interval_s=30)
    listed = page.count('class="fwe-run"')
    assert len(page.encode()) < 1_000_000 and TABLE_ROWS < listed < MAX_TABLE_ROWS
    assert f"{3_000 - listed} more runs not listed" in page
    assert page.index("<td>r1-a0-rank-2999</td>") < page.index("<td>r1-a0-rank-0</td>")


# -- the page, in a browser, from real stored runs ----------------------------------------------

WRITERS = 24  # more than MAX_LINES
STEPS = 60
# One process writes every rank's run, offline, as W&B writes them: rank 2 fails at step 30, rank
# 3 stops logging at step 20 and never records its end (its pod hung), rank 5's loss goes NaN from
# step 40, rank 7's loss jumps away from the others at step 50. The others go on logging for more
# than three report intervals after rank 3 stopped.
_JOB = f"""
import math, os, time, wandb
runs = [wandb.init(project="p", id=f"w{{r}}", mode="offline", reinit="create_new") for r in range({WRITERS})]
for step in range({STEPS}):
    for r, run in enumerate(runs):
        if (r == 2 and step >= 30) or (r == 3 and step >= 20):
            continue
        loss = math.exp(-step / 20) * (1 + 0.01 * r)
        if r == 5 and step >= 40:
            loss = math.nan
        if r == 7 and step >= 50:
            loss += 1.0
        run.log({{"loss": loss}})
    time.sleep(0.02)
for r, run in enumerate(runs):
    if r != 3:
        run.finish(exit_code=1 if r == 2 else 0)
time.sleep(1)  # rank 3's rows reach its file (flushed every 0.2 s), never its end
os._exit(0)
"""


@pytest.fixture(scope="module")
def stored_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportTab, Path]:
    """The report of a 3 x 8 job, built by `ReportTab` from every rank's real offline run as the
    real copier stored it (rank 3's copy taken while it was stalled)."""
    tmp = tmp_path_factory.mktemp("scale")
    env = {**wandb_env(tmp / "pod"), "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL": "0.2"}
    subprocess.run([sys.executable, "-c", _JOB], env=env, check=True, capture_output=True, timeout=120)
    prefix = str(tmp / "storage" / "wandb" / "a0")
    for r in range(WRITERS):
        [run_dir] = (tmp / "pod" / "wandb").glob(f"offline-run-*-w{r}")
        assert RunFilesCopier(run_dir, f"{prefix}/rank-{r}", interval_s=3600).copy()
    options = WandbOptions(project="p", run_mode="new")
    tab = ReportTab(options, prefix, nnodes=3, nproc_per_node=8, max_nodes=3, run_name="r1", action_name="a0",
                    interval_s=0.1)  # fmt: skip
    tab.stored.refresh()
    return tab, tmp


def test_stored_runs_tell_a_stalled_and_a_failed_writer(stored_job: tuple[ReportTab, Path]) -> None:
    tab, _ = stored_job
    writers = tab.stored.writers
    assert len(writers) == WRITERS and writers[2].exit_code == 1 and writers[3].exit_code is None
    assert writers[3].rows == 20 and writers[0].rows == STEPS
    times = {r: w.last_time or 0.0 for r, w in writers.items()}
    assert all(times.values()) and times[0] - times[3] > 3 * tab.interval_s  # the others went on


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_tab_at_scale_shows_the_spread_and_names_who_stands_out(stored_job: tuple[ReportTab, Path]) -> None:
    tab, tmp = stored_job
    shown = rendered(tab.html(final=False), tmp)
    # the table: failed, stalled, then outlying writers first (non-finite, then furthest from the
    # median by last value), then the others by rank; why each stands out, in its state cell
    table = [shown["cells"][i : i + 7] for i in range(0, len(shown["cells"]), 7)]
    assert [row[0] for row in table] == ["w2", "w3", "w5", "w7"] + [
        f"w{r}" for r in range(WRITERS) if r not in (2, 3, 5, 7)
    ]
    states = {row[0]: row[5] for row in table}
    assert states["w2"].startswith("failed (exit 1)") and "furthest from the median" in states["w2"]
    assert states["w3"].startswith("running") and "stalled: last row" in states["w3"]
    assert states["w5"] == "finishedloss: NaN at step 40" and "furthest from the median" in states["w7"]
    assert states["w0"] == "finished" and states["w4"] == "finished"
    # the chart: one band across the writers and its median, drawn across the steps
    loss = shown["charts"]["loss"]
    [area], [median] = loss["bands"], loss["medians"]
    assert area["width"] > 400 and area["height"] > 20, area
    assert area["title"] == f"loss: min to max of {WRITERS} writers"
    assert area["y"] <= median["y"] and median["y"] + median["height"] <= area["y"] + area["height"]
    # rank 5's NaN is counted apart at the steps it was logged (the first and the newest kept)
    assert [c["title"] for c in loss["counts"]] == [
        f"1 of {WRITERS} writers: NaN or infinite at steps 40-40 (not in the band)",
        f"1 of {WRITERS} writers: NaN or infinite at steps 59-59 (not in the band)",
    ]
    # the lines of the writers that stand out, one of each kind in turn, drawn and named with why
    lines = {line["name"]: line for line in loss["lines"]}
    assert list(lines) == ["w2", "w5", "w3", "w7"]
    assert all(line["length"] > 50 for line in lines.values()), lines
    assert lines["w2"]["why"].startswith("failed (exit 1); last value")
    assert lines["w5"]["why"] == "NaN at step 40"
    assert lines["w3"]["why"].startswith("stalled: last row") and "furthest from the median" in lines["w3"]["why"]
    assert lines["w7"]["why"].startswith("last value 1.0") and lines["w7"]["why"].endswith("furthest from the median")
    assert [m["title"] for m in loss["marks"]] == ["w5: loss = NaN at step 40", "w5: loss = NaN at step 59"]
    assert loss["legend"][:2] == [f"min to max of {WRITERS} writers", "median"]
    assert loss["legend"][2:6] == [f"{name}: {line['why']}" for name, line in lines.items()]
    assert loss["legend"][6:] == [f"NaN or infinite values from 1 of {WRITERS} writers (not in the band)",
                                  f"{WRITERS - 4} more writers in the band only"]  # fmt: skip
