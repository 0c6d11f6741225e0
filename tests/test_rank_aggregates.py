"""Every rank's picture (`rank_runs="offline"`): each rank's own offline run in storage, the cross-rank
aggregates of each metric in the primary's run, and `sync --ranks` of chosen ranks' stored runs.

One real 2 x 2 launch on torch elastic (the primary online against openwandb, each node with a disk
of its own); the aggregation itself and `sync --ranks` (against openwandb) without a launch.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flyte_wandb_elastic import WandbElastic, WandbOptions
from flyte_wandb_elastic._diagram import layout_diagram
from flyte_wandb_elastic._persist import fetch_copies
from flyte_wandb_elastic._planner import RankPlan, creation_slot, plan_rank
from flyte_wandb_elastic._rank_aggregates import aggregate
from flyte_wandb_elastic._runfiles import iter_records, read_run_files
from flyte_wandb_elastic._sync import rank_of
from flyte_wandb_elastic._topology import Topology
from flyte_wandb_elastic._wandb_load import wandb_load
from tests.conftest import cli, launch
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


@pytest.mark.parametrize("rank_scope", ["global", "worker"])
def test_every_rank_the_layout_leaves_without_a_run_opens_one_offline(rank_scope: str) -> None:
    options = WandbOptions(rank_scope=rank_scope, rank_runs="offline")  # type: ignore[arg-type]
    plans = [plan_rank(options, Topology.in_job(r, 2, 2), "r1", "a0", 2) for r in range(4)]
    if rank_scope == "global":
        assert plans == [
            RankPlan(opens_run=True, run_id="r1-a0", primary=True),
            *(RankPlan(True, f"r1-a0-rank-{r}", "r1-a0", primary=True, offline=True) for r in (1, 2, 3)),
        ]
    else:  # each node's first rank keeps its online run; the others' are grouped per node
        assert plans == [
            RankPlan(opens_run=True, run_id="r1-a0-worker-0", primary=True),
            RankPlan(True, "r1-a0-worker-0-rank-1", "r1-a0-worker-0", primary=True, offline=True),
            RankPlan(opens_run=True, run_id="r1-a0-worker-1", primary=True, creation_order=1),
            RankPlan(True, "r1-a0-worker-1-rank-1", "r1-a0-worker-1", primary=True, offline=True),
        ]
    # an offline run asks W&B for nothing: no creation slot, no online load
    assert all(creation_slot(options, p) == 0 for p in plans if p.offline)
    at_scale = wandb_load(options, 1024, 8)
    plain = wandb_load(WandbOptions(rank_scope=rank_scope), 1024, 8)  # type: ignore[arg-type]
    assert (at_scale.runs, at_scale.writers) == (plain.runs, plain.writers)
    assert "offline, to storage" in layout_diagram(options, 2, 2)


def test_rank_runs_is_checked_at_declaration() -> None:
    with pytest.raises(ValueError, match=r"rank_runs='online' is not valid: expected 'offline'"):
        WandbOptions(rank_runs="online")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"rank_runs='offline' is not valid: expected None with run_mode='new'"):
        WandbElastic(nnodes=2, nproc_per_node=2, run_mode="new", rank_runs="offline")
    assert WandbElastic(nnodes=2, nproc_per_node=2, rank_runs="offline").rank_runs == "offline"


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

    chosen = cli("sync", "--ranks", "0,2", str(storage), env=wandb_server.env())
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert "2 synced, 0 already synced, 0 failed" in chosen.stdout
    assert [r["x"] for r in wandb_server.rows(PROJECT, "r0")] == [0, 1, 2, 3, 4]
    assert [r["x"] for r in wandb_server.rows(PROJECT, "r2")] == [20, 21, 22, 23, 24]
    assert wandb_server.rows(PROJECT, "r1") == [] and "r1" not in wandb_server.runs()

    # the rest later, and what was synced is not sent again
    rest = cli("sync", str(storage), env=wandb_server.env())
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "1 synced, 2 already synced, 0 failed" in rest.stdout
    assert [r["x"] for r in wandb_server.rows(PROJECT, "r1")] == [10, 11, 12, 13, 14]

    none = cli("sync", "--ranks", "5", str(storage), env=wandb_server.env())
    assert none.returncode != 0 and "nothing is stored there for rank(s) 5" in none.stderr
    bad = cli("sync", "--ranks", "1,x", str(storage), env=wandb_server.env())
    assert bad.returncode == 2 and "'1,x' is not valid: expected global ranks separated by commas" in bad.stderr


# -- a real launch -----------------------------------------------------------------------------------------

STEPS = 30


@pytest.mark.launch
def test_every_rank_writes_its_run_offline_and_rank_0_logs_their_aggregates(
    tmp_path: Path, wandb_server: WandbServer
) -> None:
    # 2 x 2 ranks on torch elastic, each node with a disk of its own (deleted after the job): the
    # primary logs online to a W&B server on loopback, ranks 1-3 write their own runs offline to
    # storage beside the primary's copy; rank 1's loss goes NaN and inf
    base = str(tmp_path / "storage")
    config = {"nnodes": 2, "nproc_per_node": 2, "project": PROJECT, "persist_interval": 1.0, "rank_runs": "offline"}
    config.update(entity=ENTITY, host=wandb_server.url)
    inputs = {"steps": STEPS, "interval_s": 0.1, "diverge": True}
    job = launch(tmp_path, config, inputs, function="paced", run_base_dir=base, pods=True, extra_env=wandb_server.env())
    assert job.errors == [], job.logs
    assert not any(tmp_path.glob("pod-*"))  # the pods' disks are gone: what follows is read from storage

    with tempfile.TemporaryDirectory() as tmp:
        stored = {run.run_id: run for run in read_run_files(fetch_copies(base, Path(tmp)))}
        assert sorted(stored) == ["r1-a0", "r1-a0-rank-1", "r1-a0-rank-2", "r1-a0-rank-3"]
        by_rank = {run.config["flyte"]["rank"]: run for run in stored.values()}
        assert sorted(by_rank) == [0, 1, 2, 3]
        assert {r: (run.group, run.exit_code) for r, run in by_rank.items() if r} == {
            r: ("r1-a0", 0) for r in (1, 2, 3)
        }
        logged = {r: [row for row in run.rows if "row" in row] for r, run in by_rank.items()}
        assert {r: [row["row"] for row in rows] for r, rows in logged.items()} == {
            r: list(range(STEPS)) for r in range(4)
        }
        primary = by_rank[0]
        definitions = [
            (m.metric.glob_name or m.metric.name, m.metric.step_metric)
            for m in iter_records(primary.path)
            if m.WhichOneof("record_type") == "metric"
        ]

    # the user's rows keep their steps: the aggregates join them, never move them
    assert [(row["_step"], row["row"]) for row in logged[0]] == [(s, s) for s in range(STEPS)]
    assert ("ranks/*", "ranks/step") in definitions, definitions
    aggregates = [row for row in primary.rows if "ranks/step" in row]
    assert len(aggregates) >= 2, primary.rows
    steps = [row["ranks/step"] for row in aggregates]
    assert steps == sorted(set(steps)) and steps[0] == 0
    values = {r: {m: [row[m] for row in rows] for m in ("row", "rank", "loss")} for r, rows in logged.items()}
    for row in aggregates:
        for metric in ("row", "rank", "loss"):
            name = f"ranks/{metric}"
            seen = row[f"{name}/finite"] + row[f"{name}/nonfinite"]
            assert 1 <= seen <= 4, row
            if row[f"{name}/finite"]:
                low, high, mean = row[f"{name}/min"], row[f"{name}/max"], row[f"{name}/mean"]
                # each extreme is a value its rank logged, and the mean lies between them
                assert low in values[row[f"{name}/min_rank"]][metric], (metric, row)
                assert high in values[row[f"{name}/max_rank"]][metric], (metric, row)
                assert low <= mean <= high and all(math.isfinite(v) for v in (low, high, mean))
    # the last row, after every peer's end: every rank, rank 1's last loss (NaN) counted apart
    last = aggregates[-1]
    assert (last["ranks/rank/finite"], last["ranks/rank/mean"]) == (4, 1.5)
    assert (last["ranks/rank/min_rank"], last["ranks/rank/max_rank"]) == (0, 3)
    assert (last["ranks/loss/finite"], last["ranks/loss/nonfinite"]) == (3, 1)
    finals = [values[r]["loss"][-1] for r in (2, 3)]  # ranks 2 and 3, whose ends rank 0 waited for
    assert last["ranks/loss/max"] >= max(finals) and last["ranks/row/max"] == STEPS - 1
    # online, W&B got the primary's run with every row of aggregates; the ranks' own runs stayed offline
    assert wandb_server.runs() == {"r1-a0": "finished"}
    online = [row for row in wandb_server.rows(PROJECT, "r1-a0") if "ranks/step" in row]
    assert [row["ranks/step"] for row in online] == steps
    assert (online[-1]["ranks/rank/finite"], online[-1]["ranks/rank/mean"]) == (4, 1.5)
