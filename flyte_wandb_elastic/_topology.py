"""Where a process sits in a torch elastic job, read from the environment torch elastic sets."""

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
        node_rank: Index of this node (`GROUP_RANK`).
        num_nodes: Number of nodes that joined (`GROUP_WORLD_SIZE`).
        restart_count: Worker-group restarts so far (`TORCHELASTIC_RESTART_COUNT`).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    restart_count: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Topology:
        """The topology described by torch elastic's variables in `env`."""
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        world_size = int(env["WORLD_SIZE"])
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
        default_nodes = world_size // local_world_size if local_world_size > 0 else 1
        return cls(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=world_size,
            local_world_size=local_world_size,
            node_rank=int(env.get("GROUP_RANK", "0")),
            num_nodes=int(env.get("GROUP_WORLD_SIZE", default_nodes)),
            restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
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
