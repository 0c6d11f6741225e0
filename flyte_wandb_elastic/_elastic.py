"""The Elastic engine: the task template that Flyte builds for functions of a `WandbElastic` environment."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import flyte
from flyte.extend import TaskPluginRegistry
from flyteplugins.pytorch.task import TorchFunctionTask

from ._config import WandbElastic
from ._deadline import DEFAULT_FINISH_TIMEOUT_S
from ._hooks import RankHooks
from ._node_service import node_service
from ._task_spec import check_env_vars, check_sync, node_shares_a_service, with_api_key, with_wandb_links
from ._zombie_watchdog import in_place_of_the_plugins


@dataclass(kw_only=True)
class WandbElasticTask(TorchFunctionTask):
    """A PyTorch elastic task whose worker processes run the W&B rank hooks.

    It serializes exactly as the pytorch plugin's task (a PyTorchJob, or a python task for one
    node), with W&B console links and, when `api_key_secret` is set, a secret request for
    `WANDB_API_KEY`. `flyte run`, `flyte deploy` and local runs treat it as a normal Elastic task.
    """

    plugin_config: WandbElastic

    def __post_init__(self) -> None:
        check_sync(self.name, self.func)
        super().__post_init__()
        check_env_vars(self.env_vars)
        config = self.plugin_config
        self.links = with_wandb_links(
            self.links,  # type: ignore[has-type]
            config.wandb_options(),
            self.min_nodes,
            self.max_nodes,
            config.nproc_per_node,
            self.env_vars,
        )
        self.secrets = with_api_key(self.secrets, config.api_key_secret, config.api_key_secret_group)  # type: ignore[has-type]

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        # Runs in the launching process (one per node): hand torch elastic the function with the
        # hooks around it, and share one W&B service among this node's ranks when several log. The
        # plugin's zombie watchdog is replaced by one that never fails a job whose ranks all returned.
        hooked = copy.copy(self)
        config = self.plugin_config
        hooked.func = RankHooks(
            self.func, config.wandb_options(), self.max_nodes, config.nproc_per_node, report=self.report
        )
        ctx = flyte.ctx()
        shares = node_shares_a_service(ctx, config.wandb_options(), self.max_nodes, config.nproc_per_node)
        finish_timeout = config.wandb_options().resolved(ctx.custom_context if ctx else {}).finish_timeout
        service = node_service(finish_timeout or DEFAULT_FINISH_TIMEOUT_S) if shares else contextlib.nullcontext()
        with service, in_place_of_the_plugins():
            return await TorchFunctionTask.execute(hooked, *args, **kwargs)


TaskPluginRegistry.register(config_type=WandbElastic, plugin=WandbElasticTask)
