"""The one place that decides each rank's part in W&B logging.

`plan_rank` is pure: the runtime hooks call it with the real topology of a worker, and the
console links call it with the topology of each node's first rank, so links and runs agree.
`creation_slot` says, as purely, when a rank that opens a run may ask W&B to create it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ._options import WandbOptions
from ._topology import Topology
from ._wandb_limits import DEFAULT_RUN_CREATIONS_PER_S


@dataclass(frozen=True)
class RankPlan:
    """What one rank does in W&B.

    Attributes:
        opens_run: Whether this rank calls `wandb.init`.
        run_id: The id of the run this rank writes (`None` when it opens none).
        group: The W&B group of that run, or `None`.
        label: This writer's label in a shared run (`None` outside shared mode).
        primary: Whether this rank owns the run: it writes the run's system facts and sets the
            run's final state. Non-primary writers of a shared run leave the state alone.
        creation_order: This rank's place, in rank order, among the job's ranks that call
            `wandb.init` (0 for the first): the order of their creation slots (`creation_slot`).
            In shared mode every writer counts, as each `wandb.init` is a creation request.
            An offline run creates nothing on W&B: 0.
        offline: Whether this rank's run is offline whatever the task's mode (`rank_runs="offline"`:
            a rank the layout leaves without a run writes one of its own, to storage only).
    """

    opens_run: bool
    run_id: str | None = None
    group: str | None = None
    label: str | None = None
    primary: bool = False
    creation_order: int = 0
    offline: bool = False


NO_RUN = RankPlan(opens_run=False)


def base_run_id(run_name: str, action_name: str, user_id: str | None = None) -> str:
    """The id that run ids are built from: the user's `id`, else `{run name}-{action name}`."""
    return user_id or f"{run_name}-{action_name}"


def plan_rank(
    options: WandbOptions,
    topology: Topology,
    run_name: str | None,
    action_name: str,
    max_nodes: int = 1,
    parent_run_id: str | None = None,
) -> RankPlan:
    """Decide this rank's W&B part.

    | run_mode / rank_scope | opens a run | run id | group | label |
    |---|---|---|---|---|
    | auto / global | global rank 0 | base | - | - |
    | auto / worker | local rank 0 per node | base-worker-{node} | - | - |
    | shared / global | every rank (primary: rank 0) | base | - | rank-{r} |
    | shared / worker | every rank (primary: local 0) | base-worker-{node} | - | rank-{r} |
    | new / global | every rank | base-rank-{r} | base | - |
    | new / worker | every rank | base-worker-{node}-rank-{local} | base-worker-{node} | - |

    With `rank_runs="offline"` (auto mode), every rank that the table leaves without a run opens
    one offline, with new mode's id and group (`base-rank-{r}` in group `base`, or
    `base-worker-{node}-rank-{local}` in group `base-worker-{node}`), as its own primary.

    The creation order of an opening rank is its node's index where one rank per node opens
    (`auto` / `worker`), else its global rank.

    For a job declared on one node (and in a lone process), `-worker-{node}` is dropped and
    new/worker uses `base-rank-{r}`; for a multi-node job, shared labels are
    `worker-{node}-rank-{local}`. "Multi-node" follows the declared `nnodes`, not how many nodes
    joined, so an elastic job's ids never depend on the rendezvous outcome (and links know them).

    The base is the user's `id`, else `{run name}-{action name}`. A user-given `group` replaces
    the computed one. A lone (non-distributed) process opens one run, with the base id; if its
    parent task has a run, it reuses that run in `auto` and `shared` mode, as a non-primary writer
    labelled with the action name.

    Args:
        options: The task's options, resolved (`run_mode` and `rank_scope` set).
        topology: Where this rank sits.
        run_name: The Flyte run name (a template such as `{{.runName}}` when serializing links), or
            `None` outside Flyte (a plain function, e.g. a sweep objective): W&B then picks the id.
        action_name: The Flyte action name.
        max_nodes: The most nodes the job's `nnodes` allows.
        parent_run_id: The run id a parent task passed down through the run context, if any.

    Returns:
        The plan for this rank.
    """
    run_mode, rank_scope, group = options.run_mode or "auto", options.rank_scope or "global", options.group
    if run_name is None:
        return RankPlan(opens_run=True, run_id=options.id, group=group, primary=True)
    base_id = base_run_id(run_name, action_name, options.id)
    if not topology.distributed:
        if parent_run_id and not options.id and run_mode != "new":
            return RankPlan(opens_run=True, run_id=parent_run_id, group=group, label=action_name, primary=False)
        return RankPlan(opens_run=True, run_id=base_id, group=group, primary=True)
    multi_node = max_nodes > 1 and topology.distributed
    per_node = rank_scope == "worker" and multi_node
    scope_id = f"{base_id}-worker-{topology.node_rank}" if per_node else base_id
    scope_primary = topology.local_rank == 0 if per_node else topology.rank == 0

    rank_suffix = f"-rank-{topology.local_rank}" if per_node else f"-rank-{topology.rank}"
    if run_mode == "auto":
        if not scope_primary and options.rank_runs == "offline":
            return RankPlan(
                opens_run=True, run_id=scope_id + rank_suffix, group=group or scope_id, primary=True, offline=True
            )
        if not scope_primary:
            return NO_RUN
        order = topology.node_rank if per_node else 0
        return RankPlan(opens_run=True, run_id=scope_id, group=group, primary=True, creation_order=order)

    if run_mode == "shared":
        label = f"worker-{topology.node_rank}-rank-{topology.local_rank}" if multi_node else f"rank-{topology.rank}"
        return RankPlan(
            opens_run=True,
            run_id=scope_id,
            group=group,
            label=label,
            primary=scope_primary,
            creation_order=topology.rank,
        )

    return RankPlan(
        opens_run=True,
        run_id=scope_id + rank_suffix,
        group=group or scope_id,
        primary=True,
        creation_order=topology.rank,
    )


def writers(options: WandbOptions, nodes: int, nproc_per_node: int) -> int:
    """How many ranks of the job write a run of their own or a writer of a shared one (each copies
    its run files to storage), offline rank runs included: node 0's, and node 1's for every later
    node (each plans as node 1 does, with its own index in its runs' ids)."""

    def of_node(node: int) -> int:
        ranks = range(node * nproc_per_node, (node + 1) * nproc_per_node)
        return sum(
            plan_rank(options, Topology.in_job(r, nodes, nproc_per_node), "r", "a", nodes).opens_run for r in ranks
        )

    return of_node(0) + (nodes - 1) * of_node(min(1, nodes - 1))


def creation_slot(options: WandbOptions, plan: RankPlan) -> float:
    """How long this rank's `wandb.init` waits before it asks W&B to create its run, in seconds.

    The k-th rank to open a run (`plan.creation_order`) takes slot k of width 1 / r, where r is
    `max_run_creations_per_s` (default 80), at a point within it that depends only on k and the
    run id (a jitter, so that requests do not line up on the slots' edges). Counted from the same
    moment, the job's ranks so ask for r creations a second on average: at most r in each whole
    second (for a whole r), and never more than ceil(r) + 1 in any window of one second.
    The first has slot 0: a job with a few runs sees no delay (2 x 2 ranks at 80 a second: under
    50 ms). The ranks of a job start together, once torch elastic has formed the worker group,
    and each counts its slot from when it is ready to call `wandb.init` (see `_rank_run.CreationSlot`).

    Returns:
        The slot, in seconds (0 for a rank that opens no run).
    """
    if not plan.opens_run or plan.creation_order <= 0:
        return 0.0
    rate = options.max_run_creations_per_s or DEFAULT_RUN_CREATIONS_PER_S
    seed = hashlib.blake2b(f"{plan.run_id}/{plan.creation_order}".encode(), digest_size=8).digest()
    within = int.from_bytes(seed, "big") / 2**64  # in [0, 1)
    return (plan.creation_order + within) / rate


def system_metrics(plan: RankPlan, topology: Topology, run_mode: str | None, gpus_visible: bool) -> dict[str, Any]:
    """W&B system-metric settings that keep the ranks of one node from reporting the same things.

    Where several ranks of a node write runs (`shared` and `new` modes, and each rank's own offline
    run with `rank_runs="offline"`), each reports only its own GPU (the one its local rank drives)
    and only local rank 0 reports the node's disks. A single writer per node (`auto`) keeps W&B's
    defaults: all of the node's devices.

    Returns:
        `wandb.Settings` fields to apply (empty when W&B's defaults fit).
    """
    several_writers = (
        (run_mode in ("shared", "new") or plan.offline) and topology.distributed and topology.local_world_size > 1
    )
    if not plan.opens_run or not several_writers:
        return {}
    settings: dict[str, Any] = {}
    if gpus_visible:
        settings["x_stats_gpu_device_ids"] = [topology.local_rank]
    if topology.local_rank != 0:
        settings["x_stats_disk_paths"] = []
    return settings


def run_files_prefix(
    options: WandbOptions, run_base_dir: str | None, run_name: str | None, action_name: str, rank: int
) -> str | None:
    """Where the rank's W&B run directories are copied in durable storage, or `None` for nowhere.

    `{persist_to}/{run name}/{action}/rank-{r}` when the user declared `persist_to`, else
    `{run base dir}/wandb/{action}/rank-{r}`: one prefix per writer, so no two processes ever write
    the same objects, and every run of a Flyte run lies under its base directory. Outside a Flyte
    task (no run base directory) and with no `persist_to`, nothing is copied.
    """
    if options.persist_to:
        root = "/".join(p for p in (options.persist_to.rstrip("/"), run_name or "no-run", action_name) if p)
    elif run_base_dir:
        root = f"{run_base_dir.rstrip('/')}/wandb/{action_name or 'task'}"
    else:
        return None
    return f"{root}/rank-{rank}"
