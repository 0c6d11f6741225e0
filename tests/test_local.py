"""Local runs call the function once, in process, and still log one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import launch


@pytest.mark.parametrize("run_mode", ["auto", "shared", "new"])
def test_local_run_opens_exactly_one_run(tmp_path: Path, run_mode: str) -> None:
    config = {"nnodes": 1, "nproc_per_node": 2, "project": "p", "run_mode": run_mode}
    result = launch(tmp_path, config, inputs={"steps": 2}, mode="local")
    assert result.errors == []
    assert result.outcomes[0]["result"] == 1.0
    [run] = result.runs
    assert run.exit_code == 0
    assert [row["loss"] for row in run.rows] == [1.0, 0.5]
    assert run.config["flyte"]["world_size"] == 1
