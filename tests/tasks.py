"""Tasks launched by the tests. Importable, because torch elastic workers unpickle them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import flyte
import torch
import torch.distributed as dist

from flyte_wandb_elastic import WandbElastic, get_distributed_info, get_wandb_run

FAST_ELASTIC: dict[str, Any] = {
    "max_restarts": 0,
    "monitor_interval": 1,
    "rdzv_configs": {"timeout": 60, "join_timeout": 60},
}


def train(steps: int = 3, fail_rank: int = -1) -> float:
    """A tiny DDP-style job: all-reduce a value each step and log it where this rank has a run."""
    info = get_distributed_info()
    if info is not None:
        dist.init_process_group("gloo")
    rank = info["rank"] if info else 0
    run = get_wandb_run()
    _record_facts(rank, run, info)
    total = torch.tensor([0.0])
    try:
        for step in range(steps):
            value = torch.tensor([float(rank + step)])
            if info is not None:
                dist.all_reduce(value)
            total += value
            if run is not None:
                run.log({"loss": 1.0 / (step + 1), "reduced": value.item(), "rank": rank})
        if rank == fail_rank:
            raise ValueError(f"rank {rank} failed on purpose")
    finally:
        if info is not None:
            dist.destroy_process_group()
    return total.item()


def _record_facts(rank: int, run: Any, info: dict[str, Any] | None) -> None:
    facts_dir = os.environ.get("TEST_FACTS_DIR")
    if not facts_dir:
        return
    facts = {"rank": rank, "run_id": run.id if run is not None else None, "info": info}
    Path(facts_dir, f"rank-{rank}.json").write_text(json.dumps(facts))


def make_env(**config: Any) -> flyte.TaskEnvironment:
    """An environment whose tasks run on `WandbElastic(**config)` with fast test settings."""
    return flyte.TaskEnvironment(
        name="train_env",
        plugin_config=WandbElastic(**{**FAST_ELASTIC, **config}),
    )


def make_task(**config: Any) -> Any:
    """The `train` task on an environment built from `config`."""
    return make_env(**config).task(train)
