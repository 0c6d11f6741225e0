"""The only module that imports `wandb`: opening and finishing one rank's run.

It is imported lazily, by ranks that open a run, so ranks that don't log never import wandb.
"""

from __future__ import annotations

import os
from typing import Any

import wandb

from ._options import WandbOptions
from ._planner import RankPlan

_PUBLIC_HOST = "https://wandb.ai"


def open_run(plan: RankPlan, options: WandbOptions, flyte_meta: dict[str, Any] | None) -> Any:
    """Call `wandb.init` for this rank as `plan` says.

    Args:
        plan: This rank's plan; `plan.opens_run` must be true.
        options: Resolved options (run context and defaults applied).
        flyte_meta: Recorded under the `flyte` key of the run config (`None` outside Flyte).

    Returns:
        The `wandb.Run`.
    """
    settings: dict[str, Any] = {}
    kwargs: dict[str, Any] = dict(options.init_kwargs)
    if options.host and options.host.rstrip("/") != _PUBLIC_HOST:
        settings["base_url"] = options.host
    # An explicit mode wins over the shared-mode setting; without one, `Settings(mode="shared")`
    # would override WANDB_MODE=offline and fail for want of an API key.
    mode = options.mode or os.environ.get("WANDB_MODE") or None
    if mode:
        kwargs["mode"] = mode
    # A task called in the same process (a local run) gets its own run, not its parent's.
    kwargs.setdefault("reinit", "create_new")
    if plan.label is not None:
        settings.update(
            mode="shared",
            x_primary=plan.primary,
            x_label=plan.label,
            x_update_finish_state=plan.primary,
            # Writers that start in the same second would otherwise share an offline directory.
            x_sync_dir_suffix=plan.label,
        )
    user_settings = kwargs.pop("settings", None)
    if isinstance(user_settings, wandb.Settings):
        user_settings = user_settings.model_dump(exclude_unset=True)
    settings = {**(user_settings or {}), **settings}

    config = {**(options.config or {}), **({"flyte": flyte_meta} if flyte_meta is not None else {})}
    return wandb.init(
        project=options.project,
        entity=options.entity,
        id=plan.run_id,
        name=options.name,
        group=plan.group,
        tags=options.tags,
        notes=options.notes,
        job_type=options.job_type,
        config=config,
        settings=wandb.Settings(**settings),
        **kwargs,
    )


def finish_run(run: Any, exit_code: int) -> None:
    """Finish `run` with `exit_code` (0 for success)."""
    run.finish(exit_code=exit_code)
