"""Clustered tasks (JobSet + torchrun): the real worker command per node, run files read back.

Every launch runs what Flyte's `clustered` entrypoint execs in each pod (`torchrun ... --no-python
-- a0 ...`), so each rank is a full `a0`. The expected layouts are the same hand-written tables as
the Elastic launches: a clustered job logs exactly as the same declaration on `Elastic`.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from tests.conftest import Launch, launch_clustered
from tests.serialize import deploy_path_spec, links, serialize
from tests.test_launch import ONE_NODE, STEPS, TWO_NODES, _check_rows

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


def _check_launch(result: Launch, config: dict[str, Any], task: str, expected: list[Any]) -> None:
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
    assert {r: f["global_run_id"] for r, f in result.facts.items()} == {r: opened.get(r) for r in range(world)}
    assert {r: f["wandb_imported"] for r, f in result.facts.items()} == {r: r in opened for r in range(world)}
    # the console links of the same task name exactly the runs (or groups) written
    spec = serialize(clustered_task({**config, "entity": "team"}, task), "r1", "proj", "dev", {})
    uris = [uri.replace("{{.actionName}}", "a0") for _, uri in links(spec)]
    prefix = "https://wandb.ai/team/p/"
    if config["run_mode"] == "new":
        assert {u.removeprefix(prefix + "groups/") for u in uris} == {run.group for run in result.runs}
    else:
        assert {u.removeprefix(prefix + "runs/") for u in uris} == {run.run_id for run in result.runs}


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize(("run_mode", "rank_scope"), list(ONE_NODE))
def test_one_node_two_ranks(tmp_path: Path, task: str, run_mode: str, rank_scope: str) -> None:
    config = {"replicas": 1, "nproc_per_node": 2, "project": "p", "run_mode": run_mode, "rank_scope": rank_scope}
    result = launch_clustered(tmp_path, config, inputs={"steps": STEPS, **TASKS[task]}, task=task)
    _check_launch(result, config, task, ONE_NODE[(run_mode, rank_scope)])


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize(("run_mode", "rank_scope"), list(TWO_NODES))
def test_two_nodes_two_ranks(tmp_path: Path, task: str, run_mode: str, rank_scope: str) -> None:
    config = {"replicas": 2, "nproc_per_node": 2, "project": "p", "run_mode": run_mode, "rank_scope": rank_scope}
    result = launch_clustered(tmp_path, config, inputs={"steps": STEPS, **TASKS[task]}, task=task)
    _check_launch(result, config, task, TWO_NODES[(run_mode, rank_scope)])


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
