"""`@wandb_init` compatibility: the reference page's snippets, unchanged but for the import line."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import flyte
import pytest

from flyte_wandb_elastic import WandbElastic, wandb_config, wandb_init
from flyte_wandb_elastic._elastic import WandbElasticTask
from tests.conftest import REPO, launch, wandb_env
from tests.serialize import links, run_path_spec
from tests.tasks import FAST_ELASTIC, make_task
from tests.test_launch import ONE_NODE, TWO_NODES

ONE_NODE_LAYOUT = {**ONE_NODE, ("auto", "worker"): ONE_NODE[("auto", "global")]}

# snippet task -> (run_mode, rank_scope, project, the metric it logs)
SNIPPETS = {
    "train_distributed": ("auto", "global", "my-project", "global_loss"),
    "train_shared_run": ("shared", "global", "my-project", "rank_specific_metric"),
    "train_individual_runs": ("new", "global", "my-project", "local_step_time"),
    "train_per_node": ("auto", "worker", "my-project", "node_average_loss"),
    "custom_logic_task": ("auto", "global", None, None),
}


# the snippets as written (`get_wandb_run()`) on two nodes, one launch each, and on one node the
# patterns that use more of W&B's globals than `wandb.log` (`wandb.config`, `wandb.summary`,
# `wandb.define_metric`): every layout is launched through W&B's globals in
# test_launch::test_two_nodes_two_ranks, and each globals pattern declares its snippet's task (below)
GLOBALS_LAUNCHED = ("train_distributed", "train_individual_runs")
SNIPPET_CASES = [("tests.snippets", name, 2) for name in SNIPPETS] + [
    ("tests.snippets_globals", name, 1) for name in GLOBALS_LAUNCHED
]


@pytest.mark.launch
@pytest.mark.parametrize(("module", "name", "nnodes"), SNIPPET_CASES)
def test_reference_snippets_on_real_launches(tmp_path: Path, module: str, name: str, nnodes: int) -> None:
    run_mode, rank_scope, project, metric = SNIPPETS[name]
    result = launch(tmp_path, {"nnodes": nnodes}, task=f"{module}:{name}", extra_env={"SNIPPET_NNODES": str(nnodes)})
    assert result.errors == [], result.logs
    expected = (TWO_NODES if nnodes == 2 else ONE_NODE_LAYOUT)[(run_mode, rank_scope)]
    assert result.layout() == expected
    for run in result.runs:
        assert run.exit_code == 0
        if project:
            assert run.project == project
        assert [sorted(k for k in row if not k.startswith("_")) for row in run.rows] == ([[metric]] if metric else [])
    if module == "tests.snippets_globals" and name == "train_distributed":
        [run] = result.runs
        assert (run.config["lr"], run.summary["best_loss"]) == (0.1, 0.01)
    if metric is None:
        output = "".join(result.logs)
        for rank in range(2 * nnodes):
            assert f"I am rank {rank} on worker {rank // 2}" in output


@pytest.mark.parametrize(
    ("module", "name"),
    [("tests.snippets", name) for name in SNIPPETS]
    + [("tests.snippets_globals", name) for name in SNIPPETS if name != "custom_logic_task"],
)
def test_snippet_tasks_equal_the_wandb_elastic_environment(
    module: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNIPPET_NNODES", "2")
    snippets = importlib.reload(importlib.import_module("tests.snippets"))
    task = getattr(importlib.reload(importlib.import_module(module)), name)
    run_mode, rank_scope, project, _ = SNIPPETS[name]
    equivalent = make_task(nnodes=2, nproc_per_node=2, project=project, run_mode=run_mode, rank_scope=rank_scope)
    assert isinstance(task, WandbElasticTask)
    config = task.plugin_config
    assert (config.run_mode or "auto", config.rank_scope or "global", config.project) == (
        run_mode,
        rank_scope,
        project,
    )
    assert (config.nnodes, config.nproc_per_node, config.max_restarts) == (2, 2, 0)
    context = wandb_config(entity="team", project="ctx-project")
    assert links(run_path_spec(task, context)) == links(run_path_spec(equivalent, context))
    assert f"team/{project or 'ctx-project'}/" in links(run_path_spec(task, context))[0][1]
    # `flyte deploy` ships the logged task: the environment holds the decorated one
    assert snippets.torch_env.tasks[task.name] is task


def test_decorator_arguments_override_the_environment() -> None:
    env = flyte.TaskEnvironment(
        name="override_env",
        plugin_config=WandbElastic(nnodes=2, nproc_per_node=2, project="env-p", entity="team", run_mode="shared"),
    )

    def train() -> None:
        pass

    task = wandb_init(run_mode="new", tags=["x"])(env.task(train))
    config = task.plugin_config
    assert (config.project, config.entity, config.run_mode, config.tags, config.nnodes) == (
        "env-p",
        "team",
        "new",
        ["x"],
        2,
    )
    assert [uri for _, uri in links(run_path_spec(task, {}))] == [
        "https://wandb.ai/team/env-p/groups/{{.runName}}-{{.actionName}}"
    ]


def test_bare_and_called_forms_are_equal() -> None:
    env = flyte.TaskEnvironment(name="forms_env", plugin_config=FAST_ELASTIC_CONFIG)

    def train() -> None:
        pass

    bare = wandb_init(env.task(train))
    called = wandb_init()(env.task(train))
    assert bare.plugin_config == called.plugin_config


FAST_ELASTIC_CONFIG = __import__("flyteplugins.pytorch").pytorch.Elastic(nnodes=1, nproc_per_node=2, **FAST_ELASTIC)


def test_decorator_under_task_fails_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "misplaced.py").write_text(
        "import flyte\n"
        "from flyte_wandb_elastic import wandb_init\n"
        "env = flyte.TaskEnvironment(name='misplaced')\n"
        "@env.task\n"
        "@wandb_init(project='p')\n"
        "def train() -> None:\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match=r"@wandb_init is under @env.task on 'train'.*above @env.task"):
        importlib.import_module("misplaced")


def test_async_function_on_elastic_task_fails_when_declared() -> None:
    env = flyte.TaskEnvironment(name="async_elastic", plugin_config=FAST_ELASTIC_CONFIG)

    async def train() -> None:
        pass

    with pytest.raises(TypeError, match="async function"):
        wandb_init(env.task(train))


def test_download_logs_on_distributed_task_warns() -> None:
    env = flyte.TaskEnvironment(name="download_env", plugin_config=FAST_ELASTIC_CONFIG)

    def train() -> None:
        pass

    with pytest.warns(UserWarning, match=r"download_logs=True\) is not supported on distributed"):
        wandb_init(download_logs=True)(env.task(train))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wandb_init(download_logs=False)(env.task(train))


@pytest.mark.launch
@pytest.mark.parametrize("parent", ["parent", "parent_via_globals"])
def test_child_task_reuses_parent_run_in_auto_mode(tmp_path: Path, parent: str) -> None:
    result = launch(tmp_path, {}, task=f"tests.plain_tasks:{parent}", mode="local")
    assert result.errors == [], result.logs
    assert result.outcomes[0]["result"] == 5
    by_keys = {tuple(sorted(k for k in r.rows[0] if not k.startswith("_"))): r for r in result.runs if r.rows}
    # parent and auto child wrote one run; the "new" child its own
    assert len(result.runs) == 2
    shared = next(r for r in result.runs if "parent" in r.rows[0])
    # the parent logs again once its children returned: the globals are its run's again
    assert [sorted(k for k in row if not k.startswith("_")) for row in shared.rows] == [
        ["parent"],
        ["child"],
        ["parent"],
    ]
    assert by_keys[("new_child",)].run_id != shared.run_id
    assert all(r.exit_code == 0 for r in result.runs)


def test_plain_function_opens_and_finishes_a_run(tmp_path: Path) -> None:
    code = (
        "from tests.plain_tasks import objective, failing_objective\n"
        "assert objective() == 0.9\n"
        "try:\n    failing_objective()\nexcept RuntimeError:\n    pass\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=wandb_env(tmp_path), check=True, timeout=120)
    from flyte_wandb_elastic import read_run_files

    runs = {r.run_id: r for r in read_run_files(tmp_path)}
    assert set(runs) == {"trial-1", "trial-2"}
    assert (runs["trial-1"].exit_code, runs["trial-1"].config["lr"], runs["trial-1"].rows[0]["score"]) == (0, 0.1, 0.9)
    assert "flyte" not in runs["trial-1"].config
    assert runs["trial-2"].exit_code == 1
