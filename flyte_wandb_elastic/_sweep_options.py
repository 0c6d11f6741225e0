"""The W&B sweep a user declares (`wandb_sweep_config`), its validation, and its run-context form.

The run-context keys are upstream's (`wandb_sweep_*`, and `_wandb_sweep_id` for the sweep a task
created), so contexts written by either package read the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ._options import ContextKeys, invalid

SWEEP_PREFIX = "wandb_sweep_"
# Run-context key through which a `@wandb_sweep` task passes its sweep id to the tasks it calls.
SWEEP_ID_KEY = "_wandb_sweep_id"
# W&B's search methods (https://docs.wandb.ai/models/sweeps/sweep-config-keys#method).
SWEEP_METHODS = ("grid", "random", "bayes")
_GOALS = ("minimize", "maximize")
# Context fields stored as JSON (the rest are plain strings), as upstream writes them.
_JSON_FIELDS = frozenset({"metric", "parameters", "prior_runs", "download_logs", "kwargs"})
# Fields that say where the sweep lives or what Flyte does with it: not part of W&B's sweep config.
_NOT_SWEEP_KEYS = ("project", "entity", "prior_runs", "download_logs", "kwargs")


@dataclass(kw_only=True)
class WandbSweepOptions:
    """A W&B sweep: its W&B configuration and where it is created. Fields left `None` are unset.

    The attributes are those of upstream's sweep context object (`get_wandb_sweep_context()`).

    Args:
        name: Sweep name; `@wandb_sweep` uses `{flyte run}-{action}` when unset.
        method: `"grid"`, `"random"` or `"bayes"`.
        metric: The metric to optimize, e.g. `{"name": "loss", "goal": "minimize"}`.
        parameters: The parameters to search, e.g. `{"lr": {"min": 0.0001, "max": 0.1}}`.
        project: W&B project of the sweep (else the decorator's, else `wandb_config`'s).
        entity: W&B entity of the sweep (same order).
        prior_runs: Ids of existing runs to add to the sweep.
        download_logs: Whether `@wandb_sweep` downloads every run of the sweep after the task.
        kwargs: Other sweep configuration keys (`early_terminate`, `description`, `run_cap`, ...).

    Raises:
        ValueError: A field is invalid; the message names it, the value and what is allowed.
    """

    name: str | None = None
    method: str | None = None
    metric: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    project: str | None = None
    entity: str | None = None
    prior_runs: list[str] | None = None
    download_logs: bool = False
    kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("name", "project", "entity"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise invalid(name, value, "a non-empty string or None")
        if self.method is not None and self.method not in SWEEP_METHODS:
            raise invalid("method", self.method, " or ".join(map(repr, SWEEP_METHODS)))
        metric = self.metric
        if metric is not None and (
            not isinstance(metric, Mapping)
            or not isinstance(metric.get("name"), str)
            or not metric["name"]
            or metric.get("goal", "minimize") not in _GOALS
        ):
            raise invalid("metric", metric, 'a dict with a "name" and a "goal" of "minimize" or "maximize"')
        parameters = self.parameters
        if parameters is not None and (
            not isinstance(parameters, Mapping)
            or not all(isinstance(k, str) and isinstance(v, Mapping) for k, v in parameters.items())
        ):
            raise invalid("parameters", parameters, 'a dict of parameter name -> dict, e.g. {"lr": {"values": [...]}}')
        if self.prior_runs is not None and (
            not isinstance(self.prior_runs, (list, tuple)) or not all(isinstance(r, str) for r in self.prior_runs)
        ):
            raise invalid("prior_runs", self.prior_runs, "a list of run ids")
        if not isinstance(self.download_logs, bool):
            raise invalid("download_logs", self.download_logs, "True or False")
        if self.kwargs is not None and (
            not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs)
        ):
            raise invalid("kwargs", self.kwargs, "a dict of sweep configuration keys")
        for name in ("metric", "parameters", "kwargs"):
            try:
                json.dumps(getattr(self, name))
            except (TypeError, ValueError) as exc:
                raise invalid(name, getattr(self, name), f"JSON-serializable values ({exc})") from None

    def to_sweep_config(self) -> dict[str, Any]:
        """The configuration `wandb.sweep` takes: the set W&B keys, `kwargs` merged in."""
        config = {k: v for k, v in asdict(self).items() if k not in _NOT_SWEEP_KEYS and v is not None}
        config.update(self.kwargs or {})
        return config

    def to_dict(self) -> dict[str, str]:
        """The `wandb_sweep_*` run-context keys of the set fields (upstream's keys and encoding)."""
        return {
            SWEEP_PREFIX + f.name: json.dumps(value) if f.name in _JSON_FIELDS else str(value)
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        }


def wandb_sweep_config(
    method: str | None = None,
    metric: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    project: str | None = None,
    entity: str | None = None,
    prior_runs: list[str] | None = None,
    name: str | None = None,
    download_logs: bool = False,
    **kwargs: Any,
) -> ContextKeys:
    """A W&B sweep for `@wandb_sweep` to create, written as upstream's `wandb_sweep_*` context keys.

    Use as `flyte.with_runcontext(custom_context={**wandb_config(...), **wandb_sweep_config(...)})`,
    or inside a task as `with wandb_sweep_config(...):` for the tasks it calls.

    Args:
        method: `"grid"`, `"random"` or `"bayes"`.
        metric: The metric to optimize, e.g. `{"name": "loss", "goal": "minimize"}`.
        parameters: The parameters to search.
        project: W&B project of the sweep.
        entity: W&B entity of the sweep.
        prior_runs: Ids of existing runs to add to the sweep.
        name: Sweep name (default: `{flyte run}-{action}` of the `@wandb_sweep` task).
        download_logs: Whether `@wandb_sweep` downloads every run of the sweep after the task.
        **kwargs: Other sweep configuration keys (`early_terminate`, `description`, `run_cap`, ...).

    Returns:
        A dict of `wandb_sweep_*` string keys (usable as a context manager).

    Raises:
        ValueError: A field is invalid; the message names it, the value and what is allowed.
    """
    sweep = WandbSweepOptions(
        name=name,
        method=method,
        metric=metric,
        parameters=parameters,
        project=project,
        entity=entity,
        prior_runs=prior_runs,
        download_logs=download_logs,
        kwargs=kwargs or None,
    )
    return ContextKeys(sweep.to_dict())


def sweep_from_context(context: Mapping[str, str]) -> WandbSweepOptions | None:
    """The sweep declared by the `wandb_sweep_*` keys of a run context, or `None` without any.

    Raises:
        ValueError: A key holds an invalid value.
    """
    names = {f.name for f in fields(WandbSweepOptions)}
    values: dict[str, Any] = {}
    found = False
    for key, raw in context.items():
        if not key.startswith(SWEEP_PREFIX):
            continue
        found = True
        name = key[len(SWEEP_PREFIX) :]
        if name not in names:
            continue
        if name in _JSON_FIELDS:
            try:
                values[name] = json.loads(raw)
            except (TypeError, ValueError):
                raise invalid(key, raw, "a JSON value") from None
        else:
            values[name] = raw
    return WandbSweepOptions(**values) if found else None
