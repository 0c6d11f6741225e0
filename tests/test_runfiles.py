"""The offline run-file reader and the `inspect` command, on files that wandb itself wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import wandb

from flyte_wandb_elastic._runfiles import (
    find_run_files,
    format_table,
    iter_records,
    read_run_file,
    recorded_exit_code,
)
from tests.conftest import assert_agrees_with_wandb_reader

ROWS = 2000  # enough rows for the file to span several 32 KiB blocks


@pytest.fixture
def run_file(wandb_offline: Path) -> Path:
    # `dir` is explicit: wandb keeps the first WANDB_DIR it saw for the rest of the process.
    run = wandb.init(project="p", id="reader-test", group="g", config={"lr": 0.5}, dir=wandb_offline)
    for step in range(ROWS):
        run.log({"loss": 1.0 / (step + 1), "step_name": f"s{step}"})
    run.finish(exit_code=3)
    [path] = find_run_files(wandb_offline)
    return path


def test_reads_back_every_row(run_file: Path) -> None:
    assert run_file.stat().st_size > 3 * 32 * 1024
    run = read_run_file(run_file)
    assert (run.run_id, run.project, run.group, run.exit_code, run.primary) == (
        "reader-test",
        "p",
        "g",
        3,
        True,
    )
    assert run.config["lr"] == 0.5
    assert [row["_step"] for row in run.rows] == list(range(ROWS))
    assert run.rows[-1]["step_name"] == f"s{ROWS - 1}"
    assert run.last_metrics == {"loss": 1.0 / ROWS, "step_name": f"s{ROWS - 1}"}
    assert recorded_exit_code(run_file) == 3  # found without decoding the rows


def test_truncated_tail_keeps_the_complete_prefix(run_file: Path, tmp_path: Path) -> None:
    data = run_file.read_bytes()
    full = read_run_file(run_file)
    previous = -1
    for cut in (len(data) // 3, len(data) // 2, len(data) - 5, len(data) - 1):
        truncated = tmp_path / f"run-cut-{cut}.wandb"
        truncated.write_bytes(data[:cut])
        run = read_run_file(truncated)
        assert run.exit_code is None
        assert recorded_exit_code(truncated) is None
        assert run.rows == full.rows[: len(run.rows)]
        assert len(run.rows) >= previous
        previous = len(run.rows)
    assert 0 < previous <= ROWS


def test_rejects_a_file_that_is_not_a_run_file(tmp_path: Path) -> None:
    bogus = tmp_path / "run-x.wandb"
    bogus.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        list(iter_records(bogus))
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        recorded_exit_code(bogus)


def test_inspect_command_prints_one_row_per_run_file(run_file: Path, wandb_offline: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flyte_wandb_elastic", "inspect", str(wandb_offline)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == format_table([read_run_file(run_file)]) + "\n"
    header, row = out.splitlines()
    assert header.split() == [
        *("run", "id", "project", "group", "label", "primary", "steps", "exit", "run", "dir", "last", "metrics")
    ]
    assert row.split()[:8] == ["reader-test", "p", "g", "-", "yes", str(ROWS), "3", run_file.parent.name]


def test_inspect_command_json_agrees_with_wandbs_own_reader(run_file: Path, wandb_offline: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flyte_wandb_elastic", "inspect", "--json", str(wandb_offline)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [run] = json.loads(out)
    assert {k: run[k] for k in ("run_id", "project", "group", "primary", "steps", "exit_code")} == {
        "run_id": "reader-test",
        "project": "p",
        "group": "g",
        "primary": True,
        "steps": ROWS,
        "exit_code": 3,
    }
    assert (run["run_dir"], run["config"]["lr"]) == (run_file.parent.name, 0.5)
    assert_agrees_with_wandb_reader([read_run_file(run_file)])


def test_inspect_command_fails_on_an_empty_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flyte_wandb_elastic", "inspect", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "no W&B run files" in result.stderr
