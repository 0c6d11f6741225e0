"""W&B costs one service per node, and nothing on ranks that open no run (counted, not timed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Launch, launch, peak_wandb_cores, wandb_core_processes

pytestmark = pytest.mark.launch


def _peak_services(tmp_path: Path, run_mode: str, nnodes: int, nproc: int) -> tuple[int, Launch]:
    config = {"nnodes": nnodes, "nproc_per_node": nproc, "project": "p", "run_mode": run_mode}
    return peak_wandb_cores(tmp_path, lambda: launch(tmp_path, config, inputs={"steps": 200}))


@pytest.mark.parametrize(("nnodes", "nproc"), [(1, 3), (2, 2)])
def test_rank_runs_share_one_wandb_service_per_node(tmp_path: Path, nnodes: int, nproc: int) -> None:
    peak, result = _peak_services(tmp_path, "new", nnodes, nproc)
    assert result.errors == []
    assert len(result.runs) == nnodes * nproc
    assert all(run.exit_code == 0 and len(run.rows) == 200 for run in result.runs)
    assert peak == nnodes  # not one per rank
    assert wandb_core_processes(tmp_path) == []


def test_shared_run_writers_keep_one_service_each(tmp_path: Path) -> None:
    # a W&B service holds one stream per run id: writers of one shared run cannot share it
    peak, result = _peak_services(tmp_path, "shared", 1, 3)
    assert result.errors == []
    assert len(result.runs) == 3
    assert peak == 3


def test_ranks_without_a_run_never_import_wandb(tmp_path: Path) -> None:
    result = launch(tmp_path, {"nnodes": 1, "nproc_per_node": 2, "project": "p", "run_mode": "auto"})
    assert result.errors == []
    assert {rank: facts["wandb_imported"] for rank, facts in result.facts.items()} == {0: True, 1: False}
