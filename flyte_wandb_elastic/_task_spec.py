"""What a W&B task declares on every engine: checks, console links, the API key request, and
whether a node's ranks share one W&B service. The engine adapters (`_elastic`, `_clustered`) call
these when a task is declared or starts, so both engines declare exactly the same things.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flyte

from ._links import Wandb, links_for
from ._options import WandbOptions
from ._planner import plan_rank
from ._report_html import chart_lines
from ._topology import Topology

API_KEY_ENV = "WANDB_API_KEY"


def check_sync(task_name: str, func: Callable[..., Any]) -> None:
    """Raise when an Elastic task's function is async: torch elastic workers call it synchronously.

    (A clustered task's `a0` runs an async function on its own event loop: no check there.)
    """
    if inspect.iscoroutinefunction(func):
        raise TypeError(
            f"task {task_name!r}: func={func.__qualname__!r} is an async function, but torch elastic ranks call the "
            "task function synchronously: declare it with `def`, not `async def`."
        )


def check_env_vars(env_vars: Mapping[str, str] | None) -> None:
    """Raise where the task's `env_vars` set a variable of this package's to a value it refuses."""
    chart_lines(env_vars or {})


def with_wandb_links(
    links: tuple[Any, ...],
    options: WandbOptions,
    min_nodes: int,
    max_nodes: int,
    nproc_per_node: int,
    env_vars: Mapping[str, str] | None,
) -> tuple[Any, ...]:
    """`links` with this task's W&B links in place of any earlier ones (`override()` copies them).

    `env_vars` are the task's (`TaskEnvironment(env_vars=...)`, `override(env_vars=...)`): the
    links name the W&B server they point the pods at.
    """
    kept = tuple(link for link in links if not isinstance(link, Wandb))
    return (*kept, *links_for(options, min_nodes, max_nodes, nproc_per_node, env_vars))


def with_api_key(secrets: Any, key: str | None, group: str | None) -> Any:
    """`secrets` plus a request for the W&B API key as `WANDB_API_KEY` (replacing any earlier one)."""
    if key is None:
        return secrets
    requested = [] if secrets is None else list(secrets) if isinstance(secrets, (list, tuple)) else [secrets]
    kept = [s for s in requested if not (isinstance(s, flyte.Secret) and s.as_env_var == API_KEY_ENV)]
    return [*kept, flyte.Secret(key=key, group=group, as_env_var=API_KEY_ENV)]


def node_shares_a_service(ctx: Any, declared: WandbOptions, max_nodes: int, nproc_per_node: int) -> bool:
    """Whether this task's nodes run one W&B service for their ranks (see `shares_a_service`).

    Never in a local run (one process) or outside a task.

    Args:
        ctx: The task context (`flyte.ctx()`).
        declared: The task's declared options; the run context fills the unset ones.
        max_nodes: The most nodes the task may run on.
        nproc_per_node: Ranks per node.
    """
    if not ctx or ctx.mode == "local":
        return False
    return shares_a_service(declared.resolved(ctx.custom_context), max_nodes, nproc_per_node)


def shares_a_service(options: WandbOptions, max_nodes: int, nproc_per_node: int) -> bool:
    """Whether a node's ranks share one W&B service under `options`' layout, by the planner.

    Worth it when several ranks of a node open runs. Only runs with distinct ids can share one: a
    W&B service holds one stream per run id, so the writers of a shared-mode run each keep their
    own service.
    """
    plans = [
        plan_rank(options, Topology.in_job(local, max_nodes, nproc_per_node), "run", "action", max_nodes)
        for local in range(nproc_per_node)
    ]
    ids = [plan.run_id for plan in plans if plan.opens_run]
    return len(ids) > 1 and len(set(ids)) == len(ids)
