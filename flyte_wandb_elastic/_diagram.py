"""Text pictures of a job's ranks and the W&B runs they write, drawn from the planner itself."""

from __future__ import annotations

from ._options import WandbOptions
from ._planner import plan_rank
from ._topology import Topology


def layout_diagram(options: WandbOptions, nnodes: int, nproc_per_node: int) -> str:
    """Every rank of a job of `nnodes` x `nproc_per_node`, and the run it writes, as `plan_rank` says.

    Run ids are shown from the base id `base` (your `id`, else `{flyte run}-{action}`).

    Args:
        options: The W&B options (`run_mode`, `rank_scope`, `group`, ...); `id` is ignored.
        nnodes: Nodes (`nnodes`, or `replicas` on a clustered task).
        nproc_per_node: Ranks per node.

    Returns:
        The picture, one line per rank, then one line per run.
    """
    shown = options.filled_from(WandbOptions())
    shown.id = "base"
    plans = [
        (topology, plan_rank(shown, topology, "run", "action", nnodes))
        for topology in (Topology.in_job(rank, nnodes, nproc_per_node) for rank in range(nnodes * nproc_per_node))
    ]
    width = max(len(plan.run_id or "") for _, plan in plans)
    lines = [f"{shown.run_mode or 'auto'} / {shown.rank_scope or 'global'}, {nnodes} x {nproc_per_node} ranks"]
    for topology, plan in plans:
        node = f"node {topology.node_rank}" if topology.local_rank == 0 else ""
        rank = f"rank {topology.rank}"
        if not plan.opens_run:
            lines.append(f"  {node:<7} {rank:<7} (no run, wandb not imported)")
            continue
        notes = [
            f"label {plan.label}" if plan.label else "",
            "primary" if plan.primary and plan.label else "",
            "offline, to storage" if plan.offline else "",
        ]
        lines.append(f"  {node:<7} {rank:<7} --> {plan.run_id:<{width}}  {'  '.join(n for n in notes if n)}".rstrip())
    runs: dict[str, tuple[str | None, int]] = {}
    for _, plan in plans:
        if plan.run_id is not None:
            group, writers = runs.get(plan.run_id, (plan.group, 0))
            runs[plan.run_id] = (group, writers + 1)
    lines.append(f"  {len(runs)} run{'s' if len(runs) > 1 else ''}:")
    for run_id, (group, writers) in runs.items():
        extra = [f"group {group}" if group else "", f"{writers} writers (shared)" if writers > 1 else ""]
        lines.append(f"    {run_id:<{width}}  {'  '.join(e for e in extra if e)}".rstrip())
    return "\n".join(lines)


def behaviour_diagrams() -> str:
    """The behaviour page's pictures: every run_mode x rank_scope on 2 nodes x 2 ranks."""
    blocks = [
        layout_diagram(WandbOptions(run_mode=mode, rank_scope=scope), 2, 2)
        for mode in ("auto", "shared", "new")
        for scope in ("global", "worker")
    ]
    return "\n\n".join(f"```text\n{block}\n```" for block in blocks)
