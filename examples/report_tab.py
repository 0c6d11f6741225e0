"""The "Weights & Biases" tab of the task's Flyte report: 2 nodes x 2 ranks, one W&B run per rank.

With `report=True` on the task, global rank 0 writes the tab while the job runs (every
`persist_interval`) and once more at its end: a table of every rank's run (steps, last metrics,
state, where to find it) and a chart per metric, read from the run files every rank copies to the
run's storage. Offline unless WANDB_API_KEY is set, so the table says how to sync each run.

    python examples/report_tab.py [--work-dir DIR] [--screenshot PNG]

The report lands in DIR/node-0/outputs/report.html (open it in a browser); with `--screenshot`,
a headless Chromium (`chromium`) saves what it shows as a PNG.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import flyte

from flyte_wandb_elastic import WandbElastic, get_distributed_info, get_wandb_run

env = flyte.TaskEnvironment(
    name="report_tab",
    plugin_config=WandbElastic(
        nnodes=2,
        nproc_per_node=2,
        project="examples",
        run_mode="new",
        persist_interval=1,
        max_restarts=0,
        monitor_interval=1,
    ),
)


@env.task(report=True)
def train(steps: int = 150) -> float:
    """Each rank logs a loss curve of its own (faster for higher ranks) and an accuracy."""
    info = get_distributed_info()
    rank = info["rank"] if info else 0
    run = get_wandb_run()
    loss = 1.0
    for step in range(steps):
        loss = math.exp(-step / (40 + 15 * rank)) + 0.02 * math.sin(step / 3)
        run.log({"loss": loss, "accuracy": 1 - loss / 2})
        time.sleep(0.02)
    return loss


def screenshot(page: Path, png: Path) -> None:
    """What a browser shows of `page`, as a PNG (headless Chromium, nothing fetched)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("--screenshot needs chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--hide-scrollbars"]
        flags += [f"--user-data-dir={profile}", "--window-size=1200,900", f"--screenshot={png}"]
        subprocess.run([chromium, *flags, page.resolve().as_uri()], check=True, capture_output=True)


if __name__ == "__main__":
    from _offline import run_and_report

    parser = argparse.ArgumentParser()
    parser.add_argument("--work-dir", default=os.path.abspath("report-tab-example"))
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    run_and_report(train, work_dir=args.work_dir)
    report = Path(args.work_dir, "node-0", "outputs", "report.html")
    print(f"report: {report}")
    if args.screenshot:
        screenshot(report, args.screenshot)
        print(f"screenshot: {args.screenshot}")
