"""The online load a declared layout puts on a W&B server, and the warning given at declaration
when that load exceeds one of W&B's documented limits (`_wandb_limits.TABLE`).

The load comes from the planner's plans: what a layout costs is what its ranks would do, never a
second copy of the run_mode x rank_scope rules.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from ._options import RANK_SCOPES, RUN_MODES, RankScope, RunMode, WandbOptions
from ._planner import plan_rank
from ._task_spec import shares_a_service
from ._topology import Topology
from ._wandb_limits import DEFAULT_RUN_CREATIONS_PER_S, FILE_STREAM_INTERVAL_S, TABLE, WandbFigure

_INTERVAL_SETTING = "x_file_stream_transmit_interval"


@dataclass(frozen=True)
class WandbLoad:
    """What a job's online ranks ask of the W&B server at one size.

    Attributes:
        nodes: Nodes of the job.
        nproc_per_node: Ranks per node.
        run_mode: The layout's run mode (unset: `"auto"`).
        rank_scope: The layout's rank scope (unset: `"global"`).
        runs: Distinct runs the job opens (each a run of the project).
        writers: Processes that write a run (each calls `wandb.init`).
        most_writers_per_run: Writers of the run with the most.
        services: W&B service processes (a node's ranks share one when they write distinct runs).
        clients: Concurrent client connections: one per writer. Each run a W&B service streams
            opens its own HTTP client and file stream in wandb-core, so sharing a service saves
            processes on the node, not connections to the server.
        run_creations_per_s: The most runs (or shared-run writers) opened in a second, at the pace
            `max_run_creations_per_s` sets.
        seconds_to_create: How long opening every writer's run takes at that pace.
        file_stream_requests_per_s: File-stream requests per second to the project, at most.
        file_stream_requests_per_s_per_run: The same for the run with the most writers.
    """

    nodes: int
    nproc_per_node: int
    run_mode: str
    rank_scope: str
    runs: int
    writers: int
    most_writers_per_run: int
    services: int
    clients: int
    run_creations_per_s: float
    seconds_to_create: float
    file_stream_requests_per_s: float
    file_stream_requests_per_s_per_run: float


@dataclass(frozen=True)
class Exceeded:
    """A documented limit a declared layout's online load exceeds.

    Attributes:
        limit: The limit.
        reached: The number the job would reach.
        layouts_within: The online layouts (`run_mode`, `rank_scope`) that stay within every limit
            at the same size, with the declaration's other fields.
    """

    limit: WandbFigure
    reached: float
    layouts_within: tuple[tuple[str, str], ...]


class WandbLimitWarning(UserWarning):
    """A declared layout, online at its declared size, exceeds one of W&B's documented limits.

    Filter it like any warning, e.g. `warnings.simplefilter("ignore", WandbLimitWarning)` where
    the W&B server's operator has raised the limits.
    """


def wandb_load(options: WandbOptions, nodes: int, nproc_per_node: int) -> WandbLoad:
    """The online W&B load of `options`' layout on `nodes` x `nproc_per_node` ranks.

    Counted from the planner's plans for nodes 0, 1 and 2: every node after the first plans as
    node 1 does, with its own index in the ids of its own runs, so an id that nodes 1 and 2 both
    write is the job's and any other is one node's (`tests/test_limits.py` checks this against
    every rank's plan). A job of up to three nodes is counted rank by rank.

    Args:
        options: The layout's options (unset fields: the planner's defaults).
        nodes: Nodes of the job (the most that `nnodes` allows).
        nproc_per_node: Ranks per node.

    Returns:
        The load, whatever `mode` says (see `limits_exceeded` for that).
    """
    ids = {node: _writer_ids(options, node, nodes, nproc_per_node) for node in range(min(nodes, 3))}
    writers_of = Counter(ids[0])
    own_runs: Counter[str] = Counter()  # per node after the first: the writers of each of its runs
    if nodes <= 3:
        for node in range(1, nodes):
            writers_of.update(ids[node])
        writers = sum(writers_of.values())
        runs = len(writers_of)
    else:
        jobs = set(ids[1]) & set(ids[2])
        for run_id in ids[1]:
            if run_id in jobs:
                writers_of[run_id] += nodes - 1
            else:
                own_runs[run_id] += 1
        writers = len(ids[0]) + (nodes - 1) * len(ids[1])
        runs = len(writers_of) + (nodes - 1) * len(own_runs)
    most = max([*writers_of.values(), *own_runs.values()], default=0)
    pace = float(options.max_run_creations_per_s or DEFAULT_RUN_CREATIONS_PER_S)
    interval = _file_stream_interval(options)
    return WandbLoad(
        nodes=nodes,
        nproc_per_node=nproc_per_node,
        run_mode=options.run_mode or "auto",
        rank_scope=options.rank_scope or "global",
        runs=runs,
        writers=writers,
        most_writers_per_run=most,
        services=nodes if shares_a_service(options, nodes, nproc_per_node) else writers,
        clients=writers,
        run_creations_per_s=min(float(writers), pace),
        seconds_to_create=writers / pace,
        file_stream_requests_per_s=writers / interval,
        file_stream_requests_per_s_per_run=most / interval,
    )


def limits_exceeded(options: WandbOptions, nodes: int, nproc_per_node: int) -> list[Exceeded]:
    """The documented W&B limits that `options`' layout exceeds online on `nodes` x `nproc_per_node`.

    Empty when `mode` (or `init_kwargs["mode"]`) is `"offline"` or `"disabled"`: nothing reaches
    the server during the job.

    Returns:
        One entry per limit exceeded, in `TABLE`'s order.
    """
    if not _online(options):
        return []
    over = _over(wandb_load(options, nodes, nproc_per_node))
    if not over:
        return []
    within = layouts_within(options, nodes, nproc_per_node)
    return [Exceeded(limit, reached, within) for limit, reached in over]


def layouts_within(options: WandbOptions, nodes: int, nproc_per_node: int) -> tuple[tuple[str, str], ...]:
    """Every (`run_mode`, `rank_scope`) whose online load stays within every limit at this size."""
    found = []
    for run_mode in RUN_MODES:
        for rank_scope in RANK_SCOPES:
            layout = replace(
                options.wandb_options(),
                run_mode=cast(RunMode, run_mode),
                rank_scope=cast(RankScope, rank_scope),
                rank_runs=options.rank_runs if run_mode == "auto" else None,  # auto's alone
            )
            if not _over(wandb_load(layout, nodes, nproc_per_node)):
                found.append((run_mode, rank_scope))
    return tuple(found)


def warn_at_declaration(
    declared: WandbOptions,
    declaration: str,
    fields: Mapping[str, Any],
    nodes: int,
    nproc_per_node: int,
    env_vars: Mapping[str, str] | None = None,
) -> None:
    """Warn (`WandbLimitWarning`) when the declared layout, online, exceeds a documented limit.

    Called where an environment is declared, in the declaring process (and again wherever the
    module that declares it is imported: in each pod's launching process, once as warnings are).
    Not in the rank processes that torch elastic or torchrun start (`TORCHELASTIC_RUN_ID` set):
    they import the same declaration, and thousands of them would repeat the same warning.

    Args:
        declared: The options as declared; unset fields take the planner's defaults, though the
            run context may set them later.
        declaration: What is declared, e.g. `"WandbElastic"` (the message says "... with {fields}").
        fields: The size fields to name in the message, as declared (`{"nnodes": "1:1024"}`).
        nodes: The most nodes the declaration allows.
        nproc_per_node: Ranks per node.
        env_vars: The environment's `env_vars`, where the declaration knows them (`WANDB_MODE`
            there sets the pods' mode).
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return
    options = declared.wandb_options()
    pods_mode = (env_vars or {}).get("WANDB_MODE")
    if options.mode is None and pods_mode in ("offline", "disabled"):
        return
    over = limits_exceeded(options, nodes, nproc_per_node)
    if over:
        warnings.warn(
            limit_message(options, declaration, fields, nodes, nproc_per_node, over),
            WandbLimitWarning,
            stacklevel=_stacklevel_outside_package(),
        )


def limit_message(
    options: WandbOptions,
    declaration: str,
    fields: Mapping[str, Any],
    nodes: int,
    nproc_per_node: int,
    over: list[Exceeded],
) -> str:
    """The warning's text: the declared fields, each limit exceeded with the number the job would
    reach, the layouts that stay within, and what the declaration cannot know."""
    named = dict(fields)
    for name in ("run_mode", "rank_scope", "mode", "max_run_creations_per_s"):
        if getattr(options, name) is not None:
            named[name] = getattr(options, name)
    declared = ", ".join(f"{name}={value!r}" for name, value in named.items())
    exceeded = "; ".join(
        f"{e.limit.what}: {_number(e.reached)}{e.limit.unit} > {_number(e.limit.value)}{e.limit.unit}" for e in over
    )
    sources = "; ".join(dict.fromkeys(e.limit.source for e in over))
    within = over[0].layouts_within
    layouts = _layouts(within) or "no online layout"
    size = f"{nodes:,} node{'s' if nodes != 1 else ''} x {nproc_per_node} rank{'s' if nproc_per_node != 1 else ''}"
    unset = [name for name in ("run_mode", "rank_scope", "mode") if getattr(options, name) is None]
    unknown = (
        f" Judged from what is declared: {_defaults(unset)}; the run context (wandb_config) or WANDB_MODE in "
        "the pods may set them, and neither is known at declaration."
        if unset
        else ""
    )
    return (
        f"{declaration} with {declared} would exceed W&B's documented limits online at {size}: {exceeded} "
        f"(sources: {sources}). Within them at this size: {layouts}; or mode='offline', the run files "
        "uploaded after the job (python -m flyte_wandb_elastic sync); or run_mode='auto' with "
        "rank_runs='offline' (every rank's own run offline to storage, its aggregates in the primary's run)."
        f"{unknown} The rate limits are defaults that the operator of a Dedicated Cloud or Self-Managed server "
        "can raise: filter WandbLimitWarning where they did."
    )


def _writer_ids(options: WandbOptions, node: int, nodes: int, nproc_per_node: int) -> list[str]:
    """The run id each writing rank of `node` writes (an id per writer, repeated for shared runs)."""
    ids = []
    for local in range(nproc_per_node):
        topology = Topology.in_job(node * nproc_per_node + local, nodes, nproc_per_node)
        plan = plan_rank(options, topology, "run", "action", nodes)
        if plan.opens_run and not plan.offline:  # an offline run costs W&B nothing until synced
            ids.append(str(plan.run_id))  # set whenever a run name is given
    return ids


def _over(load: WandbLoad) -> list[tuple[WandbFigure, float]]:
    return [
        (figure, float(getattr(load, figure.key)))
        for figure in TABLE.values()
        if figure.limit and getattr(load, figure.key) > figure.value
    ]


def _online(options: WandbOptions) -> bool:
    mode = options.mode or options.init_kwargs.get("mode")
    return mode not in ("offline", "disabled")


def _file_stream_interval(options: WandbOptions) -> float:
    """The file-stream interval the ranks' W&B settings give (`init_kwargs["settings"]`), else W&B's."""
    settings = options.init_kwargs.get("settings")  # a dict or a wandb.Settings
    value = getattr(settings, _INTERVAL_SETTING, None)
    if isinstance(settings, Mapping):
        value = settings.get(_INTERVAL_SETTING)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return FILE_STREAM_INTERVAL_S


def _layouts(layouts: tuple[tuple[str, str], ...]) -> str:
    scopes = {run_mode: [s for m, s in layouts if m == run_mode] for run_mode, _ in layouts}
    return ", ".join(
        f"run_mode={m!r} (either rank_scope)" if len(s) > 1 else f"run_mode={m!r} with rank_scope={s[0]!r}"
        for m, s in scopes.items()
    )


def _defaults(unset: list[str]) -> str:
    defaults = {"run_mode": "'auto'", "rank_scope": "'global'", "mode": "online"}
    return ", ".join(f"{name} unset here (taken as {defaults[name]})" for name in unset)


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


_PACKAGE = Path(__file__).resolve().parent


def _stacklevel_outside_package() -> int:
    """The `stacklevel` that points a warning at the user's line that declared the environment.

    Frames of this package, of `dataclasses` and of a dataclass's generated `__init__` are passed
    over.
    """
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        code = frame.f_code
        inside = (
            (code.co_filename == "<string>" and code.co_name == "__init__")
            or Path(code.co_filename).name == "dataclasses.py"
            or Path(code.co_filename).resolve().is_relative_to(_PACKAGE)
        )
        if not inside:
            return level
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
