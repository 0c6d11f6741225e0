"""What a running task reads back from W&B state: the run context's W&B and sweep settings,
the sweep id a `@wandb_sweep` task published, and the directory of this rank's run.

Process: wherever the task's code runs (a rank's process for a distributed task).
"""

from __future__ import annotations

import json
from collections.abc import KeysView
from dataclasses import dataclass, field, replace
from typing import Any

import flyte

from ._hooks import get_wandb_run
from ._options import CONTEXT_PREFIX, RankScope, RunMode, WandbOptions, from_context, invalid, to_context
from ._sweep_options import SWEEP_ID_KEY, WandbSweepOptions, sweep_from_context


@dataclass(frozen=True)
class WandbContext:
    """The run context's W&B settings (`wandb_config`), as `get_wandb_context()` returns them.

    The attributes are those of upstream's context object; `notes`, `job_type` and every other
    `wandb.init` keyword are in `kwargs`, as upstream keeps them. `options` holds the same
    settings as validated `WandbOptions` (with this package's own fields).
    """

    project: str | None = None
    entity: str | None = None
    host: str | None = None
    id: str | None = None
    name: str | None = None
    tags: list[str] | None = None
    config: dict[str, Any] | None = None
    mode: str | None = None
    group: str | None = None
    run_mode: RunMode = "auto"
    rank_scope: RankScope = "global"
    download_logs: bool = False
    kwargs: dict[str, Any] | None = None
    options: WandbOptions = field(default_factory=WandbOptions, repr=False)

    @classmethod
    def from_options(cls, options: WandbOptions, download_logs: bool = False) -> WandbContext:
        """The context view of `options` (unset `run_mode`/`rank_scope` read as their defaults)."""
        extra = dict(options.init_kwargs)
        for name in ("notes", "job_type"):
            if getattr(options, name) is not None:
                extra[name] = getattr(options, name)
        return cls(
            project=options.project,
            entity=options.entity,
            host=options.host,
            id=options.id,
            name=options.name,
            tags=options.tags,
            config=options.config,
            mode=options.mode,
            group=options.group,
            run_mode=options.run_mode or "auto",
            rank_scope=options.rank_scope or "global",
            download_logs=download_logs,
            kwargs=extra or None,
            options=options,
        )

    def to_dict(self) -> dict[str, str]:
        """The `wandb_*` run-context keys of these settings (what `wandb_config` writes)."""
        options = replace(self.options, run_mode=self.run_mode, rank_scope=self.rank_scope)
        return to_context(options, download_logs=self.download_logs)

    # The mapping protocol, so that `**get_wandb_context()` gives the keys (as upstream's does).
    def keys(self) -> KeysView[str]:
        return self.to_dict().keys()

    def __getitem__(self, key: str) -> str:
        return self.to_dict()[key]


def get_wandb_context() -> WandbContext | None:
    """The W&B settings of the current run context, or `None` outside a task or without any.

    Returns:
        The settings that `wandb_config(...)` put in the run context (including the
        `download_logs` flag), or `None` when the context has no `wandb_*` key.

    Raises:
        ValueError: A `wandb_*` key holds an invalid value.
    """
    context = _custom_context()
    if not any(key.startswith(CONTEXT_PREFIX) for key in context):
        return None
    return WandbContext.from_options(from_context(context), _download_logs(context))


def get_wandb_sweep_context() -> WandbSweepOptions | None:
    """The sweep declared in the current run context (`wandb_sweep_config`), or `None`.

    Raises:
        ValueError: A `wandb_sweep_*` key holds an invalid value.
    """
    return sweep_from_context(_custom_context())


def get_wandb_sweep_id() -> str | None:
    """The id of the sweep that a `@wandb_sweep` task (this one or a caller) created, or `None`."""
    return _custom_context().get(SWEEP_ID_KEY) or None


def get_wandb_run_dir() -> str | None:
    """The local directory of this rank's W&B run (its `files/` folder), or `None` without a run.

    For files written by this task, with no network call; `download_wandb_run_dir` fetches a
    run's files from the W&B server instead.
    """
    run = get_wandb_run()
    return None if run is None else str(run.dir)


def _custom_context() -> dict[str, str]:
    ctx = flyte.ctx()
    return dict(ctx.custom_context or {}) if ctx else {}


def _download_logs(context: dict[str, str]) -> bool:
    key = CONTEXT_PREFIX + "download_logs"
    raw = context.get(key)
    if raw is None:
        return False
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        value = raw
    if not isinstance(value, bool):
        raise invalid(key, raw, '"true" or "false"')
    return value
