"""Console links in task specs serialized by Flyte's own serializer."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.json_format import MessageToJson

from flyte_wandb_elastic import wandb_config
from tests.serialize import deploy_path_spec, links, run_path_spec
from tests.tasks import make_task

H = "https://wandb.ai/team/proj"
B = "{{.runName}}-{{.actionName}}"
W = "Weights & Biases"

# (run_mode, rank_scope) -> links of a 2 node x 2 rank task
TWO_NODES = {
    ("auto", "global"): [(W, f"{H}/runs/{B}")],
    ("auto", "worker"): [(f"{W} Worker 0", f"{H}/runs/{B}-worker-0"), (f"{W} Worker 1", f"{H}/runs/{B}-worker-1")],
    ("shared", "global"): [(W, f"{H}/runs/{B}")],
    ("shared", "worker"): [(f"{W} Worker 0", f"{H}/runs/{B}-worker-0"), (f"{W} Worker 1", f"{H}/runs/{B}-worker-1")],
    ("new", "global"): [(W, f"{H}/groups/{B}")],
    ("new", "worker"): [
        (f"{W} Worker 0", f"{H}/groups/{B}-worker-0"),
        (f"{W} Worker 1", f"{H}/groups/{B}-worker-1"),
    ],
}


def task(**config: Any) -> Any:
    return make_task(nnodes=config.pop("nnodes", 2), nproc_per_node=2, **config)


@pytest.mark.parametrize(("run_mode", "rank_scope"), list(TWO_NODES))
def test_run_path_declared(run_mode: str, rank_scope: str) -> None:
    t = task(entity="team", project="proj", run_mode=run_mode, rank_scope=rank_scope)
    assert links(run_path_spec(t, {})) == TWO_NODES[(run_mode, rank_scope)]


@pytest.mark.parametrize(("run_mode", "rank_scope"), list(TWO_NODES))
def test_deploy_path(run_mode: str, rank_scope: str) -> None:
    t = task(entity="team", project="proj", run_mode=run_mode, rank_scope=rank_scope)
    assert links(deploy_path_spec(t)) == TWO_NODES[(run_mode, rank_scope)]


@pytest.mark.parametrize("run_mode", ["auto", "shared", "new"])
def test_run_mode_and_names_from_the_run_context(run_mode: str) -> None:
    # declared: worker scope only; the context brings entity, project and run_mode
    t = task(rank_scope="worker")
    context = wandb_config(entity="team", project="proj", run_mode=run_mode)
    assert links(run_path_spec(t, context)) == TWO_NODES[(run_mode, "worker")]


def test_host_from_context_and_user_id_and_group() -> None:
    t = task(entity="team", project="proj", run_mode="new", id="exp-7", group="sweep a")
    context = wandb_config(host="https://wandb.example.com/")
    assert links(run_path_spec(t, context)) == [(W, "https://wandb.example.com/team/proj/groups/sweep%20a")]
    t = task(entity="team", project="proj", rank_scope="worker", id="exp-7")
    assert [uri for _, uri in links(run_path_spec(t, {}))] == [f"{H}/runs/exp-7-worker-0", f"{H}/runs/exp-7-worker-1"]


def test_elastic_range_links_only_the_nodes_sure_to_join() -> None:
    t = task(nnodes="2:4", entity="team", project="proj", rank_scope="worker")
    assert links(run_path_spec(t, {})) == TWO_NODES[("auto", "worker")]
    t = task(nnodes="1:4", entity="team", project="proj", rank_scope="worker")
    assert links(run_path_spec(t, {})) == [(f"{W} Worker 0", f"{H}/runs/{B}-worker-0")]


def test_unknown_entity_links_to_a_page_that_exists() -> None:
    assert links(run_path_spec(task(project="proj"), {})) == [(W, "https://wandb.ai/home")]
    assert links(run_path_spec(task(entity="team"), {})) == [(W, "https://wandb.ai/team")]


def test_worker_scope_set_only_in_the_run_context_links_node_0() -> None:
    # links are fixed when the task is declared: one link, to node 0's run, which always exists
    t = task(entity="team", project="proj")
    assert links(run_path_spec(t, wandb_config(rank_scope="worker"))) == [(W, f"{H}/runs/{B}-worker-0")]


def test_api_key_secret_is_requested_and_never_serialized() -> None:
    t = task(entity="team", project="proj", api_key_secret="wandb-api-key", api_key_secret_group="ml")
    spec = run_path_spec(t, wandb_config(project="proj"))
    [secret] = spec.task_template.security_context.secrets
    assert (secret.key, secret.group, secret.env_var) == ("wandb-api-key", "ml", "WANDB_API_KEY")
    assert spec.task_template.type == "pytorch"
    # overriding the task keeps exactly one key request and one set of links
    again = run_path_spec(t.override(retries=1), {})
    assert len(again.task_template.security_context.secrets) == 1
    assert len(links(again)) == 1


def test_serialized_spec_has_no_key_material(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "k" * 8 + "0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", key)
    t = task(entity="team", project="proj", api_key_secret="wandb-api-key")
    for spec in (run_path_spec(t, wandb_config(project="proj")), deploy_path_spec(t)):
        assert key not in MessageToJson(spec)
        assert key.encode() not in spec.SerializeToString()
