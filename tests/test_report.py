"""The "Weights & Biases" tab of a task's Flyte report (`report=True`), as a user sees it.

Real 2 x 2 launches of both engines, offline and against a W&B-compatible server, each node with
a disk of its own (deleted after the job): rank 0 writes the tab from the copies in storage while
the job runs and once more at its end. The page is opened in a real headless browser.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from flyte_wandb_elastic import WandbOptions
from flyte_wandb_elastic._node_summary import LocalRuns, NodeSummary
from flyte_wandb_elastic._persist import RunFilesCopier
from flyte_wandb_elastic._report import ReportTab
from flyte_wandb_elastic._report_html import COLORS, LINES_ENV, MAX_CHARTS, MAX_LINES, TABLE_ROWS, Row, render_tab
from flyte_wandb_elastic._runfiles import _HEADER, parse_records, read_run_file
from flyte_wandb_elastic._stored_runs import MAX_BREAKS, MAX_POINTS, Curve, StoredRuns, read_summary, summary_uri
from flyte_wandb_elastic._values import nonfinite_name
from tests.browser import CHROMIUM, color_counts, rendered
from tests.conftest import REPO, Launch, launch, launch_clustered, wandb_env
from tests.servers import ENTITY, WandbServer

STEPS = 30


class _Page(HTMLParser):
    """The report tab's runs table (one dict per row) and its charts' lines, as parsed HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.whys: list[str] = []  # each row's why it stands out ("" for none), apart from its state
        self.links: list[str] = []
        self.lines: dict[str, int] = {}
        self.bands: list[str] = []  # the metric of each chart drawn as a band across writers
        self.marks: list[tuple[str, str]] = []  # (metric, value) of each mark of a non-finite value
        self.coordinates: list[str] = []  # every drawn path's `d` and every x, y attribute
        self._cell: list[str] | None = None
        self._why = False
        self._chart = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("class") == "fwe-run":
            self.rows.append([])
            self.whys.append("")
        elif tag == "div" and a.get("class") == "fwe-why" and self._cell is not None:
            self._why = True
        elif tag == "td" and self.rows is not None:
            self._cell = []
        elif tag == "a" and self._cell is not None:
            self.links.append(a.get("href") or "")
        elif tag == "figure":
            self._chart = a.get("data-metric") or ""
        elif tag == "path" and a.get("class") == "fwe-line":
            self.lines[self._chart] = self.lines.get(self._chart, 0) + 1
        elif tag == "path" and a.get("class") == "fwe-band":
            self.bands.append(self._chart)
        elif tag == "g" and a.get("class") == "fwe-mark":
            self.marks.append((self._chart, a.get("data-value") or ""))
        self.coordinates += [a[k] or "" for k in ("d", "x", "y", "x1", "x2", "y1", "y2") if k in a]

    def handle_data(self, data: str) -> None:
        if self._why:
            self.whys[-1] += data
        elif self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._why:
            self._why = False
        elif tag == "td" and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def table(self) -> list[dict[str, str]]:
        columns = ("run", "label", "ranks", "steps", "metrics", "state", "wandb")
        rows = zip(self.rows, self.whys, strict=True)
        return [{**dict(zip(columns, row, strict=True)), "why": why} for row, why in rows]


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


# -- the tab's source: what was copied, read incrementally --------------------------------------


def test_stored_copies_are_read_incrementally_and_whole(tmp_path: Path) -> None:
    # a real offline run (written by wandb itself), copied by the real copier in three uneven
    # slices (each cut in the middle of a record), read after each copy
    # (its loss goes NaN for steps 700-704, +inf at 1500 and -inf from 2998 on: each such run's
    # first step must survive the thinning of the curve)
    script = (
        "import wandb\n"
        "run = wandb.init(project='p', id='inc', mode='offline')\n"
        "for i in range(3000):\n"
        "    loss = float('nan') if 700 <= i < 705 else float('inf') if i == 1500 else 1 / (i + 1)\n"
        "    run.log({'loss': -float('inf') if i >= 2998 else loss, 'epoch': i // 100})\n"
        "run.finish()\n"
    )
    env = {"WANDB_DIR": str(tmp_path / "pod"), "WANDB_MODE": "offline", "PATH": str(Path(sys.executable).parent)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    [written] = (tmp_path / "pod" / "wandb").glob("offline-run-*/run-inc.wandb")
    whole = written.read_bytes()
    growing_dir = tmp_path / "growing" / written.parent.name
    growing_dir.mkdir(parents=True)
    growing = growing_dir / written.name
    prefix = str(tmp_path / "storage" / "wandb" / "a0")
    copier = RunFilesCopier(growing_dir, f"{prefix}/rank-0", interval_s=3600)
    stored = StoredRuns(prefix)
    counts = []
    for cut in (len(whole) // 3 + 11, 2 * len(whole) // 3 + 5, len(whole)):
        growing.write_bytes(whole[:cut])
        assert copier.copy()
        stored.refresh()
        counts.append(stored.writers[0].rows)
    writer = stored.writers[0]
    truth = read_run_file(written)
    assert counts[0] < counts[1] < counts[2] == len(truth.rows) == 3000
    assert stored.bytes_read == len(whole)  # every byte fetched once
    assert writer.run_id == "inc" and writer.exit_code == 0 and not writer.online and writer.starts == 1
    assert writer.metrics == truth.last_metrics == {"loss": -math.inf, "epoch": 29}
    loss = writer.curves["loss"].shown()
    assert MAX_POINTS <= len(loss) <= 2 * MAX_POINTS + 3
    assert loss[0] == (0, 1.0) and loss[-1] == (2999, -math.inf)
    assert [s for s, _ in loss] == sorted(s for s, _ in loss)
    # every run of non-finite values is kept by its first step (and only by it), marked as what it was
    assert [(s, nonfinite_name(v)) for s, v in loss if not math.isfinite(v)] == [
        (700, "NaN"), (1500, "Infinity"), (2998, "-Infinity"), (2999, "-Infinity")  # and the newest
    ]  # fmt: skip


def test_a_ranks_starts_are_read_in_the_order_they_began(tmp_path: Path) -> None:
    # a rank's online start failed (exit 1); its next start, later, fell back offline and finished:
    # the writer is what its newest start says, although `offline-run-...` sorts before `run-...`
    script = (
        "import time, wandb\n"
        "for code in (1, 0):\n"
        "    run = wandb.init(project='p', id='w', mode='offline')\n"
        "    run.log({'loss': 1.0 + code})\n"
        "    run.finish(exit_code=code)\n"
        "    time.sleep(1.1)\n"
    )
    env = {"WANDB_DIR": str(tmp_path / "pod"), "WANDB_MODE": "offline", "PATH": str(Path(sys.executable).parent)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=120)
    first, second = sorted((tmp_path / "pod" / "wandb").glob("offline-run-*-w"))
    prefix = str(tmp_path / "storage" / "wandb" / "a0")
    for run_dir, name in ((first, "run-20260101_000001-w"), (second, "offline-run-20260101_000002-w")):
        assert RunFilesCopier(run_dir.rename(run_dir.with_name(name)), f"{prefix}/rank-0", interval_s=3600).copy()
    stored = StoredRuns(prefix)
    stored.refresh()
    writer = stored.writers[0]
    assert (writer.starts, writer.rows, writer.exit_code, writer.online) == (2, 2, 0, False)
    assert writer.metrics == {"loss": 1.0}


def test_a_nodes_summary_stands_for_its_writers_and_a_writer_it_lacks_is_read_from_its_copies(
    tmp_path: Path,
) -> None:
    # real offline runs written by wandb: ranks 0 and 1 on node 0's disk, rank 2 on node 1's; every
    # run copied by the real copier; node 0's first rank sums up its node's writers (node 1 wrote no
    # summary, as a node of an earlier version or one whose summary failed)
    script = (
        "import sys, wandb\n"
        "for rank in map(int, sys.argv[1:]):\n"
        "    run = wandb.init(project='p', id=f'w{rank}', mode='offline')\n"
        "    for i in range(40):\n"
        "        run.log({'loss': float('nan') if rank == 1 and i == 7 else 1 / (i + 1 + rank), 'note': f'r{rank}'})\n"
        "    run.finish(exit_code=rank)\n"
    )
    for pod, ranks in (("pod-0", ["0", "1"]), ("pod-1", ["2"])):
        env = {"WANDB_DIR": str(tmp_path / pod), "WANDB_MODE": "offline", "PATH": str(Path(sys.executable).parent)}
        subprocess.run([sys.executable, "-c", script, *ranks], env=env, check=True, capture_output=True, timeout=120)
    prefix = str(tmp_path / "storage" / "wandb" / "a0")
    logs = {}
    for pod in ("pod-0", "pod-1"):
        for run_dir in (tmp_path / pod / "wandb").glob("offline-run-*"):
            rank = int(run_dir.name[-1])
            logs[rank] = next(run_dir.glob("run-*.wandb"))
            assert RunFilesCopier(run_dir, f"{prefix}/rank-{rank}", interval_s=3600).copy()
    planned = {0: ("w0", ""), 1: ("w1", "")}
    runs = LocalRuns(tmp_path / "pod-0" / "wandb", planned)
    summary = NodeSummary(runs, prefix, 0, interval_s=3600)
    assert summary.write() and not summary.write()  # stored once something changed, and only then
    stored = StoredRuns(prefix)
    stored.refresh()
    # one listing of the manifests (and summaries), node 0's summary, rank 2's manifest and its log
    assert stored.requests == 1 + 1 + 2 and stored.bytes_read == logs[2].stat().st_size
    assert stored.summarized == {0, 1} and sorted(stored.writers) == [0, 1, 2]
    for rank, log in logs.items():
        truth, writer = read_run_file(log), stored.writers[rank]
        assert (writer.run_id, writer.rows, writer.exit_code, writer.starts) == (f"w{rank}", 40, rank, 1)
        assert writer.metrics == truth.last_metrics and not writer.online
        assert writer.last_step == 39 and writer.last_time == truth.rows[-1]["_timestamp"]
    # the round trip keeps the curves as shown, the NaN and the step it was logged at included
    for rank in (0, 1):
        shown = {name: repr(curve.shown()) for name, curve in stored.writers[rank].curves.items()}
        assert shown == {name: repr(curve.shown()) for name, curve in runs.writers[rank].curves.items()}  # NaN too
    assert [(s, nonfinite_name(v)) for s, v in stored.writers[1].curves["loss"].shown() if math.isnan(v)] == [
        (7, "NaN")
    ]
    read_back = stored.writers[0].curves["loss"]  # a curve read back grows as any other
    before = read_back.shown()
    read_back.add(40, 0.5)
    assert read_back.shown() == [*before, (40, 0.5)]
    # a summary that did not change is not read again; the copies of summed-up writers are never read
    before = stored.requests
    stored.refresh()
    assert stored.requests == before + 1
    # node 0's first rank wrote a summary while rank 1's log on its disk still lacked its end, and
    # no last one (it was lost): the tab's end reads rank 1 from its copies, which hold it
    whole = logs[1].read_bytes()
    cut = next(end for _, end in parse_records(whole, _HEADER) if end > len(whole) // 2)
    logs[1].write_bytes(whole[:cut])
    assert NodeSummary(LocalRuns(tmp_path / "pod-0" / "wandb", planned), prefix, 0, interval_s=3600).write()
    tab = ReportTab(WandbOptions(project="p", run_mode="new"), prefix, 3, 1, 3, "r1", "a0", interval_s=3600)
    tab.finish(timeout_s=4.0, stopped=False)  # its flush has no Flyte report to write here: warned
    states = {row["ranks"]: row["state"] for row in parse(tab.html(final=True)).table()}
    assert states == {"0": "finished", "1": "failed (exit 1)", "2": "failed (exit 2)"}
    assert tab.stored.summarized == {0}
    # node 0's last summary, written while rank 1's log on its disk still lacked its end: rank 1 is
    # read from its copies, which hold it
    late = NodeSummary(LocalRuns(tmp_path / "pod-0" / "wandb", planned), prefix, 0, interval_s=3600)
    assert late.finish(timeout_s=1.0, stopped=True)
    assert read_summary(Path(summary_uri(prefix, 0)).read_bytes()).writers[1].exit_code is None
    stored.refresh()
    assert stored.summarized == {0} and stored.writers[1].exit_code == 1 and stored.writers[1].rows == 40
    assert stored.writers[0].exit_code == 0


def test_a_curve_keeps_a_bounded_number_of_divergences_spread_over_the_job() -> None:
    curve = Curve()
    for step in range(200_000):  # 2,000 runs of non-finite values, 3 steps each, every 100 steps
        curve.add(step, math.nan if step % 100 < 3 else float(step))
    shown = curve.shown()
    breaks = [s for s, v in shown if math.isnan(v)]
    assert MAX_BREAKS <= len(breaks) <= 2 * MAX_BREAKS
    assert all(s % 100 == 0 for s in breaks)  # the first step of a run, never a later one
    assert breaks[0] == 0 and breaks[-1] > 190_000  # spread over the whole job
    assert len([v for _, v in shown if math.isfinite(v)]) <= 2 * MAX_POINTS + 1


def test_the_tab_stays_bounded_for_a_thousand_runs() -> None:
    curve = [(s, float(s)) for s in range(0, 100_000, 500)]
    metrics = {f"m{k}": 1.0 for k in range(20)}
    curves = {f"m{k}": curve for k in range(20)}
    rows = [Row(f"run-{i}", ranks=[i], rows=100_000, metrics=metrics, curves=curves) for i in range(1000)]
    page = parse(render_tab(rows, "layout", "Live"))
    assert len(page.table()) == 1000  # every run is in the table, the rest folded
    assert render_tab(rows, "layout", "Live").count("<details>") == 1 and TABLE_ROWS < 1000
    # more writers than lines: each chart is the band across writers (no writer stands out here:
    # every one logged the same), and only the first MAX_CHARTS metrics are charted
    assert sorted(page.bands) == sorted(curves)[:MAX_CHARTS] and page.lines == {} and MAX_LINES < 1000


# -- real launches ----------------------------------------------------------------------------


def _report_path(tmp: Path, engine: str) -> Path:
    return tmp / "work-0" / "outputs" / "report.html" if engine == "elastic" else tmp / "out-0" / "report.html"


def _launch(engine: str, tmp: Path, options: dict[str, Any], env: dict[str, str]) -> tuple[Launch, list[str]]:
    """A 2 x 2 job with `report=True`; also every version of the tab seen while it ran."""
    seen: list[str] = []
    report = _report_path(tmp, engine)
    options = {"project": "p", "persist_interval": 1.0, **options}

    def watch(facts_dir: Path) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(facts_dir.glob("rank-*.json"))) < 4:
            if report.exists():
                text = report.read_text()
                if not seen or seen[-1] != text:
                    seen.append(text)
            time.sleep(0.2)

    inputs = {"steps": STEPS, "interval_s": 0.1, "diverge": True}  # rank 1's loss goes NaN and inf
    base = str(tmp / "storage")
    if engine == "elastic":
        config = {"nnodes": 2, "nproc_per_node": 2, "report": True, **options}
        job = launch(tmp, config, inputs, function="paced", extra_env=env, during=watch, run_base_dir=base, pods=True)
    else:
        config = {"replicas": 2, "nproc_per_node": 2, **options}
        job = launch_clustered(tmp, config, inputs, task="paced_report", extra_env=env, during=watch,
                               run_base_dir=base, pods=True)  # fmt: skip
    return job, seen


@pytest.mark.launch
# Elastic offline: the example's run below (`test_the_example_screenshots_its_tab_in_a_browser`).
# The clustered offline job's task sets its charts to 2 lines: its 4 writers are drawn as a spread.
@pytest.mark.parametrize(
    ("engine", "online", "lines"), [("clustered", False, 2), ("elastic", True, None), ("clustered", True, None)]
)
def test_a_job_writes_its_tab_live_and_final(
    tmp_path: Path, shared_wandb: WandbServer, engine: str, online: bool, lines: int | None
) -> None:
    run_mode = "shared" if online else "new"
    options = {"run_mode": run_mode, **({"entity": ENTITY, "host": shared_wandb.url} if online else {})}
    env = {**(shared_wandb.env() if online else {}), **({LINES_ENV: str(lines)} if lines else {})}
    job, seen = _launch(engine, tmp_path, options, env)
    assert job.errors == [], job.logs
    final = _report_path(tmp_path, engine).read_text()
    # live: a version written while the job ran already showed rows
    live = [parse(v) for v in seen if "Live, while the job runs" in v]
    assert any(int(row["steps"]) > 0 for page in live for row in page.table()), [p.table() for p in live]
    # final: every writer of the layout, with every row and its state
    page = parse(final)
    assert "Final: updated" in final
    table = page.table()
    plans = {(r["run"], r["label"] if r["label"] != "-" else "") for r in table}
    expected_ids = {run.run_id for run in job.runs}
    assert {run_id for run_id, _ in plans} == expected_ids
    assert len(table) == 4 and sorted(r["ranks"] for r in table) == ["0", "1", "2", "3"]
    assert all(r["steps"] == str(STEPS) and r["state"] == "finished" for r in table), table
    assert all(f"row={STEPS - 1}" in r["metrics"] for r in table)
    if lines is None:
        assert page.lines == {"loss": 4, "rank": 4, "row": 4}  # a chart per metric, a line per writer
        _assert_divergence_shown(final, table, tmp_path)
    else:
        _assert_spread_shown(final, table, tmp_path)
    if not online:  # `inspect` reads the stored run files back: strict JSON, the NaN named as W&B does
        inspect = [sys.executable, "-m", "flyte_wandb_elastic", "inspect", str(tmp_path / "storage")]
        runs = json.loads(_run(*inspect, "--json"), parse_constant=_not_json)
        last = {run["last_metrics"]["rank"]: run["last_metrics"]["loss"] for run in runs}
        assert last[1] == "NaN" and isinstance(last[3], float) and len(runs) == 4
        [rank_1] = [line for line in _run(*inspect).splitlines() if "rank=1" in line]
        assert "loss=NaN" in rank_1
    if online:  # the link is the page W&B itself gives for the run
        urls = {facts["url"] for facts in job.facts.values()}
        assert set(page.links) == urls and len(urls) == 1  # one shared run
    else:
        assert all("python -m flyte_wandb_elastic sync " in r["wandb"] for r in table)
    assert "shared / global" in final if online else "new / global" in final  # the layout picture


def _run(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def _not_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


def _assert_divergence_shown(final: str, table: list[dict[str, str]], tmp: Path) -> None:
    """The final tab of a `paced(diverge=True)` job: every writer's loss drawn, each non-finite
    value marked where it was logged (see `tasks.diverging_loss`), in the HTML and in a browser."""
    page = parse(final)
    assert all(re.fullmatch(r"[-0-9., MLh]*", c) for c in page.coordinates), page.coordinates  # no nan, no inf
    assert sorted(v for metric, v in page.marks if metric == "loss") == ["-Infinity", "Infinity", "NaN", "NaN"]
    assert [m for m in page.marks if m[0] != "loss"] == []  # one writer's NaN touches nothing else
    by_rank = {r["ranks"]: r for r in table}
    assert "loss=NaN" in by_rank["1"]["metrics"] and "loss=0.0" in by_rank["3"]["metrics"]
    if CHROMIUM is None:
        return
    loss = rendered(final, tmp)["charts"]["loss"]
    names = {rank: r["run"] + (f" ({r['label']})" if r["label"] != "-" else "") for rank, r in by_rank.items()}
    assert sorted(line["name"] for line in loss["lines"]) == sorted(names.values())
    assert all(line["length"] > 100 and line["height"] > 10 for line in loss["lines"]), loss["lines"]
    assert sorted((m["title"], m["label"]) for m in loss["marks"]) == sorted([
        (f"{names['1']}: loss = NaN at step 10", "NaN"),
        (f"{names['1']}: loss = Infinity at step 20", "+inf"),
        (f"{names['1']}: loss = NaN at step {STEPS - 1}", "NaN"),
        (f"{names['3']}: loss = -Infinity at step 15", "-inf"),
    ])  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_names_with_html_quotes_and_non_ascii_stay_inert_and_readable(tmp_path: Path) -> None:
    metric = """<img src=x onerror="document.title='XSS'">"""
    quoted, unusual = 'naïve "loss" ✓', "a&b <i>'"
    label = '<script>document.title="XSS"</script> écart'
    curves = {metric: [(0, 1.0), (1, 2.0)], quoted: [(0, 1.0), (1, math.nan), (2, 0.5)], unusual: [(0, math.inf)]}
    rows = [Row("run-1", label=label, ranks=[0], rows=3, metrics={metric: 2.0, quoted: 0.5}, curves=curves)]
    shown = rendered(render_tab(rows, "layout <b>bold</b>", 'status "quoted"'), tmp_path)
    assert shown["title"] == ""  # nothing ran
    assert shown["cells"][:2] == ["run-1", label]
    assert shown["cells"][4] == f"{metric}=2, {quoted}=0.5"
    assert {name: chart["caption"] for name, chart in shown["charts"].items()} == {m: m for m in curves}
    assert [m["title"] for m in shown["charts"][quoted]["marks"]] == [f"run-1 ({label}): {quoted} = NaN at step 1"]
    # a metric that never had a finite value: no line, its mark, and a chart that says so
    only_inf = shown["charts"][unusual]
    assert only_inf["lines"] == [] and [m["label"] for m in only_inf["marks"]] == ["+inf"]
    assert "no finite value" in only_inf["text"]


@pytest.mark.launch
def _assert_spread_shown(final: str, table: list[dict[str, str]], tmp: Path) -> None:
    """The final tab of a `paced(diverge=True)` job of 4 writers whose charts draw 2 lines: each
    chart the spread across writers, and the writers that stand out (see `tasks.diverging_loss`)."""
    page = parse(final)
    assert sorted(page.bands) == ["loss", "rank", "row"]
    # loss: rank 1's NaN and rank 3's -inf stand out, and rank 0 by its last value (rank / 100
    # below rank 2's, the median of the finite ones); ranks agree on `row`: nobody stands out
    assert page.lines == {"loss": 2, "rank": 2}
    assert page.coordinates and all(re.fullmatch(r"[-0-9., MLhVHZ]*", c) for c in page.coordinates)
    by_rank = {r["ranks"]: r for r in table}
    # the table lists the writers with a non-finite value first, then rank 0 (furthest), then the rest
    assert [r["ranks"] for r in table] == ["1", "3", "0", "2"]
    assert by_rank["1"]["why"].startswith("loss: NaN at step 10") and "-Infinity at step 15" in by_rank["3"]["why"]
    assert "furthest from the median" in by_rank["0"]["why"] and by_rank["2"]["why"] == ""
    if CHROMIUM is None:
        return
    loss = rendered(final, tmp)["charts"]["loss"]
    [area], [_] = loss["bands"], loss["medians"]
    assert area["title"] == "loss: min to max of 4 writers" and area["width"] > 400, area
    names = {rank: r["run"] for rank, r in by_rank.items()}
    assert [(line["name"], line["length"] > 100) for line in loss["lines"]] == [(names["1"], True), (names["0"], True)]
    assert loss["lines"][0]["why"].startswith("NaN at step 10")
    assert loss["lines"][1]["why"].endswith("furthest from the median")
    # the non-finite values are counted apart from the band, at the steps they were logged (of a
    # run of them, its first: NaN at 10-11 is kept at 10, as `_stored_runs.Curve` keeps it)
    steps = set()
    for count in loss["counts"]:
        first, last = re.search(r"at steps (\d+)-(\d+)", count["title"]).groups()  # type: ignore[union-attr]
        steps |= set(range(int(first), int(last) + 1))
    assert steps == {10, 15, 20, STEPS - 1}, loss["counts"]


@pytest.mark.launch
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_example_screenshots_its_tab_in_a_browser(tmp_path: Path) -> None:
    # how docs/images/report-tab.png is made: the example's 2 x 2 job, then a headless Chromium
    env = wandb_env(tmp_path)
    del env["WANDB_MODE"]  # the example chooses offline itself when there is no API key
    png = tmp_path / "tab.png"
    command = [sys.executable, str(REPO / "examples" / "report_tab.py"), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(
        [*command, "--screenshot", str(png)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout[done.stdout.index("run id") :].splitlines()[1:5]
    assert [line.split()[6] for line in table] == ["0"] * 4  # four runs, each finished
    page = parse((tmp_path / "work" / "node-0" / "outputs" / "report.html").read_text())
    assert page.lines == {"accuracy": 4, "loss": 4}
    assert [r["state"] for r in page.table()] == ["finished"] * 4
    # what the browser drew: a line of each of four colours (a line is hundreds of pixels, a
    # legend swatch a hundred), and no fifth
    shown = color_counts(png, COLORS)
    assert sorted(c for c, n in shown.items() if n > 300) == sorted(COLORS[:4]), shown


def test_run_files_prefix_is_every_ranks(tmp_path: Path) -> None:
    # the tab reads every rank's copies from one prefix: the one each rank's own prefix lies under
    from flyte_wandb_elastic._planner import run_files_prefix
    from flyte_wandb_elastic._report import action_prefix

    options = WandbOptions()
    prefixes = {action_prefix(run_files_prefix(options, "s3://b/r1", "r1", "a0", r) or "") for r in range(4)}
    assert prefixes == {"s3://b/r1/wandb/a0"}
    declared = WandbOptions(persist_to="s3://b/keep")
    assert action_prefix(run_files_prefix(declared, "s3://b/r1", "r1", "a0", 3) or "") == "s3://b/keep/r1/a0"
