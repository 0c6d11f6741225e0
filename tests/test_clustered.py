"""Clustered tasks (JobSet + torchrun): the real worker command per node, run files read back.

Every launch runs what Flyte's `clustered` entrypoint execs in each pod (`torchrun ... --no-python
-- a0 ...`), so each rank is a full `a0`. The expected layouts are the same hand-written tables as
the Elastic launches: a clustered job logs exactly as the same declaration on `Elastic`.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from flyteidl2.core import execution_pb2
from google.protobuf.json_format import MessageToDict

from flyte_wandb_elastic import read_run_files
from tests.conftest import (
    Launch,
    launch,
    launch_clustered,
    peak_wandb_cores,
    wait_for_facts,
    wandb_core_processes,
    wandb_env,
)
from tests.online import layout_launch
from tests.records import assert_links_back, console_url, records
from tests.serialize import deploy_path_spec, links, serialize
from tests.test_launch import STEPS, TWO_NODES, _check_rows

pytestmark = pytest.mark.launch

# the Elastic task's declaration of the same job, for the decorator path: upstream-style code
TASKS = {"train": {}, "train_decorated": {"via_globals": True}}


def clustered_task(config: dict[str, Any], name: str = "train") -> Any:
    """The task `name` of `tests.clustered_tasks`, built for `config` as the pods build it."""
    saved = os.environ.get("CLUSTERED_CONFIG")
    os.environ["CLUSTERED_CONFIG"] = json.dumps(config)
    try:
        return getattr(importlib.reload(importlib.import_module("tests.clustered_tasks")), name)
    finally:
        os.environ.pop("CLUSTERED_CONFIG") if saved is None else os.environ.update(CLUSTERED_CONFIG=saved)


def _check_launch(result: Launch, config: dict[str, Any], task: str, expected: list[Any]) -> list[str]:
    """The launch wrote the `expected` runs, rows and metadata; the console links, which name them."""
    nnodes, nproc = config["replicas"], config["nproc_per_node"]
    world = nnodes * nproc
    assert result.errors == [], result.logs
    # exactly one node holds global rank 0, and only it uploads the output
    assert [o["result"] for o in result.outcomes if "result" in o] == [
        sum(sum(range(s, s + world)) for s in range(STEPS))
    ]
    assert result.layout() == expected
    _check_rows(result, world_size=world)
    for run in result.runs:
        meta = run.config["flyte"]
        assert (meta["project"], meta["domain"], meta["run_name"], meta["action_name"]) == ("proj", "dev", "r1", "a0")
        assert (meta["attempt"], meta["restart_count"], meta["jobset_restart_attempt"]) == (0, 0, 0)
        assert (meta["world_size"], meta["nproc_per_node"]) == (world, nproc)
        # per-node ids follow torchrun's node numbering, on which every rank of a node agrees
        assert meta["node_rank"] == meta["rank"] // nproc and meta["local_rank"] == meta["rank"] % nproc
        assert meta["pod_index"] in range(nnodes)
        if config.get("rank_scope") == "worker" and nnodes > 1:
            assert f"-worker-{meta['node_rank']}" in run.run_id
    opened = {run.rows[0]["rank"]: run.run_id for run in result.runs}
    assert {r: f["run_id"] for r, f in result.facts.items()} == {r: opened.get(r) for r in range(world)}
    if TASKS[task]:  # upstream-style code imports wandb itself: `wandb.run` is the rank's run
        assert {r: f["global_run_id"] for r, f in result.facts.items()} == {r: opened.get(r) for r in range(world)}
    else:  # and otherwise, ranks without a run never import it
        assert {r: f["wandb_imported"] for r, f in result.facts.items()} == {r: r in opened for r in range(world)}
    # the console links of the same task name exactly the runs (or groups) written
    config = {"entity": "team", **config}
    spec = serialize(clustered_task(config, task), "r1", "proj", "dev", {})
    uris = [uri.replace("{{.actionName}}", "a0") for _, uri in links(spec)]
    prefix = f"{config.get('host', 'https://wandb.ai')}/{config['entity']}/p/"
    if config["run_mode"] == "new":
        assert {u.removeprefix(prefix + "groups/") for u in uris} == {run.group for run in result.runs}
    else:
        assert {u.removeprefix(prefix + "runs/") for u in uris} == {run.run_id for run in result.runs}
    return uris


# Each layout with one of the two APIs (the environment's `train`, upstream's `@wandb_init`), so
# that each API covers every run mode. Jobs of one pod are launched below (failures, restarts, a
# W&B service per node, the local run). The `ONLINE` layouts log to a W&B-compatible server, their
# runs' storage in an S3-compatible one (tests/online.py); the `new` layouts go online, through a
# server outage, in tests/test_durable.py.
ONLINE = {("auto", "global"), ("shared", "worker")}
TWO_NODE_CASES = [
    ("train_decorated", "auto", "global"),
    ("train", "auto", "worker"),
    ("train", "shared", "global"),
    ("train_decorated", "shared", "worker"),
    ("train_decorated", "new", "global"),
    ("train", "new", "worker"),
]


@pytest.mark.parametrize(("task", "run_mode", "rank_scope"), TWO_NODE_CASES)
def test_two_nodes_two_ranks(
    tmp_path: Path, request: pytest.FixtureRequest, task: str, run_mode: str, rank_scope: str
) -> None:
    config = {"replicas": 2, "nproc_per_node": 2, "project": "p", "run_mode": run_mode, "rank_scope": rank_scope}
    online, where = layout_launch(request, (run_mode, rank_scope) in ONLINE, config)
    inputs = {"steps": STEPS, **TASKS[task]}
    result = launch_clustered(tmp_path, config, inputs=inputs, task=task, **where)
    uris = _check_launch(result, config, task, TWO_NODES[(run_mode, rank_scope)])
    if online is not None:
        online.check(result, "p", STEPS, uris, stored=run_mode == "shared")  # the most writers
    assert_links_back(result.runs, console_url(), [], None)


def test_spec_is_still_a_clustered_task_with_links_and_secret() -> None:
    config = {"replicas": 2, "nproc_per_node": 4, "entity": "team", "project": "p", "run_mode": "shared"}
    for name in TASKS:
        task = clustered_task({**config, "rank_scope": "worker", "api_key_secret": "wandb-key"}, name)
        spec = deploy_path_spec(task)
        template = spec.task_template
        assert template.type == "clustered-task"
        assert template.container.args[0] == "clustered"
        custom = MessageToDict(template.custom)
        assert (custom["replicas"], custom["nprocPerNode"]) == (2, 4)
        b = "{{.runName}}-{{.actionName}}"
        assert [uri for _, uri in links(spec)] == [
            f"https://wandb.ai/team/p/runs/{b}-worker-0",
            f"https://wandb.ai/team/p/runs/{b}-worker-1",
        ]
        if name == "train":  # the secret is declared on the environment
            [secret] = template.security_context.secrets
            assert (secret.key, secret.env_var) == ("wandb-key", "WANDB_API_KEY")


ONE = {"replicas": 1, "nproc_per_node": 2, "project": "p"}


def _by_rank(result: Launch) -> dict[int, Any]:
    return {run.config["flyte"]["rank"]: run for run in result.runs}


@pytest.mark.parametrize("run_mode", ["new", "shared"])
def test_raising_rank_fails_its_run_and_stops_the_others(tmp_path: Path, run_mode: str) -> None:
    result = launch_clustered(tmp_path, {**ONE, "run_mode": run_mode}, inputs={"steps": 3, "fail_rank": 1})
    assert [o["rc"] for o in result.outcomes] == [1]
    runs = _by_rank(result)
    assert (runs[1].exit_code, runs[1].summary["flyte_error"]) == (1, "ValueError: rank 1 failed on purpose")
    # rank 0 returned first, but the job failed: its run must not end as successful either
    assert runs[0].exit_code == 143
    assert [len(runs[r].rows) for r in (0, 1)] == [3, 3]
    # only rank 0 may write the task's error: stopped by torchrun, it names the rank that failed
    document = execution_pb2.ErrorDocument.FromString((tmp_path / "out-0" / "error.pb").read_bytes())
    assert document.error.message == "rank 1 failed: ValueError: rank 1 failed on purpose"
    # and its run, the job's primary, alerts once with the same first failure
    expected = "Rank 1 failed first: ValueError: rank 1 failed on purpose\nFlyte action: r1/a0 in proj/dev"
    assert [alert["text"] for alert in records(runs[0]).alerts] == [expected]
    assert records(runs[1]).alerts == []


def test_run_ranks_locally_runs_the_worker_command_and_reports_rank_0s_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flyte_wandb_elastic import run_ranks_locally

    for key, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    config = {**ONE, "run_mode": "new"}
    monkeypatch.setenv("CLUSTERED_CONFIG", json.dumps(config))
    task = clustered_task(config)
    assert run_ranks_locally(task, run_name="ok", steps=2) == 1.0 + 3.0
    with pytest.raises(RuntimeError, match="rank 0 failed on purpose"):
        run_ranks_locally(task, run_name="bad", steps=2, fail_rank=0)
    files = read_run_files(tmp_path / "wandb")
    runs = {(run.run_id, run.exit_code) for run in files}
    assert runs == {("ok-a0-rank-0", 0), ("ok-a0-rank-1", 0), ("bad-a0-rank-0", 1), ("bad-a0-rank-1", 143)}
    # rank 0 failed first: its own error is the alert; a local run knows no console, so no link
    alerts = {run.run_id: [a["text"] for a in records(run).alerts] for run in files}
    own = "Rank 0 failed first: ValueError: rank 0 failed on purpose\nFlyte action: bad/a0 in local/development"
    assert alerts == {"ok-a0-rank-0": [], "ok-a0-rank-1": [], "bad-a0-rank-0": [own], "bad-a0-rank-1": []}
    assert {run.config["flyte"]["console_url"] for run in files} == {None}


@pytest.mark.exclusive
def test_rank_stopped_while_blocked_in_a_collective_finishes_failed(tmp_path: Path) -> None:
    # rank 1 stalls before step 1, so rank 0 blocks inside the step-1 all-reduce (native code)
    def stop_rank_0(facts_dir: Path) -> None:
        pid = wait_for_facts(facts_dir, 0)["pid"]
        time.sleep(3)
        os.kill(pid, signal.SIGTERM)

    inputs = {"steps": 3, "sleep_rank": 1, "sleep_s": 60.0}
    result = launch_clustered(tmp_path, {**ONE, "run_mode": "new"}, inputs=inputs, during=stop_rank_0)
    assert result.wall_s < 30
    assert [o["rc"] for o in result.outcomes] != [0]
    runs = _by_rank(result)
    assert (runs[0].exit_code, len(runs[0].rows)) == (143, 1)
    assert "SIGTERM" in runs[0].summary["flyte_error"]
    assert runs[1].exit_code == 143  # torchrun stopped it in its sleep
    assert all(run.exit_code not in (0, None) for run in result.runs)


# `auto`'s one writer is `shared`'s first (rank 0, the run of the same id)
@pytest.mark.parametrize("run_mode", ["shared", "new"])
def test_torchrun_restart_reopens_the_runs_and_loses_nothing(tmp_path: Path, run_mode: str) -> None:
    config = {**ONE, "run_mode": run_mode, "max_restarts": 1}
    result = launch_clustered(tmp_path, config, inputs={"steps": 3}, task="flaky", max_restarts=1)
    assert result.errors == [], result.logs
    assert [o["result"] for o in result.outcomes] == [1]  # finished on the first restart
    _check_two_attempts(result, "restart_count", 2)  # two writers of one run, or two runs


def test_jobset_restart_reopens_the_runs_and_loses_nothing(tmp_path: Path) -> None:
    config = {**ONE, "run_mode": "new"}
    first = launch_clustered(tmp_path, config, inputs={"steps": 3}, task="flaky", rdzv_id="job-0")
    assert [o["rc"] for o in first.outcomes] == [1]
    again = launch_clustered(
        tmp_path, config, inputs={"steps": 3}, task="flaky", jobset_restart_attempt=1, rdzv_id="job-1"
    )
    assert again.errors == [], again.logs
    assert [o["result"] for o in again.outcomes] == [0]  # no torchrun restart in the new JobSet
    _check_two_attempts(again, "jobset_restart_attempt", 2)


def _check_two_attempts(result: Launch, counter: str, writers_expected: int) -> None:
    writers: dict[tuple[str, str], list[Any]] = {}
    for run in result.runs:
        writers.setdefault((run.run_id, run.label), []).append(run)
    assert len(writers) == writers_expected
    for files in writers.values():
        files.sort(key=lambda r: r.config["flyte"][counter])
        assert [f.config["flyte"][counter] for f in files] == [0, 1]
        rows = [row for f in files for row in f.rows]
        # both attempts' rows are kept, and steps never go back within the run
        assert [row["row"] for row in rows] == [0, 1, 2, 0, 1, 2]
        assert [row["_step"] for row in rows] == list(range(6))


@pytest.mark.parametrize(("replicas", "nproc"), [(1, 3), (2, 2)])
def test_rank_runs_share_one_wandb_service_per_node(tmp_path: Path, replicas: int, nproc: int) -> None:
    config = {"replicas": replicas, "nproc_per_node": nproc, "project": "p", "run_mode": "new"}
    peak, result = peak_wandb_cores(tmp_path, lambda: launch_clustered(tmp_path, config, inputs={"steps": 200}))
    assert result.errors == [], result.logs
    assert len(result.runs) == replicas * nproc
    assert all(run.exit_code == 0 and len(run.rows) == 200 for run in result.runs)
    assert peak == replicas  # the first logging rank of each node started it, the others joined
    # the node's service outlives the rank that started it, and stops once no rank uses it
    deadline = time.monotonic() + 15
    while wandb_core_processes(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert wandb_core_processes(tmp_path) == []


@pytest.mark.parametrize("run_mode", ["auto", "shared", "new"])
def test_local_run_opens_exactly_one_run(tmp_path: Path, run_mode: str) -> None:
    config = {"replicas": 2, "nproc_per_node": 2, "project": "p", "run_mode": run_mode, "rank_scope": "worker"}
    result = launch(
        tmp_path,
        {},
        inputs={"steps": 2},
        task="tests.clustered_tasks:train",
        mode="local",
        extra_env={"CLUSTERED_CONFIG": json.dumps(config)},
    )
    assert result.errors == [], result.logs
    assert result.outcomes[0]["result"] == 1.0
    [run] = result.runs
    assert (run.exit_code, [row["loss"] for row in run.rows]) == (0, [1.0, 0.5])
    assert run.config["flyte"]["world_size"] == 1


def test_unreachable_server_falls_back_offline_and_the_key_stays_secret(tmp_path: Path) -> None:
    key = "local-" + "0123456789abcdef" * 3
    config = {
        **ONE,
        "run_mode": "new",
        "mode": "online",
        "host": "http://127.0.0.1:9",
        "init_timeout": 5,
        "api_key_secret": "wandb-key",
    }
    result = launch_clustered(tmp_path, config, inputs={"steps": 3}, extra_env={"WANDB_API_KEY": key})
    assert result.errors == [], result.logs
    assert len(result.runs) == 2
    assert all(run.exit_code == 0 and len(run.rows) == 3 for run in result.runs)
    assert all(run.path.parent.name.startswith("offline-run-") for run in result.runs)
    # the warning names the copy of the run in the run's storage, which outlives the pod
    assert f"Upload it later with: python -m flyte_wandb_elastic sync {tmp_path}/base/wandb/a0/rank-" in "".join(
        result.logs
    )
    written = [p for p in [*(tmp_path / "wandb").rglob("*"), *(tmp_path / "base").rglob("*")] if p.is_file()]
    assert [p for p in written if key.encode() in p.read_bytes()] == []
    assert all(key not in log for log in result.logs)
