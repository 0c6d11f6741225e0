"""Flyte console links from a task to its W&B runs, computed by the same planner as the runs.

Process: `get_link` runs wherever the task is serialized (`flyte.run`, `flyte deploy`, or a
parent task submitting this one), with the Flyte run and action names as templates that the
backend substitutes. The W&B server is the one the pods log to, by `_wandb_host`'s rule applied to
the task's `env_vars` (what Flyte gives the pods), never to the serializing process's environment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ._options import PARENT_RUN_KEY, RankScope, RunMode, WandbOptions, from_context
from ._planner import RankPlan, plan_rank
from ._sweep_options import SWEEP_ID_KEY, WandbSweepOptions, sweep_from_context
from ._topology import Topology
from ._wandb_host import PUBLIC_APP_URL, SERVER_ENV, wandb_server

DEFAULT_HOST = PUBLIC_APP_URL
_ICON = "https://wandb.ai/favicon.ico"

MAX_LINKS = 20
"""The most W&B console links `links_for` gives a task, at any size."""


def _part(value: str) -> str:
    # Keep Flyte's `{{.runName}}` templates intact for the backend to substitute.
    return quote(value, safe="{}.-_~")


def _plans_of_every_node(
    options: WandbOptions,
    max_nodes: int,
    nproc_per_node: int,
    run_name: str,
    action_name: str,
    context: Mapping[str, str],
) -> Iterator[RankPlan]:
    """The planner's plan for the first rank of every node of a job on `max_nodes` nodes.

    A run's group is at most per node (the planner's scopes are the job or a node), so these
    plans hold every group the job's runs have.
    """
    parent_run_id = (context or {}).get(PARENT_RUN_KEY)
    for node in range(max_nodes):
        topology = Topology.in_job(node * nproc_per_node, max_nodes, nproc_per_node)
        yield plan_rank(options, topology, run_name, action_name, max_nodes, parent_run_id)


def server_env(env_vars: Mapping[str, str] | None) -> dict[str, str]:
    """The variables of a task's `env_vars` that choose its W&B server (`WANDB_BASE_URL`, `WANDB_APP_URL`)."""
    return {key: env_vars[key] for key in SERVER_ENV if env_vars and env_vars.get(key)}


@dataclass
class Wandb:
    """A Flyte console link to the W&B run (or group of runs) that one scope of a task writes.

    `links_for` builds these for a task; the URL comes from the planner, so it names exactly the
    run or group that the ranks write. The first fields are upstream's, so a link declared by hand
    as upstream's (`Wandb(project=..., entity=...)`) works too: a field left at its default counts
    as unset, and the run context fills it.

    The URL names the server the pods log to: `host` (from the link, `options` or the run
    context; `https://wandb.ai` counts as unset), else `WANDB_BASE_URL` in `env`, else W&B's cloud.

    Attributes:
        host: W&B base URL.
        project: W&B project.
        entity: W&B entity.
        run_mode: `"auto"`, `"shared"` or `"new"`.
        rank_scope: `"global"` or `"worker"`.
        id: Run id that replaces the `{flyte run}-{action}` base id.
        name: The link's label in the Flyte console.
        _is_distributed: Upstream's flag for a task of more than one rank.
        _worker_index: Upstream's node index, for a per-node link of a multi-node task.
        options: The task's declared W&B options (the fields above win over them); the run
            context fills the unset ones.
        max_nodes: The most nodes the task's `nnodes` allows.
        nproc_per_node: Ranks per node.
        node: For per-node runs (`rank_scope="worker"` on several nodes), the node linked to.
        icon_uri: The link's icon.
        env: The W&B server variables of the task's `env_vars` (see `server_env`).
        every_node: Link to the page that lists the runs of every node instead of one node's
            (for a task with too many nodes for a link each): see `get_link`.
    """

    host: str = DEFAULT_HOST
    project: str | None = None
    entity: str | None = None
    run_mode: RunMode = "auto"
    rank_scope: RankScope = "global"
    id: str | None = None
    name: str = "Weights & Biases"
    _is_distributed: bool = False
    _worker_index: int | None = None
    options: WandbOptions = field(default_factory=WandbOptions)
    max_nodes: int = 1
    nproc_per_node: int = 1
    node: int = 0
    icon_uri: str | None = _ICON
    env: dict[str, str] = field(default_factory=dict)
    every_node: bool = False

    def __post_init__(self) -> None:
        self.declared()  # invalid fields fail here, where the link is written

    def declared(self) -> WandbOptions:
        """The link's own fields over `options` (fields at their defaults count as unset).

        Raises:
            ValueError: A field is invalid.
        """
        own = WandbOptions(
            project=self.project,
            entity=self.entity,
            host=None if self.host == DEFAULT_HOST else self.host,
            run_mode=None if self.run_mode == "auto" else self.run_mode,
            rank_scope=None if self.rank_scope == "global" else self.rank_scope,
            id=self.id,
        )
        return own.filled_from(self.options)

    def get_link(
        self,
        run_name: str,
        project: str,
        domain: str,
        context: dict[str, str],
        parent_action_name: str,
        action_name: str,
        pod_name: str,
        **kwargs: Any,
    ) -> str:
        """The URL of this scope's run (auto, shared) or group of rank runs (new).

        With `every_node`, the page that lists the runs of every node the task may run on: the
        page of their group where the planner gives all of them one (a `group` of yours, in every
        mode), else the project's page (W&B's `run.project_url`), which lists them among the
        project's other runs.

        Without a known entity and project the URL is the W&B home page (or the entity's page),
        which always exists; set `entity` and `project` on `WandbElastic` or in `wandb_config`.
        """
        options = self.declared().resolved(context)
        host = wandb_server(options.host, self.env).app_url
        if not options.entity:
            return f"{host}/home"
        if not options.project:
            return f"{host}/{_part(options.entity)}"
        page = f"{host}/{_part(options.entity)}/{_part(options.project)}"
        if self.every_node:
            plans = _plans_of_every_node(options, self.max_nodes, self.nproc_per_node, run_name, action_name, context)
            groups = {plan.group for plan in plans if plan.opens_run and not plan.offline}
            group = groups.pop() if len(groups) == 1 else None
            return f"{page}/groups/{_part(group)}" if group else page
        max_nodes, nproc_per_node, node = self.max_nodes, self.nproc_per_node, self.node
        if self._worker_index is not None:  # upstream's link to one node of a multi-node task
            node, max_nodes = self._worker_index, max(max_nodes, self._worker_index + 1, 2)
        if self._is_distributed and max_nodes * nproc_per_node == 1:
            nproc_per_node = 2  # upstream's flag only says "several ranks": any count links the same
        # The first rank of the linked node: the primary of its scope in every mode. Without
        # worker scope (e.g. the run context changed it) there is one scope, led by node 0.
        node = node if options.rank_scope == "worker" else 0
        topology = Topology.in_job(node * nproc_per_node, max_nodes, nproc_per_node)
        plan = plan_rank(options, topology, run_name, action_name, max_nodes, (context or {}).get(PARENT_RUN_KEY))
        if options.run_mode == "new" and plan.group:
            return f"{page}/groups/{_part(plan.group)}"
        return f"{page}/runs/{_part(plan.run_id or '')}"


@dataclass
class WandbSweep:
    """A Flyte console link to the W&B sweep that a `@wandb_sweep` task creates (or joins).

    Fields left unset are read from the run context: the sweep id the task published, the
    project and entity of `wandb_sweep_config` (where `@wandb_sweep` creates the sweep), else of
    `wandb_config`. Before the sweep exists, the link is the project's sweeps page. The server is
    chosen as for `Wandb`.

    Attributes:
        host: W&B base URL (unset at its default: `wandb_config(host=...)` then applies).
        project: W&B project of the sweep.
        entity: W&B entity of the sweep.
        id: Sweep id.
        name: The link's label in the Flyte console.
        icon_uri: The link's icon.
        env: The W&B server variables of the task's `env_vars` (see `server_env`).
    """

    host: str = DEFAULT_HOST
    project: str | None = None
    entity: str | None = None
    id: str | None = None
    name: str = "Weights & Biases Sweep"
    icon_uri: str | None = _ICON
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The same checks as the run options' fields of the same names.
        WandbOptions(project=self.project, entity=self.entity, id=self.id, host=self.host)

    def get_link(
        self,
        run_name: str,
        project: str,
        domain: str,
        context: dict[str, str],
        parent_action_name: str,
        action_name: str,
        pod_name: str,
        **kwargs: Any,
    ) -> str:
        """The URL of the sweep, else of the project's sweeps page.

        Without a known entity and project the URL is the W&B home page (or the entity's page).
        """
        context = context or {}
        options = from_context(context)
        sweep = sweep_from_context(context) or WandbSweepOptions()
        host = wandb_server(self.host if self.host != DEFAULT_HOST else options.host, self.env).app_url
        entity = self.entity or sweep.entity or options.entity
        wandb_project = self.project or sweep.project or options.project
        if not entity:
            return f"{host}/home"
        if not wandb_project:
            return f"{host}/{_part(entity)}"
        page = f"{host}/{_part(entity)}/{_part(wandb_project)}/sweeps"
        sweep_id = self.id or context.get(SWEEP_ID_KEY)
        return f"{page}/{_part(sweep_id)}" if sweep_id else page


def links_for(
    options: WandbOptions,
    min_nodes: int,
    max_nodes: int,
    nproc_per_node: int,
    env_vars: Mapping[str, str] | None = None,
) -> tuple[Wandb, ...]:
    """The console links of a task: one per run scope that is sure to exist, at most `MAX_LINKS`.

    With `rank_scope="worker"` on several nodes there is one link per node. For an elastic
    `nnodes="MIN:MAX"`, only nodes `0..MIN-1` are sure to join, so only they get a link: a link
    to a node that never joined would lead nowhere. Where that is more than `MAX_LINKS` nodes, the
    first `MAX_LINKS - 1` nodes keep theirs and one more link leads to the page that lists the
    runs of every node (see `Wandb.get_link`). `rank_scope` set only in the run context is
    not known here (links are fixed when the task is declared); declare it on `WandbElastic` to
    get per-node links. `env_vars` are the task's: where they set `WANDB_BASE_URL`, the pods log
    there, and so the links name it.
    """
    env = server_env(env_vars)
    if options.rank_scope == "worker" and max_nodes > 1:
        linked = min_nodes if min_nodes <= MAX_LINKS else MAX_LINKS - 1
        per_node = tuple(
            Wandb(
                options=options,
                max_nodes=max_nodes,
                nproc_per_node=nproc_per_node,
                node=i,
                name=f"Weights & Biases Worker {i}",
                env=env,
            )
            for i in range(linked)
        )
        if linked == min_nodes:
            return per_node
        every_node = Wandb(
            options=options,
            max_nodes=max_nodes,
            nproc_per_node=nproc_per_node,
            name="Weights & Biases All Workers",
            env=env,
            every_node=True,
        )
        return (*per_node, every_node)
    return (Wandb(options=options, max_nodes=max_nodes, nproc_per_node=nproc_per_node, env=env),)
