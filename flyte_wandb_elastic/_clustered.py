"""The clustered engine: `flyte.clustered` environments (a JobSet whose pods exec torchrun) with W&B.

Each rank is a full Flyte `a0` process that torchrun starts, and `a0` calls the task's `execute`
itself, so the rank hooks wrap `execute` there. No launcher of ours runs on this path.
"""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass, field
from typing import Any

import flyte
from flyte.clustered import ClusteredTaskEnvironment, ClusteredTaskTemplate
from flyte.clustered._task import _ClusteredPlugin
from flyte.extend import TaskPluginRegistry

from ._config import check_api_key_fields
from ._hooks import RankHooks
from ._job_end import JobEnd
from ._options import WandbOptions, invalid
from ._task_spec import check_env_vars, node_shares_a_service, with_api_key, with_wandb_links
from ._topology import Topology
from ._wandb_load import warn_at_declaration


@dataclass(frozen=True, eq=False)
class WandbClusteredPlugin(_ClusteredPlugin):
    """The clustered settings snapshot, plus what the ranks need to log to W&B.

    Attributes:
        wandb: The W&B options declared for the tasks.
        api_key_secret: Name of the Flyte secret holding the W&B API key, or `None`.
        api_key_secret_group: Its group, or `None`.
    """

    wandb: WandbOptions = field(default_factory=WandbOptions)
    api_key_secret: str | None = None
    api_key_secret_group: str | None = None

    @property
    def replicas(self) -> int:
        """Pods (nodes) of the job."""
        return self._settings().replicas

    @property
    def nproc_per_node(self) -> int:
        """Ranks per pod."""
        return self._settings().nproc_per_node

    def _settings(self) -> Any:
        if self.settings is None:
            raise ValueError("WandbClusteredPlugin.settings is None: build it from a ClusteredTaskEnvironment")
        return self.settings


@dataclass(kw_only=True)
class WandbClusteredTaskEnvironment(ClusteredTaskEnvironment):
    """A clustered environment (JobSet + torchrun) whose ranks log to W&B.

    Every `ClusteredTaskEnvironment` field is kept (`replicas`, `nproc_per_node`, `runtime`, ...).
    `replicas` plays the part of `Elastic`'s `nnodes`: the same run ids, groups, labels, links and
    exit states as the equivalent `WandbElastic` declaration.

    Example:
        ```python
        env = WandbClusteredTaskEnvironment(
            name="train", replicas=2, nproc_per_node=4, runtime=TorchRun(rdzv_backend="c10d"),
            wandb=WandbOptions(project="my-project", run_mode="shared", rank_scope="worker"),
            api_key_secret="wandb-api-key",
        )
        ```

    Attributes:
        wandb: How the ranks log (`WandbOptions`); unset fields come from the run context.
        api_key_secret: Name of a Flyte secret holding the W&B API key, given to every rank as
            `WANDB_API_KEY`.
        api_key_secret_group: Its group, for stores that use one.

    Warns:
        WandbLimitWarning: The declared layout, online on `replicas` x `nproc_per_node` ranks,
            would exceed one of W&B's documented limits (see the scale page of the docs).

    Raises:
        ValueError: A field is invalid; the message names the field, the value and what is allowed.
    """

    wandb: WandbOptions = field(default_factory=WandbOptions)
    api_key_secret: str | None = None
    api_key_secret_group: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.wandb, WandbOptions):
            raise invalid("wandb", self.wandb, "a WandbOptions(...)")
        for name in ("replicas", "nproc_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid(name, value, "an int >= 1")
        check_api_key_fields(self.api_key_secret, self.api_key_secret_group)
        super().__post_init__()
        assert isinstance(self.plugin_config, _ClusteredPlugin)  # set by ClusteredTaskEnvironment
        self.plugin_config = WandbClusteredPlugin(
            settings=self.plugin_config.settings,
            wandb=self.wandb.wandb_options(),
            api_key_secret=self.api_key_secret,
            api_key_secret_group=self.api_key_secret_group,
        )
        fields = {"replicas": self.replicas, "nproc_per_node": self.nproc_per_node}
        warn_at_declaration(self.wandb, type(self).__name__, fields, self.replicas, self.nproc_per_node, self.env_vars)


@dataclass(kw_only=True)
class WandbClusteredTask(ClusteredTaskTemplate):
    """A clustered task whose ranks run the W&B rank hooks around the function.

    It serializes exactly as Flyte's `clustered-task` (the same `custom` payload and `clustered`
    entrypoint), with W&B console links and, when `api_key_secret` is set, a secret request for
    `WANDB_API_KEY`.
    """

    plugin_config: WandbClusteredPlugin

    def __post_init__(self) -> None:
        super().__post_init__()
        check_env_vars(self.env_vars)
        config = self.plugin_config
        replicas = config.replicas
        self.links = with_wandb_links(
            self.links, config.wandb, replicas, replicas, config.nproc_per_node, self.env_vars
        )
        self.secrets = with_api_key(self.secrets, config.api_key_secret, config.api_key_secret_group)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        # Runs in each rank's own `a0` (torchrun starts `nproc_per_node` per pod), from the main
        # thread, while Flyte runs a sync function in a thread of its own; once in a local run.
        config = self.plugin_config
        ctx = flyte.ctx()
        shares = node_shares_a_service(ctx, config.wandb, config.replicas, config.nproc_per_node)
        hooks = RankHooks(self.func, config.wandb, config.replicas, config.nproc_per_node, shares, self.report)
        output_path = ctx.output_path if ctx else None
        with hooks.session(interrupt=False, on_stopped=functools.partial(upload_peer_failure, output_path)):
            return await ClusteredTaskTemplate.execute(self, *args, **kwargs)


def upload_peer_failure(output_path: str | None) -> None:
    """On global rank 0, stopped by torchrun: make the rank that failed first the task's error.

    Flyte lets only rank 0 write a clustered task's error, and rank 0 is stopped, not failed, when
    another rank fails. Its `error.pb` then names that rank and its error, within Flyte's rule for
    JobSet restarts (written only once the restart budget looks used up).
    """
    topology = Topology.from_env(os.environ)
    # a connection of its own: the rank's may be inside a wait in the main thread
    failure = JobEnd(topology).first_failure() if topology.rank == 0 and output_path else None
    if failure is None or failure["rank"] == 0:
        return
    from flyte._internal.runtime.io import upload_error
    from flyteidl2.core import execution_pb2

    error = execution_pb2.ExecutionError(
        kind=execution_pb2.ExecutionError.USER,
        code=failure["type"],
        message=f"rank {failure['rank']} failed: {failure['type']}: {failure['message']}",
        worker=f"rank-{failure['rank']}",
    )
    asyncio.run(upload_error(error, str(output_path)))


def with_wandb(config: _ClusteredPlugin, options: WandbOptions) -> WandbClusteredPlugin:
    """A clustered task's plugin config with `options` over the W&B options it already declares."""
    declared = config.wandb if isinstance(config, WandbClusteredPlugin) else WandbOptions()
    plugin = WandbClusteredPlugin(
        settings=config.settings,
        wandb=options.filled_from(declared),
        api_key_secret=getattr(config, "api_key_secret", None),
        api_key_secret_group=getattr(config, "api_key_secret_group", None),
    )
    fields = {"replicas": plugin.replicas, "nproc_per_node": plugin.nproc_per_node}
    warn_at_declaration(plugin.wandb, "@wandb_init on a clustered task", fields, plugin.replicas, plugin.nproc_per_node)
    return plugin


TaskPluginRegistry.register(config_type=WandbClusteredPlugin, plugin=WandbClusteredTask)
