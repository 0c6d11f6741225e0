"""`@wandb_sweep`: a Flyte task that creates a W&B sweep (or joins its caller's) for its agents.

The sweep comes from `wandb_sweep_config(...)` in the run context. Its id is published in the run
context while the task runs (`get_wandb_sweep_id()`, and the `WandbSweep` console link), so the
tasks it calls (e.g. one `wandb.agent` per task) join the same sweep. The trials are plain
functions decorated with `@wandb_init`: inside `wandb.agent` each call writes the agent's run.

Process: the task's own process (for a distributed task, the launching one, before the ranks start).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast, overload

import flyte
from flyte.extend import AsyncFunctionTaskTemplate

from . import _wandb_server
from ._decorator import _replace_in_env
from ._downloads import download_wandb_sweep_logs
from ._links import WandbSweep, server_env
from ._options import from_context, invalid
from ._sweep_options import SWEEP_ID_KEY, WandbSweepOptions, sweep_from_context

T = TypeVar("T")

# `wandb.sweep` keywords besides the sweep configuration, project and entity.
_SWEEP_KWARGS = ("prior_runs",)


@overload
def wandb_sweep(_func: T) -> T: ...


@overload
def wandb_sweep(
    _func: None = None,
    *,
    project: str | None = None,
    entity: str | None = None,
    download_logs: bool | None = None,
    **kwargs: Any,
) -> Callable[[T], T]: ...


def wandb_sweep(
    _func: Any = None,
    *,
    project: str | None = None,
    entity: str | None = None,
    download_logs: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Create a W&B sweep when the task starts, from `wandb_sweep_config(...)` in the run context.

    Place it above `@env.task`. If a caller already created a sweep, the task joins it instead.
    The sweep id is `get_wandb_sweep_id()` in the task and in the tasks it calls, and the task
    gets a `WandbSweep` console link to it.

    Args:
        project: W&B project of the sweep (before `wandb_sweep_config`'s and `wandb_config`'s).
        entity: W&B entity of the sweep (same order).
        download_logs: Whether to download every run of the sweep after the task (a traced
            step); `None` follows `wandb_sweep_config(download_logs=...)`.
        **kwargs: Other `wandb.sweep` keywords: `prior_runs` (before `wandb_sweep_config`'s).

    Returns:
        The decorated task (or, called with arguments only, the decorator).

    Raises:
        ValueError: An argument is invalid.
        TypeError: It is not placed on a Flyte task (e.g. under `@env.task`).
    """
    for key, value in kwargs.items():
        if key not in _SWEEP_KWARGS:
            raise invalid(key, value, "no keyword of wandb_sweep but project, entity, download_logs and prior_runs")
    if download_logs is not None and not isinstance(download_logs, bool):
        raise invalid("download_logs", download_logs, "True, False or None")
    declared = WandbSweepOptions(project=project, entity=entity, prior_runs=kwargs.get("prior_runs"))

    def decorate(target: Any) -> Any:
        if isinstance(target, AsyncFunctionTaskTemplate):
            return _on_task(target, declared, download_logs)
        name = getattr(target, "__qualname__", repr(target))
        raise TypeError(
            f"@wandb_sweep applies to a Flyte task, got {name!r}: place it above @env.task (it must be the "
            "outermost decorator)."
        )

    return decorate if _func is None else decorate(_func)


def _on_task(
    task: AsyncFunctionTaskTemplate, declared: WandbSweepOptions, download_logs: bool | None
) -> AsyncFunctionTaskTemplate:
    execute = task.execute  # before `override`, which drops an `execute` another decorator set
    kept = tuple(link for link in task.links if not isinstance(link, WandbSweep))
    link = WandbSweep(project=declared.project, entity=declared.entity, env=server_env(task.env_vars))
    new_task = _replace_in_env(task, cast(AsyncFunctionTaskTemplate, task.override(links=(*kept, link))))

    async def execute_in_sweep(*args: Any, **kwargs: Any) -> Any:
        with sweep_session(declared) as sweep_id:
            result = await execute(*args, **kwargs)
        ctx = flyte.ctx()
        sweep = sweep_from_context(ctx.custom_context if ctx else {})
        if download_logs if download_logs is not None else bool(sweep and sweep.download_logs):
            await download_wandb_sweep_logs(sweep_id)
        return result

    new_task.execute = execute_in_sweep  # type: ignore[method-assign]
    return new_task


@contextmanager
def sweep_session(declared: WandbSweepOptions) -> Iterator[str]:
    """Create the sweep (or join the caller's) and publish its id in the run context for the block.

    Raises:
        RuntimeError: No sweep is configured in the run context, W&B is set to log offline, or
            W&B could not create the sweep.
    """
    ctx = flyte.ctx()
    if not ctx:
        raise RuntimeError("@wandb_sweep runs inside a Flyte task: no task context here")
    existing = ctx.custom_context.get(SWEEP_ID_KEY)
    if existing:  # a caller's sweep: its agents join it
        yield existing
        return
    sweep = sweep_from_context(ctx.custom_context)
    if sweep is None:
        raise RuntimeError(
            "@wandb_sweep found no sweep configuration in the run context: run the task with "
            "flyte.with_runcontext(custom_context={**wandb_config(...), **wandb_sweep_config(method=..., "
            "metric=..., parameters=...)}), or call it inside `with wandb_sweep_config(...):`."
        )
    options = from_context(ctx.custom_context)
    config = sweep.to_sweep_config()
    config.setdefault("name", f"{ctx.action.run_name}-{ctx.action.name}")
    _wandb_server.require_server(f"creating the W&B sweep {config['name']!r}", options.mode, "wandb_config")
    sweep_id = _wandb_server.create_sweep(
        config,
        project=declared.project or sweep.project or options.project,
        entity=declared.entity or sweep.entity or options.entity,
        prior_runs=list(declared.prior_runs or sweep.prior_runs or []),
        host=options.host,
    )
    ctx.custom_context[SWEEP_ID_KEY] = sweep_id
    try:
        yield sweep_id
    finally:
        ctx.custom_context.pop(SWEEP_ID_KEY, None)
