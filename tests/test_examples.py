"""Every example runs as a user would run it, with W&B offline, and prints the per-rank table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, wandb_env

pytestmark = pytest.mark.launch


def run_example(name: str, tmp_path: Path) -> str:
    env = wandb_env(tmp_path)
    del env["WANDB_MODE"]  # the examples choose offline themselves when there is no API key
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_quickstart_prints_one_row_per_rank(tmp_path: Path) -> None:
    out = run_example("quickstart.py", tmp_path)
    table = out[out.index("run id") :].splitlines()
    assert table[0].split()[:6] == ["run", "id", "group", "label", "primary", "steps"]
    rows = [line.split() for line in table[1:]]
    assert [(r[2], r[3], r[4], r[5]) for r in rows] == [("rank-0", "yes", "20", "0"), ("rank-1", "no", "20", "0")]
    assert len({r[0] for r in rows}) == 1  # one shared run
    assert str(tmp_path) in out  # says where the runs are
