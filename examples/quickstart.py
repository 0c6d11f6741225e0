"""Quickstart: a small DDP job, 2 ranks on CPU, every rank logging to one shared W&B run.

W&B runs offline unless WANDB_API_KEY is set, so no account is needed. The run files land in
WANDB_DIR (default: ./wandb-examples) and a table of what each rank logged is printed.

    python examples/quickstart.py
"""

from __future__ import annotations

import flyte
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from flyte_wandb_elastic import WandbElastic, get_distributed_info, get_wandb_run

env = flyte.TaskEnvironment(
    name="quickstart",
    plugin_config=WandbElastic(
        nnodes=1,
        nproc_per_node=2,
        project="flyte-wandb-elastic-quickstart",
        run_mode="shared",
        max_restarts=0,
        monitor_interval=1,
        config={"lr": 0.1, "steps": 20},
    ),
)


@env.task
def train(steps: int = 20) -> float:
    """Fit y = 3x + 1 with DDP; each rank logs its own loss to the shared run."""
    info = get_distributed_info()
    dist.init_process_group("gloo")
    torch.manual_seed(info["rank"] if info else 0)
    model = DistributedDataParallel(torch.nn.Linear(1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = get_wandb_run()
    loss = torch.tensor(0.0)
    for step in range(steps):
        x = torch.randn(32, 1)
        loss = torch.nn.functional.mse_loss(model(x), 3 * x + 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if run is not None:
            run.log({"loss": loss.item(), "step": step})
    dist.destroy_process_group()
    return loss.item()


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(train, steps=20)
