"""Every `flyteplugins.wandb` name works from this package: signatures, context keys, links,
sweeps (an objective inside a replayed `wandb.agent` job, offline) and the errors of what needs a
W&B server."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import flyte
import flyteplugins.wandb as upstream
import pytest
from flyte._context import internal_ctx

import flyte_wandb_elastic as ours
from flyte_wandb_elastic import (
    Wandb,
    WandbSweep,
    download_wandb_run_dir,
    download_wandb_sweep_dirs,
    get_wandb_context,
    get_wandb_run_dir,
    get_wandb_sweep_context,
    get_wandb_sweep_id,
    read_run_files,
    wandb_config,
    wandb_init,
    wandb_sweep,
    wandb_sweep_config,
)
from flyte_wandb_elastic._local import task_context
from flyte_wandb_elastic._runfiles import iter_records
from tests.conftest import REPO, wandb_env
from tests.serialize import links, run_path_spec

SWEEP_ARGS: list[dict[str, Any]] = [
    {},
    {"method": "random", "metric": {"name": "loss", "goal": "minimize"}, "parameters": {"lr": {"min": 0.001}}},
    {
        "method": "bayes",
        "metric": {"name": "acc", "goal": "maximize"},
        "parameters": {"batch": {"values": [16, 32]}},
        "project": "sp",
        "entity": "se",
        "prior_runs": ["r1", "r2"],
        "name": "my sweep",
        "download_logs": True,
        "early_terminate": {"type": "hyperband", "min_iter": 3},
        "description": "d",
        "run_cap": 20,
    },
]
RUN_ARGS: dict[str, Any] = {
    "project": "p",
    "entity": "e",
    "host": "https://wandb.example.com",
    "id": "i",
    "name": "n",
    "tags": ["a"],
    "config": {"lr": 0.1},
    "mode": "offline",
    "group": "g",
    "run_mode": "new",
    "rank_scope": "worker",
    "download_logs": True,
    "notes": "some notes",
    "save_code": True,
}
GET_LINK = {"run_name": "r", "project": "proj", "domain": "dev", "parent_action_name": "", "pod_name": "pod"}


@contextmanager
def in_task(tmp_path: Path, context: dict[str, str]) -> Iterator[None]:
    """Inside a Flyte task whose run context is `context` (as a pod has it)."""
    with internal_ctx().replace_task_context(task_context(tmp_path, "r", "a0", context)):
        yield


# --- every name, with upstream's parameters ---------------------------------------------------


@pytest.mark.parametrize("name", upstream.__all__)
def test_every_upstream_name_is_exported_with_its_parameters(name: str) -> None:
    assert name in ours.__all__, f"flyteplugins.wandb.{name} is missing"
    theirs, mine = inspect.signature(getattr(upstream, name)), inspect.signature(getattr(ours, name))
    for param in theirs.parameters.values():
        own = mine.parameters.get(param.name)
        assert own is not None, f"{name}: no parameter {param.name!r}"
        assert (own.kind, own.default) == (param.kind, param.default), f"{name}({param.name})"


# --- run-context keys and what a task reads back -----------------------------------------------


@pytest.mark.parametrize("kwargs", SWEEP_ARGS, ids=["empty", "basic", "everything"])
def test_sweep_config_keys_equal_upstreams(kwargs: dict[str, Any]) -> None:
    assert wandb_sweep_config(**kwargs) == dict(upstream.wandb_sweep_config(**kwargs))


def test_wandb_config_defaults_write_upstreams_keys() -> None:
    assert wandb_config() == dict(upstream.wandb_config())
    assert wandb_config(project="p") == dict(upstream.wandb_config(project="p"))


@pytest.mark.parametrize("kwargs", SWEEP_ARGS[1:], ids=["basic", "everything"])
def test_task_reads_what_upstream_reads(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    context = {**wandb_config(**RUN_ARGS), **wandb_sweep_config(**kwargs), "_wandb_sweep_id": "sw1"}
    with in_task(tmp_path, context):
        mine, theirs = get_wandb_context(), upstream.get_wandb_context()
        assert mine is not None and theirs is not None
        assert {k: getattr(mine, k) for k in asdict(theirs)} == asdict(theirs)
        assert dict(**mine) == dict(**theirs)
        my_sweep, their_sweep = get_wandb_sweep_context(), upstream.get_wandb_sweep_context()
        assert my_sweep is not None and their_sweep is not None
        assert asdict(my_sweep) == asdict(their_sweep)
        assert my_sweep.to_sweep_config() == their_sweep.to_sweep_config()
        assert get_wandb_sweep_id() == upstream.get_wandb_sweep_id() == "sw1"
        assert get_wandb_run_dir() is None  # no run opened here


def test_nothing_to_read_outside_a_task_or_without_keys(tmp_path: Path) -> None:
    assert (get_wandb_context(), get_wandb_sweep_context(), get_wandb_sweep_id(), get_wandb_run_dir()) == (None,) * 4
    with in_task(tmp_path, {"other": "x"}):
        assert (get_wandb_context(), get_wandb_sweep_context(), get_wandb_sweep_id()) == (None, None, None)
        assert upstream.get_wandb_context() is None


def test_context_is_validated(tmp_path: Path) -> None:
    with in_task(tmp_path, {"wandb_run_mode": "sometimes"}), pytest.raises(ValueError, match="run_mode='sometimes'"):
        get_wandb_context()
    with in_task(tmp_path, {"wandb_sweep_method": "annealing"}), pytest.raises(ValueError, match="method="):
        get_wandb_sweep_context()
    with in_task(tmp_path, {"wandb_download_logs": "yes"}), pytest.raises(ValueError, match="wandb_download_logs"):
        get_wandb_context()


def test_config_as_a_context_manager_sets_the_keys_for_the_block(tmp_path: Path) -> None:
    with in_task(tmp_path, wandb_config(project="outer", entity="e")):
        with wandb_config(project="inner"), wandb_sweep_config(method="grid"):
            context, sweep = get_wandb_context(), get_wandb_sweep_context()
            assert context is not None and sweep is not None
            assert (context.project, context.entity, sweep.method) == ("inner", "e", "grid")
        context = get_wandb_context()
        assert context is not None and (context.project, get_wandb_sweep_context()) == ("outer", None)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: wandb_sweep_config(method="annealing"), "method='annealing' is not valid: expected 'grid' or"),
        (lambda: wandb_sweep_config(metric={"goal": "minimize"}), 'expected a dict with a "name"'),
        (lambda: wandb_sweep_config(parameters={"lr": 0.1}), "parameters={'lr': 0.1} is not valid"),
        (lambda: wandb_sweep_config(prior_runs="r1"), "prior_runs='r1' is not valid: expected a list of run ids"),
        (lambda: wandb_sweep_config(download_logs="yes"), "download_logs='yes'"),
        (lambda: wandb_sweep(count=5), "count=5 is not valid"),
        (lambda: wandb_sweep(download_logs="yes"), "download_logs='yes'"),
        (lambda: WandbSweep(host="wandb.example.com"), "host='wandb.example.com' is not valid"),
        (lambda: Wandb(run_mode="sometimes"), "run_mode='sometimes' is not valid"),  # type: ignore[arg-type]
    ],
)
def test_invalid_declarations_fail_where_written(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        call()


def test_sweep_decorator_needs_a_task() -> None:
    def trial() -> None:
        pass

    with pytest.raises(TypeError, match=r"@wandb_sweep applies to a Flyte task, got 'test_sweep.*place it above"):
        wandb_sweep(trial)


# --- console links ------------------------------------------------------------------------------

SWEEP_LINK_CASES = [
    ({"project": "p", "entity": "e"}, {}),
    ({}, wandb_config(project="p", entity="e")),
    ({}, {**wandb_config(project="p", entity="e"), "_wandb_sweep_id": "sw1"}),
    ({}, {**wandb_config(project="p", entity="e", host="https://wandb.example.com"), "_wandb_sweep_id": "sw1"}),
    ({"project": "p", "entity": "e", "id": "sw2"}, {"_wandb_sweep_id": "sw1"}),
    ({"project": "lp"}, {**wandb_config(project="p", entity="e"), "_wandb_sweep_id": "sw1"}),
]


@pytest.mark.parametrize(("fields", "context"), SWEEP_LINK_CASES)
def test_sweep_link_equals_upstreams(fields: dict[str, str], context: dict[str, str]) -> None:
    assert WandbSweep(**fields).get_link(context=context, action_name="a0", **GET_LINK) == upstream.WandbSweep(
        **fields
    ).get_link(context=context, action_name="a0", **GET_LINK)


def test_sweep_link_follows_where_the_sweep_is_created() -> None:
    # @wandb_sweep creates the sweep in wandb_sweep_config's project: upstream's link names wandb_config's
    context = {**wandb_config(project="p", entity="e"), **wandb_sweep_config(project="sp"), "_wandb_sweep_id": "s"}
    assert WandbSweep().get_link(context=context, action_name="a0", **GET_LINK) == "https://wandb.ai/e/sp/sweeps/s"
    # without an entity, a page that exists
    assert WandbSweep(project="p").get_link(context={}, action_name="a0", **GET_LINK) == "https://wandb.ai/home"


RUN_LINK_CASES = [
    ({"project": "p", "entity": "e"}, {}),
    ({"project": "p", "entity": "e"}, {"_wandb_run_id": "parent"}),
    ({"project": "p", "entity": "e", "run_mode": "new"}, {"_wandb_run_id": "parent"}),
    ({}, wandb_config(project="p", entity="e", id="x")),
    ({"project": "p", "entity": "e", "_is_distributed": True}, {}),
    ({"project": "p", "entity": "e", "run_mode": "new", "_is_distributed": True}, {}),
    ({"project": "p", "entity": "e", "rank_scope": "worker", "_is_distributed": True, "_worker_index": 1}, {}),
    ({"project": "p", "entity": "e", "run_mode": "new", "rank_scope": "worker", "_worker_index": 2}, {}),
]


@pytest.mark.parametrize(("fields", "context"), RUN_LINK_CASES)
def test_run_link_declared_as_upstreams_equals_upstreams(fields: dict[str, Any], context: dict[str, str]) -> None:
    fields = {"_is_distributed": "_worker_index" in fields, **fields}
    mine = Wandb(**fields).get_link(context=context, action_name="a0", **GET_LINK)
    assert mine == upstream.Wandb(**fields).get_link(context=context, action_name="a0", **GET_LINK)


def test_sweep_task_serializes_both_links() -> None:
    from tests import sweep_tasks

    task = sweep_tasks.joins_sweep  # @wandb_sweep over @wandb_init(project="p")
    context = {**wandb_config(entity="e"), **wandb_sweep_config(project="sp"), "_wandb_sweep_id": "sw1"}
    assert links(run_path_spec(task, context)) == [
        ("Weights & Biases", "https://wandb.ai/e/p/runs/{{.runName}}-{{.actionName}}"),
        ("Weights & Biases Sweep", "https://wandb.ai/e/sp/sweeps/sw1"),
    ]
    # `flyte deploy` ships the decorated task
    assert sweep_tasks.env.tasks[task.name] is task


def test_sweep_over_wandb_init_on_an_elastic_task() -> None:
    from tests.tasks import make_task

    elastic = make_task(nnodes=1, nproc_per_node=2)
    task = wandb_sweep(wandb_init(run_mode="new")(elastic))
    context = {**wandb_config(entity="e", project="p"), "_wandb_sweep_id": "sw1"}
    assert sorted(links(run_path_spec(task, context))) == [
        ("Weights & Biases", "https://wandb.ai/e/p/groups/{{.runName}}-{{.actionName}}"),
        ("Weights & Biases Sweep", "https://wandb.ai/e/p/sweeps/sw1"),
    ]
    # the other order would drop the sweep: it fails when declared
    with pytest.raises(TypeError, match=r"@wandb_init is above another decorator .*place @wandb_init directly"):
        wandb_init(project="p")(wandb_sweep(make_task(nnodes=1, nproc_per_node=2)))


# --- what needs a W&B server, offline -----------------------------------------------------------


def test_sweep_creation_offline_names_what_it_needs(tmp_path: Path) -> None:
    env = flyte.TaskEnvironment(name="sweep_offline_env")

    async def agents() -> str:
        return get_wandb_sweep_id() or ""

    task = wandb_sweep(env.task(agents))
    context = {**wandb_config(project="p", entity="e", mode="offline"), **wandb_sweep_config(method="grid")}
    with in_task(tmp_path, context), pytest.raises(RuntimeError) as info:
        asyncio.run(task.execute())
    assert str(info.value).startswith("creating the W&B sweep 'r-a0' needs a W&B server, but W&B is set to ")
    assert "mode='offline' (wandb_config)" in str(info.value) and "WANDB_API_KEY" in str(info.value)
    # a caller's sweep is joined, not created: no server needed
    with in_task(tmp_path, {**context, "_wandb_sweep_id": "sw1"}):
        assert asyncio.run(task.execute()) == "sw1"


def test_downloads_offline_name_what_they_need(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(RuntimeError, match=r"downloading the W&B run 'r1' needs a W&B server.*WANDB_MODE"):
        download_wandb_run_dir(run_id="r1", path=str(tmp_path / "r1"))
    with (
        in_task(tmp_path, wandb_config(project="p", entity="e", mode="disabled")),
        pytest.raises(
            RuntimeError, match=r"downloading the W&B sweep 's1' needs a W&B server.*mode='disabled' \(wandb_config\)"
        ),
    ):
        download_wandb_sweep_dirs(sweep_id="s1")
    assert not (tmp_path / "r1").exists()


def test_downloads_without_a_target_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"no run to download: pass run_id=\.\.\."):
        download_wandb_run_dir()
    with pytest.raises(RuntimeError, match=r"no sweep to download: pass sweep_id=\.\.\."):
        download_wandb_sweep_dirs()
    with in_task(tmp_path, wandb_config(project="p")), pytest.raises(RuntimeError, match="needs the entity and"):
        download_wandb_sweep_dirs(sweep_id="s1")


# --- real runs, offline: sweep trials in a replayed agent job, and sweep tasks --------------------


def run_scenario(tmp_path: Path, scenario: str) -> dict[str, Any]:
    out = tmp_path / "facts.json"
    subprocess.run(
        [sys.executable, "-m", "tests.sweep_tasks", scenario, str(out)],
        cwd=REPO,
        env=wandb_env(tmp_path),
        check=True,
        timeout=120,
        capture_output=True,
    )
    return dict(json.loads(out.read_text()))


def test_objective_in_an_agent_job_writes_the_agents_run(tmp_path: Path) -> None:
    facts = run_scenario(tmp_path, "agent")
    runs = {r.run_id: r for r in read_run_files(tmp_path)}
    assert set(runs) == {"trial-ok", "trial-failed", "upstream-failed"}
    ok, failed = runs["trial-ok"], runs["trial-failed"]
    # the agent's run id and parameters (over the decorator's config), and the exit code
    assert (ok.config["lr"], ok.config["epochs"], ok.rows[0]["score"], ok.exit_code) == (0.3, 2, 0.6, 0)
    assert (failed.config["lr"], failed.exit_code) == (0.5, 1)
    assert runs["upstream-failed"].exit_code == 0  # upstream marks a failed trial finished
    for run_id in ("trial-ok", "trial-failed"):
        [record] = [r.run for r in iter_records(runs[run_id].path) if r.WhichOneof("record_type") == "run"]
        assert record.sweep_id == "sweep-1"
        assert facts[run_id]["wandb_run_is_ours"]
        assert facts[run_id]["run_dir"] == str(runs[run_id].path.parent / "files")


def test_sweep_tasks_in_local_runs(tmp_path: Path) -> None:
    facts = run_scenario(tmp_path, "tasks")
    joins = json.loads(facts["joins"]["result"])
    assert (joins["sweep_id"], joins["run_dir_exists"], joins["context"]) == ("sweep-1", True, ["p", "offline", "auto"])
    assert joins["sweep"] == [
        "random",
        {"method": "random", "metric": {"name": "score", "goal": "maximize"}, "parameters": {"lr": {}}},
    ]
    runs = {r.run_id: r for r in read_run_files(tmp_path)}
    assert runs[joins["run_id"]].exit_code == 0
    assert "needs a W&B server, but W&B is set to mode='offline' (wandb_config)" in facts["creates_offline"]["error"]
    assert "found no sweep configuration in the run context" in facts["no_sweep_config"]["error"]
    assert "mode='offline' (this task's run)" in facts["download_offline"]["error"]
    assert "downloading the W&B run" in facts["download_after_offline"]["error"]
