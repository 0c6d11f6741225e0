"""The task template that Flyte builds for functions of a `WandbElastic` environment."""

from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass
from typing import Any

import flyte
from flyte.extend import TaskPluginRegistry
from flyteplugins.pytorch.task import TorchFunctionTask

from ._config import WandbElastic
from ._hooks import RankHooks
from ._links import Wandb, links_for
from ._node_service import node_service
from ._planner import plan_rank
from ._topology import Topology

API_KEY_ENV = "WANDB_API_KEY"


@dataclass(kw_only=True)
class WandbElasticTask(TorchFunctionTask):
    """A PyTorch elastic task whose worker processes run the W&B rank hooks.

    It serializes exactly as the pytorch plugin's task (a PyTorchJob, or a python task for one
    node), with W&B console links and, when `api_key_secret` is set, a secret request for
    `WANDB_API_KEY`. `flyte run`, `flyte deploy` and local runs treat it as a normal Elastic task.
    """

    plugin_config: WandbElastic

    def __post_init__(self) -> None:
        if inspect.iscoroutinefunction(self.func):
            raise TypeError(
                f"task {self.name!r}: func={self.func.__qualname__!r} is an async function, but torch elastic "
                "workers call the task function synchronously: declare it with `def`, not `async def`."
            )
        super().__post_init__()
        config = self.plugin_config
        own = links_for(config.wandb_options(), self.min_nodes, self.max_nodes, config.nproc_per_node)
        # `override()` builds a new task from this one's links: replace ours rather than add twice.
        kept = tuple(link for link in self.links if not isinstance(link, Wandb))  # type: ignore[has-type]
        self.links = (*kept, *own)
        if config.api_key_secret is not None:
            requested = self.secrets  # type: ignore[has-type]
            self.secrets = _with_api_key(requested, config.api_key_secret, config.api_key_secret_group)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        # Runs in the launching process (one per node): hand torch elastic the function with the
        # hooks around it, and share one W&B service among this node's ranks when several log.
        hooked = copy.copy(self)
        config = self.plugin_config
        hooked.func = RankHooks(self.func, config.wandb_options(), self.max_nodes, config.nproc_per_node)
        service = node_service() if self._shares_a_service() else contextlib.nullcontext()
        with service:
            return await TorchFunctionTask.execute(hooked, *args, **kwargs)

    def _shares_a_service(self) -> bool:
        """Whether this node's ranks should share one W&B service, by the planner.

        Worth it when several ranks of a node open runs. Only runs with distinct ids can share
        one: a W&B service holds one stream per run id, so the writers of a shared-mode run each
        keep their own service. Never in a local run (one process).
        """
        ctx = flyte.ctx()
        if not ctx or ctx.mode == "local":
            return False
        options = self.plugin_config.resolved(ctx.custom_context)
        nproc = self.plugin_config.nproc_per_node
        plans = [
            plan_rank(options, Topology.in_job(local, self.max_nodes, nproc), "run", "action", self.max_nodes)
            for local in range(nproc)
        ]
        ids = [plan.run_id for plan in plans if plan.opens_run]
        return len(ids) > 1 and len(set(ids)) == len(ids)


def _with_api_key(secrets: Any, key: str, group: str | None) -> list[Any]:
    """`secrets` plus a request for the W&B API key as `WANDB_API_KEY` (replacing any earlier one)."""
    requested = [] if secrets is None else list(secrets) if isinstance(secrets, (list, tuple)) else [secrets]
    kept = [s for s in requested if not (isinstance(s, flyte.Secret) and s.as_env_var == API_KEY_ENV)]
    return [*kept, flyte.Secret(key=key, group=group, as_env_var=API_KEY_ENV)]


TaskPluginRegistry.register(config_type=WandbElastic, plugin=WandbElasticTask)
