"""Pattern 4, one run per node: local rank 0 of each node logs (rank_scope="worker").

Runs 2 nodes x 2 ranks on this machine: the second node is a child process that joins the same
rendezvous on 127.0.0.1.

    python examples/run_per_node.py
"""

import flyte
import torch
import torch.distributed as dist

from flyte_wandb_elastic import WandbElastic, get_distributed_info, get_wandb_run

env = flyte.TaskEnvironment(
    name="run_per_node",
    plugin_config=WandbElastic(
        nnodes=2, nproc_per_node=2, project="examples", rank_scope="worker", max_restarts=0, monitor_interval=1
    ),
)


@env.task
def train(steps: int = 5) -> None:
    dist.init_process_group("gloo")
    info = get_distributed_info()
    run = get_wandb_run()  # local rank 0 of each node: that node's run
    for step in range(steps):
        loss = torch.tensor([float(info["rank"] + step)])
        dist.all_reduce(loss)
        if run:
            run.log({"node_average_loss": loss.item() / info["world_size"], "node": info["worker_index"]})
    dist.destroy_process_group()


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(train)
