"""Where a process sits in a distributed job, read from the environment its launcher sets.

Torch elastic (an `Elastic` task) and torchrun (a clustered task, which is torch elastic's own
launcher) set the same variables; a clustered task's JobSet adds `NODE_RANK` (the pod's index) and
`JOBSET_RESTART_ATTEMPT`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Topology:
    """The rank layout of one process. The defaults describe a lone, non-distributed process.

    Attributes:
        rank: Global rank (`RANK`).
        local_rank: Rank within the node (`LOCAL_RANK`).
        world_size: Number of ranks in the job (`WORLD_SIZE`).
        local_world_size: Number of ranks on this node (`LOCAL_WORLD_SIZE`).
        node_rank: Index of this node (`GROUP_RANK`, else `NODE_RANK`). Ids of per-node runs use
            it: every rank of a node agrees on it, and global rank = node_rank x ranks per node +
            local rank. In a JobSet it can differ from the pod's index (`pod_index`): torchrun's
            c10d rendezvous numbers the nodes in its own order.
        num_nodes: Number of nodes that joined (`GROUP_WORLD_SIZE`).
        restart_count: Worker-group restarts so far (`TORCHELASTIC_RESTART_COUNT`).
        pod_index: The pod's index in a JobSet (`NODE_RANK`), or `None` outside one.
        job_restart_attempt: JobSet restarts so far (`JOBSET_RESTART_ATTEMPT`).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    restart_count: int = 0
    pod_index: int | None = None
    job_restart_attempt: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Topology:
        """The topology described by torch elastic's variables in `env`."""
        pod_index = int(env["NODE_RANK"]) if env.get("NODE_RANK") else None
        job_restart_attempt = int(env.get("JOBSET_RESTART_ATTEMPT") or "0")
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls(pod_index=pod_index, job_restart_attempt=job_restart_attempt)
        world_size = int(env["WORLD_SIZE"])
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
        default_nodes = world_size // local_world_size if local_world_size > 0 else 1
        return cls(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=world_size,
            local_world_size=local_world_size,
            node_rank=int(env.get("GROUP_RANK") or env.get("NODE_RANK") or "0"),
            num_nodes=int(env.get("GROUP_WORLD_SIZE", default_nodes)),
            restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
            pod_index=pod_index,
            job_restart_attempt=job_restart_attempt,
        )

    @classmethod
    def in_job(cls, rank: int, nnodes: int, nproc_per_node: int) -> Topology:
        """Where global rank `rank` sits in a job of `nnodes` nodes x `nproc_per_node` ranks."""
        return cls(
            rank=rank,
            local_rank=rank % nproc_per_node,
            world_size=nnodes * nproc_per_node,
            local_world_size=nproc_per_node,
            node_rank=rank // nproc_per_node,
            num_nodes=nnodes,
        )

    @property
    def restarted(self) -> bool:
        """Whether an earlier start of this rank's job may have written its runs."""
        return self.restart_count > 0 or self.job_restart_attempt > 0

    @property
    def distributed(self) -> bool:
        """Whether the job has more than one rank."""
        return self.world_size > 1

    def as_info(self) -> dict[str, Any] | None:
        """The upstream `get_distributed_info()` dict, or `None` when not distributed."""
        if not self.distributed:
            return None
        return {
            "rank": self.rank,
            "local_rank": self.local_rank,
            "world_size": self.world_size,
            "local_world_size": self.local_world_size,
            "worker_index": self.node_rank,
            "num_workers": self.num_nodes,
        }
