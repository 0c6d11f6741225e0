"""A clustered environment (a JobSet whose pods run torchrun): 2 nodes x 2 ranks, one shared run per node.

`WandbClusteredTaskEnvironment` is Flyte's `ClusteredTaskEnvironment` with W&B declared on it;
`replicas` plays the part of `Elastic`'s `nnodes`. Here every node runs, as its pod would,
`torchrun ... --no-python -- a0 ...` on 127.0.0.1, so each rank is a full Flyte `a0` process.

    python examples/clustered.py
"""

import torch
import torch.distributed as dist
from flyte.clustered import TorchRun

from flyte_wandb_elastic import WandbClusteredTaskEnvironment, WandbOptions, get_distributed_info, get_wandb_run

env = WandbClusteredTaskEnvironment(
    name="clustered",
    replicas=2,
    nproc_per_node=2,
    runtime=TorchRun(rdzv_backend="c10d"),
    wandb=WandbOptions(project="examples", run_mode="shared", rank_scope="worker"),
)


@env.task
def train(steps: int = 5) -> float:
    dist.init_process_group("gloo")
    info = get_distributed_info()
    run = get_wandb_run()  # every rank writes its node's shared run, labelled worker-{node}-rank-{local}
    total = 0.0
    for step in range(steps):
        loss = torch.tensor([float(info["rank"] + step)])
        dist.all_reduce(loss)
        total += loss.item()
        run.log({"loss": loss.item() / info["world_size"], "rank": info["rank"]})
    dist.destroy_process_group()
    return total


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(train)
