"""The per-rank hooks that wrap the user's function.

Process: `RankHooks.__call__` runs inside each worker process that torch elastic starts (and,
in a local run, in the one process that calls the function). The launching process only pickles
it; it opens no run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import flyte

from ._options import WandbOptions
from ._planner import plan_rank
from ._topology import Topology

_current_run: ContextVar[Any] = ContextVar("flyte_wandb_elastic_run", default=None)


def get_wandb_run() -> Any:
    """This rank's W&B run, or `None` where this rank opened none."""
    return _current_run.get()


def get_distributed_info() -> dict[str, Any] | None:
    """This rank's place in the job, or `None` when the job is not distributed.

    Returns:
        A dict with `rank`, `local_rank`, `world_size`, `local_world_size`, `worker_index` and
        `num_workers`, or `None`.
    """
    return Topology.from_env(os.environ).as_info()


@dataclass
class RankHooks:
    """The user's function with this package's pre- and post-execute hooks around it.

    Attributes:
        func: The user's task function.
        options: The W&B options declared for the task (run context not yet applied).
        max_nodes: The most nodes the task's `nnodes` allows.
        nproc_per_node: Ranks per node.
    """

    func: Callable[..., Any]
    options: WandbOptions
    max_nodes: int = 1
    nproc_per_node: int = 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = self.pre_execute()
        token = _current_run.set(run)
        try:
            result = self.func(*args, **kwargs)
        except BaseException as exc:
            _current_run.reset(token)
            self.post_execute(run, exc)
            raise
        _current_run.reset(token)
        self.post_execute(run, None)
        return result

    def pre_execute(self) -> Any:
        """Open this rank's run if the plan says so; return it, or `None`."""
        ctx = flyte.ctx()
        topology = Topology.from_env(os.environ)
        options = self.options.resolved(ctx.custom_context if ctx else None)
        action = ctx.action if ctx else None
        run_name, action_name = (action.run_name or "", action.name) if action else ("local", "run")
        plan = plan_rank(options, topology, run_name, action_name, self.max_nodes)
        if not plan.opens_run:
            return None
        from . import _wandb_run  # imported only by ranks that log

        meta = {
            "project": action.project if action else None,
            "domain": action.domain if action else None,
            "run_name": run_name,
            "action_name": action_name,
            "attempt": int(os.environ.get("FLYTE_ATTEMPT_NUMBER", "0")),
            "restart_count": topology.restart_count,
            "rank": topology.rank,
            "local_rank": topology.local_rank,
            "node_rank": topology.node_rank,
            "world_size": topology.world_size,
            "nproc_per_node": self.nproc_per_node,
        }
        return _wandb_run.open_run(plan, options, meta)

    def post_execute(self, run: Any, error: BaseException | None) -> None:
        """Finish `run` (if any) with exit code 0, or 1 when the function raised `error`."""
        if error is not None:
            _record_for_torch_elastic(error)
        if run is None:
            return
        from . import _wandb_run

        _wandb_run.finish_run(run, exit_code=0 if error is None else 1)


def _record_for_torch_elastic(error: BaseException) -> None:
    """Write the rank's error where torch elastic reads it, so the task fails with this message."""
    if "TORCHELASTIC_ERROR_FILE" not in os.environ or not isinstance(error, Exception):
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    ErrorHandler().record_exception(error)
