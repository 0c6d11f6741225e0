"""Console links in task specs serialized by Flyte's own serializer."""

from __future__ import annotations

import os
from typing import Any

import flyte
import pytest
from flyte.clustered import ClusteredTaskEnvironment
from flyteplugins.pytorch import Elastic
from google.protobuf.json_format import MessageToJson

from flyte_wandb_elastic import (
    WandbClusteredTaskEnvironment,
    WandbElastic,
    WandbOptions,
    wandb_config,
    wandb_init,
    wandb_sweep,
)
from flyte_wandb_elastic._links import MAX_LINKS, links_for
from flyte_wandb_elastic._planner import plan_rank
from flyte_wandb_elastic._sweep_options import SWEEP_ID_KEY
from flyte_wandb_elastic._topology import Topology
from flyte_wandb_elastic._wandb_host import WandbServer, wandb_server
from tests.serialize import deploy_path_spec, links, run_path_spec
from tests.tasks import make_task, train

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


# -- the W&B server: the one the pods log to, chosen by the same rule (`_wandb_host`) ------------

SELF_HOSTED = "https://wandb.example.com"
AT_SELF_HOSTED = {"WANDB_BASE_URL": SELF_HOSTED}
S = f"{SELF_HOSTED}/team/proj"


@pytest.mark.parametrize(
    ("host", "environ", "base_url", "app_url"),
    [
        (None, {}, None, "https://wandb.ai"),
        ("https://wandb.ai", {}, None, "https://wandb.ai"),
        # `host` decides where set; at upstream's default it counts as unset
        ("https://w.example.com/", AT_SELF_HOSTED, "https://w.example.com", "https://w.example.com"),
        ("https://wandb.ai/", AT_SELF_HOSTED, None, SELF_HOSTED),
        (None, {"WANDB_BASE_URL": "http://127.0.0.1:8080/"}, None, "http://127.0.0.1:8080"),
        # W&B's API hosts and their pages
        (None, {"WANDB_BASE_URL": "https://api.wandb.ai"}, None, "https://wandb.ai"),
        ("https://api.wandb.ai", {}, "https://api.wandb.ai", "https://wandb.ai"),
        (None, {"WANDB_BASE_URL": "https://api.example.com"}, None, "https://app.example.com"),
        (None, {"WANDB_BASE_URL": "https://api.forge.coreweave.com"}, None, "https://forge.coreweave.com/wandb"),
        # WANDB_APP_URL names the pages, as W&B's `app_url` setting
        (None, {"WANDB_APP_URL": "https://ui.example.com/"}, None, "https://ui.example.com"),
        (
            "http://10.0.0.5:8080",
            {"WANDB_APP_URL": "https://ui.example.com"},
            "http://10.0.0.5:8080",
            "https://ui.example.com",
        ),
    ],
)
def test_the_server_rule(host: str | None, environ: dict[str, str], base_url: str | None, app_url: str) -> None:
    assert wandb_server(host, environ) == WandbServer(base_url, app_url)


@pytest.mark.parametrize(
    "base_url",
    [
        SELF_HOSTED,
        "http://127.0.0.1:8080/",
        "https://api.example.com",
        "https://api.forge.coreweave.com",
        "https://forge.coreweave.com/api/wandb",
        "https://api.wandb.test",
    ],
)
@pytest.mark.parametrize("app_url", [None, "https://ui.example.com"])
def test_pages_are_where_wandb_puts_them(monkeypatch: pytest.MonkeyPatch, base_url: str, app_url: str | None) -> None:
    # W&B's own run pages start with its `app_url`. (For its cloud, `https://api.wandb.ai`, wandb 0.31
    # names the Forge address; the links keep `https://wandb.ai`, which shows the same runs.)
    import wandb

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    settings = wandb.Settings(base_url=base_url, **({"app_url_override": app_url} if app_url else {}))
    environ = {"WANDB_BASE_URL": base_url, **({"WANDB_APP_URL": app_url} if app_url else {})}
    assert wandb_server(None, environ).app_url == settings.app_url


def _elastic(env_vars: dict[str, str] | None = None, name: str = "host_elastic", **options: Any) -> Any:
    env = flyte.TaskEnvironment(
        name=name,
        env_vars=env_vars,
        plugin_config=WandbElastic(nnodes=2, nproc_per_node=2, entity="team", project="proj", **options),
    )
    return env.task(train)


def _clustered(env_vars: dict[str, str] | None = None, **options: Any) -> Any:
    wandb = WandbOptions(entity="team", project="proj", **options)
    env = WandbClusteredTaskEnvironment(
        name="host_clustered", replicas=2, nproc_per_node=2, env_vars=env_vars, wandb=wandb
    )
    return env.task(train)


def _decorated_plain(env_vars: dict[str, str] | None = None) -> Any:
    return wandb_init(entity="team", project="proj")(
        flyte.TaskEnvironment(name="host_plain", env_vars=env_vars).task(train)
    )


def _decorated_elastic(env_vars: dict[str, str] | None = None) -> Any:
    env = flyte.TaskEnvironment(
        name="host_elastic_plain", env_vars=env_vars, plugin_config=Elastic(nnodes=2, nproc_per_node=2)
    )
    return wandb_init(entity="team", project="proj")(env.task(train))


def _decorated_clustered(env_vars: dict[str, str] | None = None) -> Any:
    env = ClusteredTaskEnvironment(name="host_clustered_plain", replicas=2, nproc_per_node=2, env_vars=env_vars)
    return wandb_init(entity="team", project="proj")(env.task(train))


DECLARATIONS = {
    "WandbElastic": _elastic,
    "WandbClusteredTaskEnvironment": _clustered,
    "@wandb_init on a task": _decorated_plain,
    "@wandb_init on an Elastic task": _decorated_elastic,
    "@wandb_init on a clustered task": _decorated_clustered,
}


@pytest.mark.parametrize("declare", list(DECLARATIONS.values()), ids=list(DECLARATIONS))
def test_env_vars_of_the_environment_name_the_server(declare: Any) -> None:
    t = declare(AT_SELF_HOSTED)
    for spec in (run_path_spec(t, {}), deploy_path_spec(t)):
        assert links(spec) == [(W, f"{S}/runs/{B}")]
    # the pods get exactly these env_vars, and W&B there follows WANDB_BASE_URL
    env = {kv.key: kv.value for kv in run_path_spec(t, {}).task_template.container.env}
    assert env["WANDB_BASE_URL"] == SELF_HOSTED
    assert links(run_path_spec(declare(), {})) == [(W, f"{H}/runs/{B}")]


def test_every_per_node_link_and_the_home_page_name_the_server() -> None:
    t = _elastic(AT_SELF_HOSTED, rank_scope="worker", run_mode="new")
    assert links(run_path_spec(t, {})) == [
        (f"{W} Worker 0", f"{S}/groups/{B}-worker-0"),
        (f"{W} Worker 1", f"{S}/groups/{B}-worker-1"),
    ]
    no_entity = flyte.TaskEnvironment(
        name="host_no_entity", env_vars=AT_SELF_HOSTED, plugin_config=WandbElastic(nnodes=2, nproc_per_node=2)
    ).task(train)
    assert links(run_path_spec(no_entity, {})) == [(W, f"{SELF_HOSTED}/home")]


@pytest.mark.parametrize("declare", [_elastic, _clustered], ids=["WandbElastic", "WandbClusteredTaskEnvironment"])
def test_override_env_vars_recomputes_the_links(declare: Any) -> None:
    t = declare(AT_SELF_HOSTED)
    moved = t.override(env_vars={"WANDB_BASE_URL": "https://api.other.example.com"})
    assert links(run_path_spec(moved, {})) == [(W, f"https://app.other.example.com/team/proj/runs/{B}")]
    assert links(run_path_spec(declare().override(env_vars=AT_SELF_HOSTED), {})) == [(W, f"{S}/runs/{B}")]


def test_host_wins_where_the_pods_use_it() -> None:
    # explicit host: the pods pass it to W&B as its base URL, over WANDB_BASE_URL
    t = _elastic(AT_SELF_HOSTED, host="https://other.example.com/")
    assert links(run_path_spec(t, {})) == [(W, f"https://other.example.com/team/proj/runs/{B}")]
    # host in the run context: the pods read it too
    context = wandb_config(host="https://ctx.example.com")
    assert links(run_path_spec(_elastic(AT_SELF_HOSTED), context)) == [
        (W, f"https://ctx.example.com/team/proj/runs/{B}")
    ]
    # host at W&B's public address counts as unset in the pods, which then follow WANDB_BASE_URL
    t = _elastic(AT_SELF_HOSTED, host="https://wandb.ai")
    assert links(run_path_spec(t, {})) == [(W, f"{S}/runs/{B}")]
    assert links(run_path_spec(_elastic(host="https://wandb.ai"), {})) == [(W, f"{H}/runs/{B}")]


def test_wandb_api_hosts_and_app_url() -> None:
    cloud = _elastic({"WANDB_BASE_URL": "https://api.wandb.ai"})
    assert links(run_path_spec(cloud, {})) == [(W, f"{H}/runs/{B}")]
    app = _elastic({"WANDB_BASE_URL": "http://10.0.0.5:8080", "WANDB_APP_URL": "https://wandb.corp.example/"})
    assert links(run_path_spec(app, {})) == [(W, f"https://wandb.corp.example/team/proj/runs/{B}")]


def test_the_deploying_shells_server_does_not_change_the_links(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flyte sends the pods the task's env_vars, not the shell's: the runs go where those say
    monkeypatch.setenv("WANDB_BASE_URL", "https://shell.example.com")
    monkeypatch.setenv("WANDB_APP_URL", "https://shell-ui.example.com")
    assert links(run_path_spec(_elastic(), {})) == [(W, f"{H}/runs/{B}")]
    assert links(deploy_path_spec(_elastic(AT_SELF_HOSTED))) == [(W, f"{S}/runs/{B}")]
    sweep = wandb_sweep(entity="team", project="proj")(flyte.TaskEnvironment(name="host_sweep_shell").task(train))
    assert links(run_path_spec(sweep, {})) == [("Weights & Biases Sweep", f"{H}/sweeps")]


def test_sweep_links_name_the_server() -> None:
    sweep = wandb_sweep(entity="team", project="proj")(
        flyte.TaskEnvironment(name="host_sweep", env_vars=AT_SELF_HOSTED).task(train)
    )
    assert links(run_path_spec(sweep, {})) == [("Weights & Biases Sweep", f"{S}/sweeps")]
    assert links(run_path_spec(sweep, {SWEEP_ID_KEY: "abc123"})) == [("Weights & Biases Sweep", f"{S}/sweeps/abc123")]
    context = wandb_config(host="https://ctx.example.com")
    assert links(deploy_path_spec(sweep)) == [("Weights & Biases Sweep", f"{S}/sweeps")]
    assert links(run_path_spec(sweep, context)) == [
        ("Weights & Biases Sweep", "https://ctx.example.com/team/proj/sweeps")
    ]


# -- at scale: at most MAX_LINKS links, and every run on a page they lead to ----------------------

NODES, NPROC = 1024, 8
ALL = "Weights & Biases All Workers"
# Declaring a job this large warns that it exceeds W&B's limits (tests/test_limits.py checks that).
at_scale = pytest.mark.filterwarnings("ignore::flyte_wandb_elastic.WandbLimitWarning")


def per_node_links(run_mode: str, nodes: range, host: str = H) -> list[tuple[str, str]]:
    page = "groups" if run_mode == "new" else "runs"
    return [(f"{W} Worker {i}", f"{host}/{page}/{B}-worker-{i}") for i in nodes]


def big_task(**config: Any) -> Any:
    return make_task(nnodes=config.pop("nnodes", NODES), nproc_per_node=NPROC, entity="team", project="proj", **config)


def quoted(group: str) -> str:
    return group.replace(" ", "%20")


def planned_runs(options: WandbOptions, nodes: int, nproc: int) -> dict[str, tuple[int, str | None]]:
    """Run id -> (the first node that writes it, its group), for every rank of the job, by the planner."""
    runs: dict[str, tuple[int, str | None]] = {}
    for rank in range(nodes * nproc):
        plan = plan_rank(options, Topology.in_job(rank, nodes, nproc), "{{.runName}}", "{{.actionName}}", nodes)
        if plan.opens_run and plan.run_id:
            runs.setdefault(plan.run_id, (rank // nproc, plan.group))
    return runs


@at_scale
@pytest.mark.parametrize("group", [None, "exp a"])
@pytest.mark.parametrize(("run_mode", "rank_scope"), list(TWO_NODES))
def test_at_1024_nodes_every_run_is_two_clicks_away(run_mode: str, rank_scope: str, group: str | None) -> None:
    t = big_task(run_mode=run_mode, rank_scope=rank_scope, group=group)
    got = links(run_path_spec(t, {}))
    assert len(got) <= MAX_LINKS
    uris = {uri for _, uri in got}
    runs = planned_runs(WandbOptions(run_mode=run_mode, rank_scope=rank_scope, group=group), NODES, NPROC)
    expected_runs = NODES * NPROC if run_mode == "new" else NODES if rank_scope == "worker" else 1
    assert len(runs) == expected_runs
    # a run is two clicks away where a link leads to its own page or to its group's page
    on_a_linked_page = {
        run_id
        for run_id, (_, run_group) in runs.items()
        if f"{H}/runs/{run_id}" in uris or (run_group and f"{H}/groups/{quoted(run_group)}" in uris)
    }
    if rank_scope == "worker" and not group:
        # Per-node runs with no group in common: no W&B page lists exactly this task's runs. The
        # first 19 nodes keep their links; the last link is the project's page, which lists the
        # others among the project's runs (found there by their id, `{base}-worker-{node}`).
        assert on_a_linked_page == {r for r, (node, _) in runs.items() if node < MAX_LINKS - 1}
        assert got[-1] == (ALL, H)
    else:
        assert on_a_linked_page == set(runs)


@at_scale
@pytest.mark.parametrize("run_mode", ["auto", "shared", "new"])
def test_at_1024_nodes_the_first_nodes_keep_their_links(run_mode: str) -> None:
    t = big_task(run_mode=run_mode, rank_scope="worker")
    for spec in (run_path_spec(t, {}), deploy_path_spec(t)):
        assert links(spec) == [*per_node_links(run_mode, range(MAX_LINKS - 1)), (ALL, H)]
    # a group given in the run context is every run's: the last link is its page (in `new` mode, as
    # below the cap, it is every node's group too)
    group_page = (ALL, f"{H}/groups/exp%20a")
    first = per_node_links(run_mode, range(MAX_LINKS - 1))
    if run_mode == "new":
        first = [(name, group_page[1]) for name, _ in first]
    assert links(run_path_spec(t, wandb_config(group="exp a"))) == [*first, group_page]


@at_scale
@pytest.mark.parametrize("run_mode", ["auto", "shared", "new"])
def test_below_the_cap_one_link_per_node_as_before(run_mode: str) -> None:
    for nnodes in (MAX_LINKS, f"{MAX_LINKS}:{NODES}"):
        t = big_task(nnodes=nnodes, run_mode=run_mode, rank_scope="worker")
        assert links(run_path_spec(t, {})) == per_node_links(run_mode, range(MAX_LINKS))
    # one node more, sure to join: the cap applies
    t = big_task(nnodes=f"{MAX_LINKS + 1}:{NODES}", run_mode=run_mode, rank_scope="worker")
    assert links(run_path_spec(t, {})) == [*per_node_links(run_mode, range(MAX_LINKS - 1)), (ALL, H)]


@at_scale
def test_the_links_do_not_grow_with_the_job() -> None:
    def log_links(nnodes: int) -> bytes:
        t = big_task(nnodes=nnodes, run_mode="new", rank_scope="worker")
        return b"".join(log.SerializeToString() for log in run_path_spec(t, {}).task_template.metadata.log_links)

    assert log_links(NODES) == log_links(MAX_LINKS + 1)


@at_scale
def test_a_clustered_job_of_1024_nodes_gets_the_same_links() -> None:
    env = WandbClusteredTaskEnvironment(
        name="links_at_scale",
        replicas=NODES,
        nproc_per_node=NPROC,
        wandb=WandbOptions(entity="team", project="proj", rank_scope="worker"),
    )
    assert links(run_path_spec(env.task(train), {})) == [*per_node_links("auto", range(MAX_LINKS - 1)), (ALL, H)]


def test_capped_links_are_wandbs_own_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the templates filled in: the run pages and the project page as W&B itself names them.
    import wandb

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    declared = WandbOptions(entity="team", project="proj", rank_scope="worker")
    capped = links_for(declared, NODES, NODES, NPROC, AT_SELF_HOSTED)
    got = [link.get_link("r1", "proj", "dev", {}, "", "a0", "") for link in capped]

    def wandb_page(run_id: str | None = None) -> wandb.Settings:
        return wandb.Settings(base_url=SELF_HOSTED, entity="team", project="proj", run_id=run_id)

    assert got[:-1] == [wandb_page(run_id=f"r1-a0-worker-{i}").run_url for i in range(MAX_LINKS - 1)]
    assert got[-1] == wandb_page().project_url
