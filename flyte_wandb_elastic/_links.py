"""Flyte console links from a task to its W&B runs, computed by the same planner as the runs.

Process: `get_link` runs wherever the task is serialized (`flyte.run`, `flyte deploy`, or a
parent task submitting this one), with the Flyte run and action names as templates that the
backend substitutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ._options import PARENT_RUN_KEY, WandbOptions
from ._planner import plan_rank
from ._topology import Topology

DEFAULT_HOST = "https://wandb.ai"
_ICON = "https://wandb.ai/favicon.ico"


def _part(value: str) -> str:
    # Keep Flyte's `{{.runName}}` templates intact for the backend to substitute.
    return quote(value, safe="{}.-_~")


@dataclass
class Wandb:
    """A Flyte console link to the W&B run (or group of runs) that one scope of a task writes.

    `links_for` builds these for a task; the URL comes from the planner, so it names exactly the
    run or group that the ranks write.

    Attributes:
        options: The task's declared W&B options; the run context fills the unset ones.
        max_nodes: The most nodes the task's `nnodes` allows.
        nproc_per_node: Ranks per node.
        node: For per-node runs (`rank_scope="worker"` on several nodes), the node linked to.
        name: The link's label in the Flyte console.
        icon_uri: The link's icon.
    """

    options: WandbOptions
    max_nodes: int = 1
    nproc_per_node: int = 1
    node: int = 0
    name: str = "Weights & Biases"
    icon_uri: str | None = _ICON

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

        Without a known entity and project the URL is the W&B home page (or the entity's page),
        which always exists; set `entity` and `project` on `WandbElastic` or in `wandb_config`.
        """
        options = self.options.resolved(context)
        host = (options.host or DEFAULT_HOST).rstrip("/")
        if not options.entity:
            return f"{host}/home"
        if not options.project:
            return f"{host}/{_part(options.entity)}"
        # The first rank of the linked node: the primary of its scope in every mode. Without
        # worker scope (e.g. the run context changed it) there is one scope, led by node 0.
        node = self.node if options.rank_scope == "worker" else 0
        topology = Topology.in_job(node * self.nproc_per_node, self.max_nodes, self.nproc_per_node)
        plan = plan_rank(options, topology, run_name, action_name, self.max_nodes, context.get(PARENT_RUN_KEY))
        page = f"{host}/{_part(options.entity)}/{_part(options.project)}"
        if options.run_mode == "new" and plan.group:
            return f"{page}/groups/{_part(plan.group)}"
        return f"{page}/runs/{_part(plan.run_id or '')}"


def links_for(options: WandbOptions, min_nodes: int, max_nodes: int, nproc_per_node: int) -> tuple[Wandb, ...]:
    """The console links of a task: one per run scope that is sure to exist.

    With `rank_scope="worker"` on several nodes there is one link per node. For an elastic
    `nnodes="MIN:MAX"`, only nodes `0..MIN-1` are sure to join, so only they get a link: a link
    to a node that never joined would lead nowhere. `rank_scope` set only in the run context is
    not known here (links are fixed when the task is declared); declare it on `WandbElastic` to
    get per-node links.
    """
    if options.rank_scope == "worker" and max_nodes > 1:
        return tuple(
            Wandb(options, max_nodes, nproc_per_node, node=i, name=f"Weights & Biases Worker {i}")
            for i in range(min_nodes)
        )
    return (Wandb(options, max_nodes, nproc_per_node),)
