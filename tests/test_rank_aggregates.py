"""Every rank's picture: the cross-rank aggregates of each metric, and `sync --ranks` of chosen ranks' stored runs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flyte_wandb_elastic._rank_aggregates import aggregate
from flyte_wandb_elastic._sync import rank_of
from tests.conftest import REPO
from tests.servers import ENTITY, WandbServer

PROJECT = "p"


def test_aggregates_of_finite_values_name_the_rank_of_each_extreme() -> None:
    latest = {0: {"loss": 2.0, "lr": 0.1}, 1: {"loss": 0.5, "lr": 0.1}, 2: {"loss": 3.5, "lr": 0.1}, 3: {"loss": 1.0}}
    row = aggregate(latest)
    assert row["ranks/loss/mean"] == pytest.approx((2.0 + 0.5 + 3.5 + 1.0) / 4)
    assert (row["ranks/loss/min"], row["ranks/loss/min_rank"]) == (0.5, 1)
    assert (row["ranks/loss/max"], row["ranks/loss/max_rank"]) == (3.5, 2)
    assert (row["ranks/loss/finite"], row["ranks/loss/nonfinite"]) == (4, 0)
    # a metric only some ranks log is taken over those; a tie names the lowest rank
    assert (row["ranks/lr/finite"], row["ranks/lr/min_rank"], row["ranks/lr/max_rank"]) == (3, 0, 0)


def test_nonfinite_values_are_counted_apart_never_in_min_mean_or_max() -> None:
    nan, inf = float("nan"), float("inf")
    row = aggregate({0: {"loss": nan}, 1: {"loss": 1.5}, 2: {"loss": -inf}, 3: {"loss": 2.5}, 4: {"loss": inf}})
    assert row["ranks/loss/nonfinite"] == 3 and row["ranks/loss/finite"] == 2
    assert (row["ranks/loss/min"], row["ranks/loss/max"], row["ranks/loss/mean"]) == (1.5, 2.5, 2.0)
    assert (row["ranks/loss/min_rank"], row["ranks/loss/max_rank"]) == (1, 3)
    assert all(math.isfinite(v) for v in row.values())
    # every rank diverged: the count alone, no statistic over nothing
    only = aggregate({0: {"loss": nan}, 1: {"loss": inf}})
    assert only == {"ranks/loss/finite": 0, "ranks/loss/nonfinite": 2}


def test_what_is_not_a_number_and_aggregates_themselves_are_left_out() -> None:
    latest = {
        0: {"_step": 3, "_timestamp": 1.0, "ok": True, "name": "a", "img": {"_type": "image-file"}, "x": 1},
        1: {"ranks/x/mean": 9.0, "x": 3},
    }
    assert aggregate(latest) == {
        "ranks/x/finite": 2,
        "ranks/x/nonfinite": 0,
        "ranks/x/mean": 2.0,
        "ranks/x/min": 1.0,
        "ranks/x/min_rank": 0,
        "ranks/x/max": 3.0,
        "ranks/x/max_rank": 1,
    }
    assert aggregate({}) == {} and aggregate({0: {}}) == {}


def test_the_rank_of_a_stored_path_is_its_innermost_rank_folder() -> None:
    assert rank_of("s3://b/base/wandb/a0/rank-17/offline-run-x/run-x.wandb.parts/0") == 17
    assert rank_of("/tmp/rank-3/wandb/a0/rank-42/run-x") == 42
    assert rank_of("s3://b/base/wandb/a0/manifest.json") is None


# three runs written offline by wandb itself, one per rank: `sync --ranks` of the runs a job
# stored, as `run_files_prefix` lays them out (`<action>/rank-<r>/<run dir>/...`)
_RUNS = """
import wandb
for rank in range(3):
    run = wandb.init(id=f"r{rank}", project="p", entity=%r, mode="offline")
    for i in range(5):
        run.log({"x": 10 * rank + i})
    run.finish()
"""


@pytest.fixture
def wandb_server(tmp_path: Path) -> Iterator[WandbServer]:
    server = WandbServer(tmp_path / "openwandb")
    server.start()
    yield server
    server.stop()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return subprocess.run(
        [sys.executable, "-m", "flyte_wandb_elastic", *args],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sync_ranks_uploads_only_the_chosen_ranks_runs(tmp_path: Path, wandb_server: WandbServer) -> None:
    pod = tmp_path / "pod"
    env = {**os.environ, "WANDB_DIR": str(pod)}
    subprocess.run([sys.executable, "-c", _RUNS % ENTITY], env=env, check=True, capture_output=True)
    storage = tmp_path / "storage"
    for rank in range(3):
        [run_dir] = (pod / "wandb").glob(f"offline-run-*-r{rank}")
        log = run_dir / f"run-r{rank}.wandb"
        parts = storage / "wandb" / "a0" / f"rank-{rank}" / run_dir.name / f"{log.name}.parts"
        parts.mkdir(parents=True)
        (parts / f"{0:015d}").write_bytes(log.read_bytes())

    chosen = _cli("sync", "--ranks", "0,2", str(storage), env=wandb_server.env())
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert "2 synced, 0 already synced, 0 failed" in chosen.stdout
    assert [r["x"] for r in wandb_server.rows(PROJECT, "r0")] == [0, 1, 2, 3, 4]
    assert [r["x"] for r in wandb_server.rows(PROJECT, "r2")] == [20, 21, 22, 23, 24]
    assert wandb_server.rows(PROJECT, "r1") == [] and "r1" not in wandb_server.runs()

    # the rest later, and what was synced is not sent again
    rest = _cli("sync", str(storage), env=wandb_server.env())
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "1 synced, 2 already synced, 0 failed" in rest.stdout
    assert [r["x"] for r in wandb_server.rows(PROJECT, "r1")] == [10, 11, 12, 13, 14]

    none = _cli("sync", "--ranks", "5", str(storage), env=wandb_server.env())
    assert none.returncode != 0 and "nothing is stored there for rank(s) 5" in none.stderr
    bad = _cli("sync", "--ranks", "1,x", str(storage), env=wandb_server.env())
    assert bad.returncode == 2 and "'1,x' is not valid: expected global ranks separated by commas" in bad.stderr
