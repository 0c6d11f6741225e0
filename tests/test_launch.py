"""Real launches: torch elastic spawns CPU workers (gloo); the offline run files are read back.

The expected layouts are written out by hand from the table in docs/behaviour.md, not computed by the
planner, so a planner bug shows up here as a mismatch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Launch, assert_agrees_with_wandb_reader, launch
from tests.online import layout_launch
from tests.records import assert_links_back, console_url
from tests.serialize import links, serialize
from tests.tasks import make_task

pytestmark = pytest.mark.launch

B = "r1-a0"  # base id: {flyte run name}-{action name}
STEPS = 3

# (run_mode, rank_scope) -> sorted (run id, group, label, primary) of every run file, 1 node x 2 ranks
ONE_NODE = {
    ("auto", "global"): [(B, "", "", True)],
    ("shared", "global"): [(B, "", "rank-0", True), (B, "", "rank-1", False)],
    ("new", "global"): [(f"{B}-rank-0", B, "", True), (f"{B}-rank-1", B, "", True)],
}

# the same for 2 nodes x 2 ranks (global rank = 2 * node + local rank)
TWO_NODES = {
    ("auto", "global"): [(B, "", "", True)],
    ("auto", "worker"): [(f"{B}-worker-0", "", "", True), (f"{B}-worker-1", "", "", True)],
    ("shared", "global"): [
        (B, "", "worker-0-rank-0", True),
        (B, "", "worker-0-rank-1", False),
        (B, "", "worker-1-rank-0", False),
        (B, "", "worker-1-rank-1", False),
    ],
    ("shared", "worker"): [
        (f"{B}-worker-0", "", "worker-0-rank-0", True),
        (f"{B}-worker-0", "", "worker-0-rank-1", False),
        (f"{B}-worker-1", "", "worker-1-rank-0", True),
        (f"{B}-worker-1", "", "worker-1-rank-1", False),
    ],
    ("new", "global"): [(f"{B}-rank-{r}", B, "", True) for r in range(4)],
    ("new", "worker"): [
        (f"{B}-worker-{n}-rank-{lr}", f"{B}-worker-{n}", "", True) for n in range(2) for lr in range(2)
    ],
}


def _check_rows(launch_result, world_size: int) -> None:
    assert_agrees_with_wandb_reader(launch_result.runs)
    for run in launch_result.runs:
        assert run.exit_code == 0, run
        assert [row["_step"] for row in run.rows] == list(range(STEPS))
        assert [row["loss"] for row in run.rows] == [1.0, 0.5, pytest.approx(1 / 3)]
        rank = run.rows[0]["rank"]
        # every writer logged the all-reduced values of the whole job
        assert [row["reduced"] for row in run.rows] == [
            sum(r + step for r in range(world_size)) for step in range(STEPS)
        ]
        assert run.config["flyte"]["rank"] == rank


def _check_links_agree(result: Launch, config: dict) -> list[str]:
    """The console links of the same task name exactly the runs (or groups) the launch wrote: the links."""
    config = {"entity": "team", **config}
    task = make_task(**config)
    # a parent submitting this task serializes it with its real run name; the backend fills the action
    uris = [uri.replace("{{.actionName}}", "a0") for _, uri in links(serialize(task, "r1", "proj", "dev", {}))]
    prefix = f"{config.get('host', 'https://wandb.ai')}/{config['entity']}/p/"
    assert all(uri.startswith(prefix) for uri in uris), uris
    kinds = {uri[len(prefix) :].split("/")[0] for uri in uris}
    targets = {uri[len(prefix) :].split("/", 1)[1] for uri in uris}
    if config["run_mode"] == "new":
        assert kinds == {"groups"}
        assert targets == {run.group for run in result.runs}
    else:
        assert kinds == {"runs"}
        assert targets == {run.run_id for run in result.runs}
    return uris


def _check_flyte_metadata(result: Launch, nproc_per_node: int) -> None:
    for run in result.runs:
        flyte = run.config["flyte"]
        assert {k: flyte[k] for k in ("project", "domain", "run_name", "action_name", "attempt")} == {
            "project": "proj",
            "domain": "dev",
            "run_name": "r1",
            "action_name": "a0",
            "attempt": 0,
        }
        assert (flyte["restart_count"], flyte["nproc_per_node"]) == (0, nproc_per_node)
        assert flyte["node_rank"] == flyte["rank"] // nproc_per_node
        assert flyte["local_rank"] == flyte["rank"] % nproc_per_node


# Every layout on two nodes, half of them logging through `get_wandb_run()`'s run and half through
# W&B's globals (`wandb.log`, as upstream-style code writes it), so that each API covers every run
# mode. A job on one node runs every run mode in tests/test_reliability.py. The `ONLINE` layouts
# log to a W&B-compatible server, their runs' storage in an S3-compatible one (tests/online.py);
# the `new` layouts go online, through a server outage, in tests/test_durable.py.
ONLINE = {("auto", "worker"), ("shared", "global")}
TWO_NODE_CASES = [
    ("auto", "global", False),
    ("auto", "worker", True),
    ("shared", "global", True),
    ("shared", "worker", False),
    ("new", "global", False),
    ("new", "worker", True),
]


@pytest.mark.parametrize(("run_mode", "rank_scope", "via_globals"), TWO_NODE_CASES)
def test_two_nodes_two_ranks(
    tmp_path: Path, request: pytest.FixtureRequest, run_mode: str, rank_scope: str, via_globals: bool
) -> None:
    config = {"nnodes": 2, "nproc_per_node": 2, "project": "p", "run_mode": run_mode, "rank_scope": rank_scope}
    config.update(tags=["mine"], notes="my notes")
    online, where = layout_launch(request, (run_mode, rank_scope) in ONLINE, config)
    result = launch(tmp_path, config, inputs={"steps": STEPS, "via_globals": via_globals}, **where)
    assert result.errors == [], result.logs
    # the node holding global rank 0 returns the result; the other returns None
    assert [o["result"] for o in result.outcomes] == [sum(sum(range(s, s + 4)) for s in range(STEPS)), None]
    assert result.layout() == TWO_NODES[(run_mode, rank_scope)]
    _check_rows(result, world_size=4)  # rows through `wandb.log` land exactly as `run.log`'s do
    assert {run.config["flyte"]["world_size"] for run in result.runs} == {4}
    _check_flyte_metadata(result, nproc_per_node=2)
    uris = _check_links_agree(result, config)
    if online is not None:
        online.check(result, "p", STEPS, uris, stored=run_mode == "shared")  # the most writers
    # and every run leads back to the Flyte action, after what the user wrote
    assert_links_back(result.runs, console_url(), ["mine"], "my notes")
    # get_wandb_run() returned each rank's own run, or None where the rank opened none, and so is
    # `wandb.run` where the code imports wandb
    opened = {r.rows[0]["rank"]: r.run_id for r in result.runs}
    assert {rank: facts["run_id"] for rank, facts in result.facts.items()} == {
        rank: opened.get(rank) for rank in range(4)
    }
    if via_globals:
        assert {rank: facts["global_run_id"] for rank, facts in result.facts.items()} == {
            rank: opened.get(rank) for rank in range(4)
        }
    assert {rank: facts["info"] for rank, facts in result.facts.items()} == {
        rank: {
            "rank": rank,
            "local_rank": rank % 2,
            "world_size": 4,
            "local_world_size": 2,
            "worker_index": rank // 2,
            "num_workers": 2,
        }
        for rank in range(4)
    }


def test_user_id_and_group_in_new_mode_and_the_api_key_secret_never_reaches_run_files(tmp_path: Path) -> None:
    key = "local-" + "0123456789abcdef" * 3
    config = {"nnodes": 1, "nproc_per_node": 2, "project": "p", "run_mode": "new", "id": "exp", "group": "g"}
    config["api_key_secret"] = "wandb-key"  # Flyte gives the pods its value as WANDB_API_KEY
    result = launch(tmp_path, config, extra_env={"WANDB_API_KEY": key})
    assert result.errors == []
    assert result.layout() == [("exp-rank-0", "g", "", True), ("exp-rank-1", "g", "", True)]
    # a pod that knows no console endpoint: no URL, and the notes untouched; the tags still
    assert_links_back(result.runs, None, [], None)
    # the key is in no file the runs wrote and in no rank's output
    written = [p for p in (tmp_path / "wandb").rglob("*") if p.is_file()]
    assert written
    assert [p for p in written if key.encode() in p.read_bytes()] == []
    assert all(key not in log for log in result.logs)


def test_run_context_fills_unset_fields(tmp_path: Path) -> None:
    from flyte_wandb_elastic import wandb_config

    context = wandb_config(project="from-context", run_mode="new", group="ctx-group", tags=["t"])
    result = launch(
        tmp_path,
        {"nnodes": 1, "nproc_per_node": 2, "project": "declared"},
        custom_context=context,
    )
    assert result.errors == []
    # run_mode and group came from the context; project declared on WandbElastic won
    assert result.layout() == [(f"{B}-rank-0", "ctx-group", "", True), (f"{B}-rank-1", "ctx-group", "", True)]
    assert {run.project for run in result.runs} == {"declared"}
    assert_links_back(result.runs, None, ["t"], None)  # the context's tags first
