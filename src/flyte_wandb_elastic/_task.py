"""The task template that Flyte builds for functions of a `WandbElastic` environment."""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any

from flyte.extend import TaskPluginRegistry
from flyteplugins.pytorch.task import TorchFunctionTask

from ._config import WandbElastic
from ._hooks import RankHooks


@dataclass(kw_only=True)
class WandbElasticTask(TorchFunctionTask):
    """A PyTorch elastic task whose worker processes run the W&B rank hooks.

    It serializes exactly as the pytorch plugin's task (a PyTorchJob, or a python task for one
    node), so `flyte run`, `flyte deploy` and local runs treat it as a normal Elastic task.
    """

    plugin_config: WandbElastic

    def __post_init__(self) -> None:
        if inspect.iscoroutinefunction(self.func):
            raise TypeError(
                f"task {self.name!r}: func={self.func.__qualname__!r} is an async function, but torch elastic "
                "workers call the task function synchronously: declare it with `def`, not `async def`."
            )
        super().__post_init__()

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        # Runs in the launching process: hand torch elastic the function with the hooks around it.
        hooked = copy.copy(self)
        config = self.plugin_config
        hooked.func = RankHooks(self.func, config.wandb_options(), config.nproc_per_node)
        return await TorchFunctionTask.execute(hooked, *args, **kwargs)


TaskPluginRegistry.register(config_type=WandbElastic, plugin=WandbElasticTask)
