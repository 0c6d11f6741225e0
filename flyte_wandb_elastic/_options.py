"""The W&B options a user declares, their validation, and their run-context form.

`WandbOptions` is shared by `WandbElastic` (declared on the environment) and `wandb_config`
(passed through `flyte.with_runcontext(custom_context=...)`). Both validate on construction, so
bad input fails where it is written, never inside a pod.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

RunMode = Literal["auto", "shared", "new"]
RankScope = Literal["global", "worker"]
Mode = Literal["online", "offline", "disabled"]
OnInitFailure = Literal["offline", "raise"]
RankRuns = Literal["offline"]

RUN_MODES: tuple[str, ...] = get_args(RunMode)
RANK_SCOPES: tuple[str, ...] = get_args(RankScope)
MODES: tuple[str, ...] = get_args(Mode)
ON_INIT_FAILURE: tuple[str, ...] = get_args(OnInitFailure)
RANK_RUNS: tuple[str, ...] = get_args(RankRuns)

# Prefix of the run-context keys; the same keys as the upstream `flyteplugins-wandb` writes.
CONTEXT_PREFIX = "wandb_"
# Run-context key through which a task passes its run id to the tasks it calls (as upstream).
PARENT_RUN_KEY = "_wandb_run_id"
# Context fields stored as JSON (the rest are plain strings).
_JSON_FIELDS = frozenset(
    {
        "tags",
        "config",
        "download_logs",
        "kwargs",
        "flush_interval",
        "init_timeout",
        "blocking_init",
        "finish_timeout",
        "persist_interval",
        "max_run_creations_per_s",
        "alert_on_failure",
    }
)
# `wandb.init` arguments that the options own; `init_kwargs` must not repeat them.
_OWNED_INIT_ARGS = frozenset({"project", "entity", "id", "name", "group", "tags", "config", "notes", "job_type"})


def invalid(field_name: str, value: Any, allowed: str) -> ValueError:
    """An error that names the field, the value received and what is allowed."""
    return ValueError(f"{field_name}={value!r} is not valid: expected {allowed}.")


@dataclass(kw_only=True)
class WandbOptions:
    """How the ranks of a task log to W&B. Every field left as `None` is unset.

    Unset fields are filled from the run context (`wandb_config`), then from the defaults
    (`run_mode="auto"`, `rank_scope="global"`, W&B's own defaults for the rest).

    Args:
        project: W&B project.
        entity: W&B entity (team or user).
        host: W&B base URL, e.g. `https://wandb.ai` or a self-hosted server.
        run_mode: `"auto"` (only the primary rank opens a run), `"shared"` (all ranks write one run)
            or `"new"` (one run per rank, grouped).
        rank_scope: `"global"` (one primary for the job) or `"worker"` (one primary per node).
        id: Run id that replaces the `{flyte run}-{action}` base id.
        name: Display name of the run(s).
        group: W&B group; kept as given.
        tags: Run tags.
        config: Run config; must be JSON-serializable.
        notes: Run notes.
        job_type: Run job type.
        mode: `"online"`, `"offline"` or `"disabled"`; unset follows `WANDB_MODE`.
        init_kwargs: Any other `wandb.init` keyword argument.
        flush_interval: Seconds between flushes of each run's offline transaction log
            (default 1.0, W&B's own default is 15): a rank killed soon after logging keeps its rows.
        init_timeout: Seconds `wandb.init` may take on a rank before it counts as failed and the
            rank logs offline (default: 40 % of `finish_timeout`, 24 s; W&B's own is 90). A
            larger value can hold the end of a rank whose run is still opening past
            `finish_timeout`.
        on_init_failure: When `wandb.init` fails on a rank (server unreachable, key rejected,
            timeout): `"offline"` (default) logs that rank offline and warns with the command that
            uploads it later; `"raise"` fails the rank.
        blocking_init: `False` (default): the run opens in the background and the function starts
            at once; what it logs before W&B is ready is queued and written in order. `True`:
            each logging rank waits for `wandb.init` before the function starts (with
            `on_init_failure="raise"`, the rank then fails before training, not at its end).
        finish_timeout: The most seconds the end of a logging rank may take once its function
            has returned and every rank of the job has (at once where it fails): the rest of
            `wandb.init` if the run is still opening, W&B's upload of what is left and the last
            copy of the run files together (default 60). A W&B server that is lost, hangs or
            answers errors then never holds the job: the rank ends, and everything it logged is
            in the copy of its run files, for `python -m flyte_wandb_elastic sync`.
        persist_interval: Seconds between copies of each logging rank's W&B run directory into
            the task's durable storage (default 30); a last copy is made at the end of the rank.
            Each copy sends only what was written since the one before.
        persist_to: Where the copies go: a storage URI or directory (`s3://bucket/wandb`). Default:
            `wandb/` under the Flyte run's base directory (`flyte.ctx().run_base_dir`).
        max_run_creations_per_s: The most W&B runs (or shared-run writers) the whole job opens a
            second (default 80, W&B's documented default rate for a project): the ranks that open
            one take rank-ordered slots, training meanwhile, and `init_timeout` counts from a
            rank's slot.
        alert_on_failure: Whether a failed job sends one W&B alert (`run.alert`, which W&B
            delivers by the project's Slack or e-mail settings) from its primary run, naming the
            rank that failed first, its error and the Flyte action's console link (default `True`).
        rank_runs: `"offline"`: with `run_mode="auto"`, every rank that the layout leaves without
            a run writes one of its own, offline (`{base}-rank-{r}`, grouped under the base id),
            copied to storage like every run and uploaded on demand (`sync --ranks 17,42`), while
            the primary writers log as declared. From those copies, a thread of global rank 0's
            process logs the cross-rank aggregates of each metric into its run (`ranks/<metric>/mean`,
            `/min`, `/max`, `/min_rank`, `/max_rank`, `/finite`, `/nonfinite`), every
            `persist_interval`, charted against their own step metric `ranks/step`. Unset: only
            the layout's writers open runs.
    """

    project: str | None = None
    entity: str | None = None
    host: str | None = None
    run_mode: RunMode | None = None
    rank_scope: RankScope | None = None
    id: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] | None = None
    config: dict[str, Any] | None = None
    notes: str | None = None
    job_type: str | None = None
    mode: Mode | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    flush_interval: float | None = None
    init_timeout: float | None = None
    on_init_failure: OnInitFailure | None = None
    blocking_init: bool | None = None
    finish_timeout: float | None = None
    persist_interval: float | None = None
    persist_to: str | None = None
    max_run_creations_per_s: float | None = None
    alert_on_failure: bool | None = None
    rank_runs: RankRuns | None = None

    def __post_init__(self) -> None:
        for name in ("blocking_init", "alert_on_failure"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise invalid(name, value, "True, False or None")
        _check_choice("on_init_failure", self.on_init_failure, ON_INIT_FAILURE)
        for name in ("flush_interval", "init_timeout", "finish_timeout", "persist_interval"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 3600
            ):
                raise invalid(name, value, "a number of seconds between 0 and 3600 (exclusive), or None")
        rate = self.max_run_creations_per_s
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 100_000
        ):
            raise invalid(
                "max_run_creations_per_s", rate, "a number of runs a second above 0 and at most 100000, or None"
            )
        _check_choice("run_mode", self.run_mode, RUN_MODES)
        _check_choice("rank_scope", self.rank_scope, RANK_SCOPES)
        _check_choice("mode", self.mode, MODES)
        _check_choice("rank_runs", self.rank_runs, RANK_RUNS)
        if self.rank_runs is not None and self.run_mode not in (None, "auto"):
            raise invalid(
                "rank_runs",
                self.rank_runs,
                f"None with run_mode={self.run_mode!r}, where every rank writes a run already "
                "(rank_runs='offline' goes with run_mode='auto')",
            )
        for name in ("project", "entity", "id", "name", "group", "notes", "job_type", "persist_to"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise invalid(name, value, "a non-empty string or None")
        if self.id is not None and any(c in self.id for c in "/\\#?%:"):
            raise invalid("id", self.id, "a run id without any of / \\ # ? % :")
        if self.host is not None and (
            not isinstance(self.host, str) or not self.host.startswith(("http://", "https://"))
        ):
            raise invalid("host", self.host, "a base URL starting with http:// or https://")
        if self.tags is not None and (
            not isinstance(self.tags, (list, tuple)) or not all(isinstance(t, str) for t in self.tags)
        ):
            raise invalid("tags", self.tags, "a list of strings")
        if self.config is not None:
            if not isinstance(self.config, Mapping):
                raise invalid("config", self.config, "a dict")
            try:
                json.dumps(self.config)
            except (TypeError, ValueError) as exc:
                raise invalid("config", self.config, f"a JSON-serializable dict ({exc})") from None
        if not isinstance(self.init_kwargs, Mapping) or not all(isinstance(k, str) for k in self.init_kwargs):
            raise invalid("init_kwargs", self.init_kwargs, "a dict of wandb.init keyword arguments")
        owned = sorted(_OWNED_INIT_ARGS.intersection(self.init_kwargs))
        if owned:
            raise invalid(
                "init_kwargs",
                self.init_kwargs,
                f"no key that has its own field (move {', '.join(owned)} to the field of that name)",
            )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> WandbOptions:
        """Options from `wandb.init`-style keywords: the fields by name, anything else into `init_kwargs`."""
        names = {f.name for f in fields(cls)} - {"init_kwargs"}
        own = {k: v for k, v in kwargs.items() if k in names}
        return cls(**own, init_kwargs={k: v for k, v in kwargs.items() if k not in names})

    def wandb_options(self) -> WandbOptions:
        """This object's W&B fields alone, as a plain `WandbOptions`."""
        return WandbOptions(**{f.name: getattr(self, f.name) for f in fields(WandbOptions)})

    def filled_from(self, fallback: WandbOptions) -> WandbOptions:
        """These options, with every unset field taken from `fallback`."""
        merged = {
            f.name: getattr(self, f.name) if getattr(self, f.name) is not None else getattr(fallback, f.name)
            for f in fields(WandbOptions)
        }
        merged["init_kwargs"] = {**fallback.init_kwargs, **self.init_kwargs}
        return WandbOptions(**merged)

    def resolved(self, context: Mapping[str, str] | None = None) -> WandbOptions:
        """These options over the run context's `wandb_*` keys (the planner applies the defaults)."""
        return self.wandb_options().filled_from(from_context(context or {}))


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise invalid(name, value, " or ".join(repr(a) for a in allowed))


class ContextKeys(dict[str, str]):
    """Run-context keys (a plain `dict` of strings) that also work as a context manager.

    As upstream's: pass them to `flyte.with_runcontext(custom_context=...)` for a whole run, or,
    inside a task, `with wandb_config(...):` sets them for the tasks called in the block.
    """

    _active: list[AbstractContextManager[None]]

    def __enter__(self) -> ContextKeys:
        import flyte

        manager = flyte.custom_context(**self)
        manager.__enter__()
        self.__dict__.setdefault("_active", []).append(manager)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._active.pop().__exit__(*exc)


def wandb_config(
    project: str | None = None,
    entity: str | None = None,
    host: str | None = None,
    id: str | None = None,
    name: str | None = None,
    tags: list[str] | None = None,
    config: dict[str, Any] | None = None,
    mode: Mode | None = None,
    group: str | None = None,
    run_mode: RunMode | None = "auto",
    rank_scope: RankScope | None = "global",
    download_logs: bool = False,
    **kwargs: Any,
) -> ContextKeys:
    """W&B settings for a whole Flyte run, written as the upstream `wandb_*` context keys.

    Use as `flyte.with_runcontext(custom_context=wandb_config(project="p")).run(task)`, or inside
    a task as `with wandb_config(...):` for the tasks it calls. Fields set on `WandbElastic` (or
    the decorator) win; these fill the fields left unset there, so the `"auto"`/`"global"`
    defaults, written as upstream writes them, change nothing.

    Args:
        project: W&B project.
        entity: W&B entity.
        host: W&B base URL.
        id: Run id replacing the `{flyte run}-{action}` base id.
        name: Run display name.
        tags: Run tags.
        config: Run config (JSON-serializable).
        mode: `"online"`, `"offline"` or `"disabled"`.
        group: W&B group.
        run_mode: `"auto"`, `"shared"` or `"new"`.
        rank_scope: `"global"` or `"worker"`.
        download_logs: Whether `@wandb_init` on a non-distributed task downloads the run's files
            after the task (see `download_wandb_run_logs`); distributed tasks never download.
        **kwargs: Other `wandb.init` keyword arguments.

    Returns:
        A dict of `wandb_*` string keys (usable as a context manager).

    Raises:
        ValueError: A field is invalid; the message names it, the value and what is allowed.
    """
    if not isinstance(download_logs, bool):
        raise invalid("download_logs", download_logs, "True or False")
    options = WandbOptions.from_kwargs(
        project=project,
        entity=entity,
        host=host,
        id=id,
        name=name,
        tags=tags,
        config=config,
        mode=mode,
        group=group,
        run_mode=run_mode,
        rank_scope=rank_scope,
        **kwargs,
    )
    return ContextKeys(to_context(options, download_logs=download_logs))


def to_context(options: WandbOptions, download_logs: bool = False) -> dict[str, str]:
    """The `wandb_*` context keys of the set fields of `options`."""
    values: dict[str, Any] = {f.name: getattr(options, f.name) for f in fields(WandbOptions)}
    extra = dict(values.pop("init_kwargs"))
    for name in ("notes", "job_type"):  # upstream carries these inside its kwargs key
        if values[name] is not None:
            extra[name] = values.pop(name)
    values["kwargs"] = extra or None
    values["download_logs"] = download_logs
    return {
        CONTEXT_PREFIX + key: json.dumps(value) if key in _JSON_FIELDS else str(value)
        for key, value in values.items()
        if value is not None
    }


def from_context(context: Mapping[str, str]) -> WandbOptions:
    """Options from the `wandb_*` keys of a run context; other keys are ignored.

    Raises:
        ValueError: A key holds an invalid value.
    """
    names = {f.name for f in fields(WandbOptions)} - {"init_kwargs"}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, raw in context.items():
        if not key.startswith(CONTEXT_PREFIX) or key.startswith(CONTEXT_PREFIX + "sweep_"):
            continue
        name = key[len(CONTEXT_PREFIX) :]
        if name in _JSON_FIELDS:
            try:
                value = json.loads(raw)
            except (TypeError, ValueError):
                raise invalid(key, raw, "a JSON value") from None
        else:
            value = raw
        if name == "kwargs":
            extra.update(value or {})
        elif name in names:
            values[name] = value
    for name in ("notes", "job_type"):
        if name in extra:
            values.setdefault(name, extra.pop(name))
    return WandbOptions(**values, init_kwargs=extra)
