"""`@wandb_init`: the upstream decorator's interface, mapped onto the same hooks as `WandbElastic`.

- On an Elastic task it returns the same task on `WandbElastic` (decorator arguments win over
  the environment's), so it runs exactly the rank hooks and gets exactly the links of the
  equivalent `WandbElastic` environment.
- On a clustered task (`flyte.clustered`) it does the same with the equivalent
  `WandbClusteredTaskEnvironment`.
- On any other Flyte task it opens one run around the task (a child task reuses its parent's run
  in `auto` mode).
- On a plain function (e.g. a sweep objective passed to `wandb.agent`) it opens and finishes a run
  around each call, or uses the run already open around it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast, overload

from flyte.clustered import ClusteredTaskTemplate
from flyte.extend import AsyncFunctionTaskTemplate
from flyteplugins.pytorch import Elastic
from flyteplugins.pytorch.task import TorchFunctionTask

from ._clustered import with_wandb
from ._config import WandbElastic
from ._downloads import download_wandb_run_logs
from ._hooks import RankHooks, get_wandb_run
from ._links import Wandb, links_for
from ._options import RankScope, RunMode, WandbOptions, invalid
from ._run_context import get_wandb_context

T = TypeVar("T")


@overload
def wandb_init(_func: T) -> T: ...


@overload
def wandb_init(
    _func: None = None,
    *,
    run_mode: RunMode | None = None,
    rank_scope: RankScope | None = None,
    download_logs: bool | None = None,
    project: str | None = None,
    entity: str | None = None,
    **kwargs: Any,
) -> Callable[[T], T]: ...


def wandb_init(
    _func: Any = None,
    *,
    run_mode: RunMode | None = None,
    rank_scope: RankScope | None = None,
    download_logs: bool | None = None,
    project: str | None = None,
    entity: str | None = None,
    **kwargs: Any,
) -> Any:
    """Log a Flyte task, or a plain function, to W&B. Usable bare or with arguments.

    Place it above `@env.task`. Arguments are those of the upstream `flyteplugins.wandb` decorator.

    Args:
        run_mode: `"auto"`, `"shared"` or `"new"`; see the behaviour matrix.
        rank_scope: `"global"` or `"worker"`.
        download_logs: On a non-distributed task, download the run's files after the task
            (`download_wandb_run_logs`, a traced step; it needs a W&B server); `None` follows
            `wandb_config(download_logs=...)`. Not supported on distributed tasks (a warning
            says so, as upstream's); ignored on plain functions.
        project: W&B project.
        entity: W&B entity.
        **kwargs: Any other `wandb.init` keyword (`id`, `name`, `group`, `tags`, `config`, `mode`, ...).

    Returns:
        The decorated task or function (or, called with arguments only, the decorator).

    Raises:
        ValueError: An argument is invalid.
        TypeError: It is placed under `@env.task`, or the Elastic task function is async, or, on a
            distributed task, above another wrapping decorator such as `@wandb_sweep`.
    """
    if download_logs is not None and not isinstance(download_logs, bool):
        raise invalid("download_logs", download_logs, "True, False or None")
    options = WandbOptions.from_kwargs(
        run_mode=run_mode, rank_scope=rank_scope, project=project, entity=entity, **kwargs
    )

    def decorate(target: Any) -> Any:
        distributed = isinstance(target, (TorchFunctionTask, ClusteredTaskTemplate))
        if distributed and download_logs:
            warnings.warn(
                "wandb_init(download_logs=True) is not supported on distributed (Elastic, clustered) tasks: the "
                "run files stay in each pod; log them offline and `wandb sync` them instead.",
                UserWarning,
                stacklevel=3,
            )
        if distributed and "execute" in vars(target):
            # Its plugin config is replaced here, which would drop the other decorator's wrapper.
            raise TypeError(
                f"@wandb_init is above another decorator that wraps task {target.name!r} (e.g. @wandb_sweep): on "
                "a distributed task, place @wandb_init directly above @env.task and the other decorator above it."
            )
        if isinstance(target, TorchFunctionTask):
            return _on_elastic_task(target, options)
        if isinstance(target, ClusteredTaskTemplate):
            overridden = target.override(plugin_config=with_wandb(target.plugin_config, options))
            return _replace_in_env(target, cast(AsyncFunctionTaskTemplate, overridden))
        if isinstance(target, AsyncFunctionTaskTemplate):
            return _on_task(target, options, download_logs)
        if callable(target):
            _check_outermost(target)
            return _on_function(target, options)
        raise TypeError(f"wandb_init applies to a Flyte task or a function, got {target!r}")

    return decorate if _func is None else decorate(_func)


def _on_elastic_task(task: TorchFunctionTask, options: WandbOptions) -> TorchFunctionTask:
    config = task.plugin_config
    declared = config.wandb_options() if isinstance(config, WandbElastic) else WandbOptions()
    merged = {f.name: getattr(options.filled_from(declared), f.name) for f in dataclasses.fields(WandbOptions)}
    if isinstance(config, WandbElastic):
        new_config = dataclasses.replace(config, **merged)
    else:
        elastic = {f.name: getattr(config, f.name) for f in dataclasses.fields(Elastic)}
        new_config = WandbElastic(**elastic, **merged)
    return _replace_in_env(task, task.override(plugin_config=new_config))


def _on_task(
    task: AsyncFunctionTaskTemplate, options: WandbOptions, download_logs: bool | None
) -> AsyncFunctionTaskTemplate:
    execute = task.execute  # before `override`, which drops an `execute` another decorator set
    kept = tuple(link for link in task.links if not isinstance(link, Wandb))
    overridden = cast(
        AsyncFunctionTaskTemplate, task.override(links=(*kept, *links_for(options, 1, 1, 1, task.env_vars)))
    )
    new_task = _replace_in_env(task, overridden)
    hooks = RankHooks(task.func, options)

    # Runs in the task's own process, around the whole task.
    async def execute_with_run(*args: Any, **kwargs: Any) -> Any:
        with hooks.session() as run:
            result = await execute(*args, **kwargs)
        if run is not None and _downloads_logs(download_logs):
            await download_wandb_run_logs(run.id)
        return result

    new_task.execute = execute_with_run  # type: ignore[method-assign]
    return new_task


def _on_function(func: Callable[..., Any], options: WandbOptions) -> Callable[..., Any]:
    hooks = RankHooks(func, options)
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if get_wandb_run() is not None:  # inside a task (or trace) that already has a run
                return await func(*args, **kwargs)
            with hooks.session():
                return await func(*args, **kwargs)

        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if get_wandb_run() is not None:
            return func(*args, **kwargs)
        with hooks.session():
            return func(*args, **kwargs)

    return wrapper


def _downloads_logs(download_logs: bool | None) -> bool:
    """The decorator's `download_logs`, else the run context's (`wandb_config(download_logs=...)`)."""
    if download_logs is not None:
        return download_logs
    context = get_wandb_context()
    return bool(context and context.download_logs)


def _replace_in_env(old: AsyncFunctionTaskTemplate, new: AsyncFunctionTaskTemplate) -> AsyncFunctionTaskTemplate:
    """Register `new` in place of `old` in its environment, so `flyte deploy` ships the logged task."""
    env = old.parent_env() if old.parent_env else None
    tasks = getattr(env, "_tasks", None)
    if isinstance(tasks, dict) and tasks.get(old.name) is old:
        tasks[old.name] = new
    return new


def _check_outermost(func: Callable[..., Any]) -> None:
    """Raise when the source shows `@wandb_init` under a `@<env>.task` decorator."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return  # no source to read (e.g. an interactive session)
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return
    names = [_decorator_name(d) for d in node.decorator_list]
    if "wandb_init" not in names:
        return
    above = names[: names.index("wandb_init")]
    if "task" in above:
        outer = ast.unparse(node.decorator_list[above.index("task")])
        raise TypeError(
            f"@wandb_init is under @{outer} on {func.__qualname__!r}: it must be the outermost decorator. "
            f"Write @wandb_init above @{outer}."
        )


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Attribute):
        return target.attr
    return target.id if isinstance(target, ast.Name) else ""
