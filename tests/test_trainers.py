"""Trainers that log to W&B themselves, on real launches: Lightning, Hugging Face, Accelerate.

Each test runs a trainer example as a user would (`python examples/<name>.py`: its real ranks
under torch elastic on CPU, W&B offline) and reads its run files back: the trainer's rows are in
the planned run of global rank 0, each rank's own row after training is in that rank's run (the
trainer left it open), no other run was created, and every run ended successfully. One launch per
trainer, 1 node x 2 ranks, in the layouts whose other ranks the trainer does not log to.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flyte_wandb_elastic import RunFile, read_run_files
from tests.conftest import REPO, wandb_env

pytestmark = pytest.mark.launch

STEPS = 4  # the examples' default `steps`


def run_example(tmp_path: Path, name: str) -> tuple[str, dict[str, RunFile]]:
    """Run `examples/<name>` as a user would; the base run id and its run files by writer (`rank-{r}`)."""
    env = wandb_env(tmp_path)
    del env["WANDB_MODE"]  # the examples choose offline themselves when there is no API key
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    runs = read_run_files(tmp_path)
    # every run directory holds a run file: a second run opened by the trainer would show here
    assert len(runs) == len(list((tmp_path / "wandb").glob("*run-*"))) == 2, [r.path for r in runs]
    base = re.match(r"local-[0-9a-f]{8}-a0", runs[0].run_id)
    assert base is not None, runs[0].run_id
    by_writer = {(r.label or r.run_id.removeprefix(f"{base.group()}-")): r for r in runs}
    assert set(by_writer) == {"rank-0", "rank-1"}, sorted(by_writer)
    assert all(r.project == "examples" and r.exit_code == 0 for r in runs)  # finished successfully, once
    return base.group(), by_writer


def assert_own_row_only(run: RunFile, rank: int, trainer_key: str) -> None:
    """A rank the trainer does not log from: its run holds the one row the task logged itself."""
    assert [row["rank"] for row in run.rows] == [rank], run.rows
    assert not any(trainer_key in row for row in run.rows)


def assert_wandb_reads_the_same(run: RunFile) -> None:
    """W&B's own reader (`wandb leet inspect`) agrees on the run id, exit code and last step."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json", str(run.path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    theirs = json.loads(out)
    assert (theirs["run_id"], theirs["exit_code"], theirs["step"]) == (run.run_id, 0, run.rows[-1]["_step"])


def test_lightning_wandb_logger_logs_into_rank_0s_run(tmp_path: Path) -> None:
    """`WandbLogger()` in `new` mode: rank 0's run holds Lightning's rows, rank 1's only its own."""
    base, runs = run_example(tmp_path, "lightning_trainer.py")
    rank0, rank1 = runs["rank-0"], runs["rank-1"]
    assert [(r.run_id, r.group) for r in (rank0, rank1)] == [(f"{base}-rank-0", base), (f"{base}-rank-1", base)]
    # one row per training step (`log_every_n_steps=1`), then the task's own: none lost, in order
    assert [row["_step"] for row in rank0.rows] == list(range(STEPS + 1))
    assert [row["trainer/global_step"] for row in rank0.rows[:STEPS]] == list(range(STEPS))
    assert all("train_loss" in row for row in rank0.rows[:STEPS])
    assert rank0.rows[-1]["rank"] == 0 and rank0.rows[-1]["final_train_loss"] == rank0.rows[STEPS - 1]["train_loss"]
    assert_own_row_only(rank1, 1, "train_loss")
    assert_wandb_reads_the_same(rank0)


def test_hf_trainer_logs_into_rank_0s_writer(tmp_path: Path) -> None:
    """`report_to=["wandb"]` in `shared` mode: the one run holds the Trainer's rows from rank 0's writer."""
    base, runs = run_example(tmp_path, "hf_trainer.py")
    rank0, rank1 = runs["rank-0"], runs["rank-1"]
    assert [(r.run_id, r.group, r.primary) for r in (rank0, rank1)] == [(base, "", True), (base, "", False)]
    # a row per logging step, the Trainer's closing row (its totals go to the summary), the task's own
    assert [row["_step"] for row in rank0.rows] == list(range(STEPS + 2))
    assert [row["train/global_step"] for row in rank0.rows[: STEPS + 1]] == [*range(1, STEPS + 1), STEPS]
    assert all("train/loss" in row for row in rank0.rows[:STEPS]) and "train/loss" not in rank0.rows[STEPS]
    assert rank0.rows[-1]["rank"] == 0 and rank0.rows[-1]["final_train_loss"] == rank0.summary["train_loss"]
    # the callback adds the training arguments and the model config to the planned run's config
    assert rank0.config["max_steps"] == STEPS and rank0.config["hidden_size"] == 16 and "flyte" in rank0.config
    assert_own_row_only(rank1, 1, "train/loss")
    assert_wandb_reads_the_same(rank0)


def test_accelerate_tracker_logs_into_rank_0s_run(tmp_path: Path) -> None:
    """The example's tracker in `new` mode: `Accelerator.log` rows in rank 0's run, config from `init_trackers`."""
    base, runs = run_example(tmp_path, "accelerate_trainer.py")
    rank0, rank1 = runs["rank-0"], runs["rank-1"]
    assert [(r.run_id, r.group) for r in (rank0, rank1)] == [(f"{base}-rank-0", base), (f"{base}-rank-1", base)]
    # `log(..., step=step)` for steps 0..3, then the task's own row after `end_training()`
    assert [row["_step"] for row in rank0.rows] == list(range(STEPS + 1))
    assert all("train_loss" in row for row in rank0.rows[:STEPS])
    assert rank0.rows[-1]["rank"] == 0 and rank0.rows[-1]["final_train_loss"] == rank0.rows[STEPS - 1]["train_loss"]
    assert rank0.config["lr"] == 0.1
    assert_own_row_only(rank1, 1, "train_loss")
    assert_wandb_reads_the_same(rank0)
