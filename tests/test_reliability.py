"""Failures look failed, W&B trouble never kills training, a killed rank keeps its rows.

Real launches (torch elastic on CPU, gloo), W&B offline files read back, bounded timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from flyte_wandb_elastic import sync_runs
from flyte_wandb_elastic._checkpoints import checkpoint_name
from tests.conftest import launch, wait_for_facts, wandb_core_processes
from tests.records import POD_ENV, console_url, records
from tests.servers import WandbServer

pytestmark = pytest.mark.launch

B = "r1-a0"
ONE_NODE = {"nnodes": 1, "nproc_per_node": 2, "project": "p"}
# monitor interval (0.1 s) + rank shutdown + W&B finish; far below the 60 s sleeps below
JOB_END_BOUND_S = 25


def md5_b64(path: Path) -> str:
    """A file's MD5 as W&B records it for a local reference (base64)."""
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def _no_core_left(tmp_path: Path) -> None:
    deadline = time.monotonic() + 10
    while wandb_core_processes(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert wandb_core_processes(tmp_path) == []


@pytest.mark.parametrize("run_mode", ["new", "shared"])
def test_raising_rank_records_its_error_and_fails_the_task(
    tmp_path: Path, run_mode: str, shared_wandb: WandbServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = {"steps": 3, "fail_rank": 1}
    result = launch(tmp_path, {**ONE_NODE, "run_mode": run_mode}, inputs=inputs, extra_env=POD_ENV)
    [error] = result.errors
    assert "ValueError: rank 1 failed on purpose" in error
    [failed] = [run for run in result.runs if run.config["flyte"]["rank"] == 1]
    assert failed.exit_code == 1
    assert failed.summary["flyte_error"] == "ValueError: rank 1 failed on purpose"
    assert len(failed.rows) == 3
    # rank 0 returned first, but the job failed: its run must not end as successful either
    [returned] = [run for run in result.runs if run.config["flyte"]["rank"] == 0]
    assert returned.exit_code == 143
    assert len(returned.rows) == 3
    # the primary run (rank 0's), stopped by torch elastic, alerts once with the peer's failure
    assert records(returned).alerts == [
        {
            "title": "Flyte job failed: r1/a0",
            "text": f"Rank 1 failed first: ValueError: rank 1 failed on purpose\nFlyte action: {console_url()}",
            "level": "ERROR",
        }
    ]
    assert records(failed).alerts == []
    if run_mode == "new":  # offline, the alert waits in the run files: `sync` sends it to W&B
        log = shared_wandb.data_dir / "server.log"
        before = log.read_text().count("notifyScriptableRunAlert(")
        for key, value in shared_wandb.env().items():
            monkeypatch.setenv(key, value)
        report = sync_runs(str(tmp_path / "work-0" / "base"))
        assert (len(report.synced), report.failed) == (2, {})
        # W&B sent the one alert of the primary run (openwandb has no alerts, and refuses it)
        assert log.read_text().count("notifyScriptableRunAlert(") == before + 1


@pytest.mark.exclusive
@pytest.mark.parametrize("run_mode", ["new", "shared"])
def test_ranks_stopped_by_torch_elastic_finish_failed_and_keep_rows(tmp_path: Path, run_mode: str) -> None:
    # rank 1 fails at step 1 while rank 0 sleeps: torch elastic then stops rank 0 with SIGTERM
    inputs = {"steps": 3, "fail_rank": 1, "fail_step": 1, "sleep_rank": 0, "sleep_s": 60}
    # the shared run's job turns the alert off
    alerts = {"alert_on_failure": False} if run_mode == "shared" else {}
    result = launch(tmp_path, {**ONE_NODE, "run_mode": run_mode, **alerts}, inputs=inputs)
    assert result.wall_s < JOB_END_BOUND_S
    [error] = result.errors
    assert "rank 1 failed on purpose at step 1" in error
    by_rank = {run.config["flyte"]["rank"]: run for run in result.runs}
    assert (by_rank[0].exit_code, by_rank[1].exit_code) == (143, 1)
    assert "SIGTERM" in by_rank[0].summary["flyte_error"]
    assert [len(by_rank[r].rows) for r in (0, 1)] == [1, 1]  # step 0, logged before the failure
    # no run of the failed job looks successful, the shared run's primary included
    assert all(run.exit_code not in (0, None) for run in result.runs)
    # the pod knew no console endpoint: the alert names the action instead of linking it
    expected = "Rank 1 failed first: ValueError: rank 1 failed on purpose at step 1\nFlyte action: r1/a0 in proj/dev"
    assert [a["text"] for a in records(by_rank[0]).alerts] == ([] if alerts else [expected])
    assert records(by_rank[1]).alerts == []
    _no_core_left(tmp_path)


@pytest.mark.exclusive
def test_rank_stopped_while_blocked_in_a_collective_finishes_failed(tmp_path: Path) -> None:
    # rank 1 stalls before step 1, so rank 0 blocks inside the step-1 all-reduce (native code)
    def stop_rank_0(facts_dir: Path) -> None:
        pid = wait_for_facts(facts_dir, 0)["pid"]
        time.sleep(3)  # rank 0 has logged step 0 and is blocked
        os.kill(pid, signal.SIGTERM)

    inputs = {"steps": 3, "sleep_rank": 1, "sleep_s": 60}
    result = launch(tmp_path, {**ONE_NODE, "run_mode": "new"}, inputs=inputs, during=stop_rank_0)
    assert result.wall_s < JOB_END_BOUND_S + 3
    assert len(result.errors) == 1
    by_rank = {run.config["flyte"]["rank"]: run for run in result.runs}
    assert by_rank[0].exit_code == 143
    assert len(by_rank[0].rows) == 1
    assert by_rank[1].exit_code not in (0, None)
    # stopped from outside, with no rank's failure recorded: cancelled, not failed, so no alert
    assert [records(run).alerts for run in result.runs] == [[], []]
    _no_core_left(tmp_path)


@pytest.mark.exclusive
def test_rank_killed_soon_after_logging_keeps_its_rows(tmp_path: Path) -> None:
    def kill_rank_0(facts_dir: Path) -> None:
        pid = wait_for_facts(facts_dir, 0)["pid"]
        time.sleep(2.5)  # step 0 logged right after the facts; then rank 0 waits on rank 1
        os.kill(pid, signal.SIGKILL)

    inputs = {"steps": 3, "sleep_rank": 1, "sleep_s": 60}
    result = launch(tmp_path, {**ONE_NODE, "run_mode": "new"}, inputs=inputs, during=kill_rank_0)
    assert len(result.errors) == 1
    [killed] = [run for run in result.runs if run.run_id == f"{B}-rank-0"]
    # the rank had no chance to finish; the node's shared service ends its run as failed
    assert killed.exit_code == 1
    assert [row["loss"] for row in killed.rows] == [1.0]


# `shared` falls back the same way on both engines in
# test_durable::test_server_down_for_the_whole_job_its_rows_outlive_the_pods_and_sync_once
@pytest.mark.parametrize("run_mode", ["auto", "new"])
def test_unreachable_server_falls_back_to_offline(tmp_path: Path, run_mode: str) -> None:
    config = {**ONE_NODE, "run_mode": run_mode, "mode": "online", "host": "http://127.0.0.1:9", "init_timeout": 5}
    result = launch(tmp_path, config, extra_env={"WANDB_API_KEY": "x" * 40})
    assert result.errors == []
    assert len(result.runs) == (1 if run_mode == "auto" else 2)
    assert all(run.exit_code == 0 and len(run.rows) == 3 for run in result.runs)
    assert all(run.path.parent.name.startswith("offline-run-") for run in result.runs)
    log = "".join(result.logs)
    assert "wandb.init failed" in log
    # it names the copy of the run in the run's storage, which outlives the pod
    assert f"Upload it later with: python -m flyte_wandb_elastic sync {tmp_path}/work-0/base/wandb/a0/rank-" in log


@pytest.mark.exclusive
def test_unreachable_server_can_fail_the_task_instead(tmp_path: Path) -> None:
    config = {
        **ONE_NODE,
        "mode": "online",
        "host": "http://127.0.0.1:9",
        "init_timeout": 5,
        "on_init_failure": "raise",
    }
    started = time.monotonic()
    result = launch(tmp_path, config, extra_env={"WANDB_API_KEY": "x" * 40})
    [error] = result.errors
    assert "CommError" in error
    assert time.monotonic() - started < 5 + JOB_END_BOUND_S  # init never hangs past its timeout


# one node: a node's W&B services carry the same load on one node as on two (its two writers'
# rows: one service each in `shared`, one for both in `new`)
@pytest.mark.parametrize("run_mode", ["shared", "new"])
def test_every_row_of_a_heavy_job_is_kept(tmp_path: Path, run_mode: str) -> None:
    rows = 3000
    result = launch(tmp_path, {**ONE_NODE, "run_mode": run_mode}, inputs={"steps": rows, "extra_metrics": 7})
    assert result.errors == [], result.logs
    assert len(result.runs) == 2
    for run in result.runs:
        assert run.exit_code == 0
        assert [row["_step"] for row in run.rows] == list(range(rows))
        assert all(len([k for k in row if not k.startswith("_")]) == 10 for row in run.rows)


# `auto`'s one writer is `shared`'s first (rank 0, the run of the same id)
@pytest.mark.parametrize("run_mode", ["shared", "new"])
def test_restarted_worker_group_reopens_its_runs_and_loses_nothing(tmp_path: Path, run_mode: str) -> None:
    config = {**ONE_NODE, "run_mode": run_mode, "max_restarts": 1}
    # the first start checkpoints (every rank its shard), the restarted one loads the checkpoint
    ckpt = tmp_path / "ckpt"
    result = launch(tmp_path, config, inputs={"steps": 3, "ckpt_dir": str(ckpt)}, function="flaky")
    assert result.errors == []
    assert result.outcomes[0]["result"] == 1  # finished on the first restart
    writers: dict[tuple[str, str], list] = {}
    for run in result.runs:
        writers.setdefault((run.run_id, run.label), []).append(run)
    assert len(writers) == 2  # two writers of one run, or two runs
    for files in writers.values():
        files.sort(key=lambda r: r.config["flyte"]["restart_count"])
        assert [f.config["flyte"]["restart_count"] for f in files] == [0, 1]
        rows = [row for f in files for row in f.rows]
        # both attempts' rows are kept, and steps never go back within the run
        assert [(row["restart"], row["row"]) for row in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
        assert [row["_step"] for row in rows] == list(range(6))
        assert files[-1].exit_code == 0
        # a start that torch elastic restarts is not the job's failure: no alert
        assert [records(f).alerts for f in files] == [[], []]
        # rank 0 recorded the checkpoint its first start wrote (a reference: URI and checksums),
        # and its restarted start's use of it (offline: kept for `sync`, which records the use)
        artifacts = [records(f).artifacts for f in files]
        if files[0].config["flyte"]["rank"] != 0:
            assert artifacts == [[], []]
            continue
        [logged], [used] = artifacts
        assert (logged["name"], logged["type"], logged["aliases"]) == (
            checkpoint_name(ckpt.as_uri()),
            "checkpoint",
            ["latest"],
        )
        assert logged["refs"] == {
            f"rank-{r}.bin": ((ckpt / f"rank-{r}.bin").as_uri(), md5_b64(ckpt / f"rank-{r}.bin")) for r in (0, 1)
        }
        assert (logged["use_after_commit"], used["use_after_commit"]) == (False, True)
        assert (used["name"], used["digest"], used["refs"]) == (logged["name"], logged["digest"], logged["refs"])
        assert (
            logged["metadata"]
            == used["metadata"]
            == {
                "uri": ckpt.as_uri(),
                "flyte": {
                    "project": "proj",
                    "domain": "dev",
                    "run_name": "r1",
                    "action_name": "a0",
                    "console_url": None,
                },
            }
        )


def test_flyte_retry_reopens_the_runs_of_the_failed_attempt(tmp_path: Path) -> None:
    config = {**ONE_NODE, "run_mode": "new"}
    first = launch(tmp_path, config, inputs={"steps": 3, "fail_rank": 1})
    assert len(first.errors) == 1
    retry = launch(tmp_path, config, inputs={"steps": 3}, extra_env={"FLYTE_ATTEMPT_NUMBER": "1"})
    assert retry.errors == []
    [failed_then_ok] = [[r for r in retry.runs if r.run_id == f"{B}-rank-1"]]
    failed_then_ok.sort(key=lambda r: r.config["flyte"]["attempt"])
    assert [(r.config["flyte"]["attempt"], r.exit_code) for r in failed_then_ok] == [(0, 1), (1, 0)]
    assert [row["_step"] for r in failed_then_ok for row in r.rows] == list(range(6))


def test_a_killed_wandb_service_loses_no_row(tmp_path: Path) -> None:
    # the node's wandb-core is killed (out of memory, say) while both ranks log: training goes on,
    # each run is reopened in a fresh service, and the rows the dead service had taken but not yet
    # written (it flushes every 15 s) are written again: every row, once, in order
    def kill_the_service(facts_dir: Path) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logged = [len(p.read_text().splitlines()) for p in facts_dir.glob("rank-*.steps")]
            if len(logged) == 2 and min(logged) >= 20:
                break
            time.sleep(0.05)
        for pid in wandb_core_processes(tmp_path):
            os.kill(pid, signal.SIGKILL)

    inputs = {"steps": 80, "interval_s": 0.05}
    result = launch(tmp_path, {**ONE_NODE, "run_mode": "new"}, inputs, function="paced", during=kill_the_service)
    assert result.errors == [], result.logs
    assert "is reopened in a fresh one" in "".join(result.logs)
    for rank in (0, 1):
        starts = sorted((r for r in result.runs if r.run_id == f"{B}-rank-{rank}"), key=lambda r: r.run_dir)
        assert len(starts) == 2  # the dead service's, and the reopened run's
        rows = [row for start in starts for row in start.rows]
        assert [row["row"] for row in rows] == list(range(80))
        steps = [row["_step"] for row in rows]
        assert steps == sorted(set(steps))
        assert starts[-1].exit_code == 0
    _no_core_left(tmp_path)
