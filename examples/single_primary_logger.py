"""Pattern 1, a single primary logger: only global rank 0 opens a run (run_mode="auto").

python examples/single_primary_logger.py
"""

import flyte
import torch
import torch.distributed as dist

from flyte_wandb_elastic import WandbElastic, get_wandb_run

env = flyte.TaskEnvironment(
    name="single_primary_logger",
    plugin_config=WandbElastic(nnodes=1, nproc_per_node=2, project="examples", max_restarts=0, monitor_interval=1),
)


@env.task
def train(steps: int = 5) -> float:
    dist.init_process_group("gloo")
    run = get_wandb_run()  # a run on global rank 0, None elsewhere
    loss = torch.tensor([0.0])
    for step in range(steps):
        loss = torch.tensor([1.0 / (step + 1 + dist.get_rank())])
        dist.all_reduce(loss)
        if run:
            run.log({"global_loss": loss.item()})
    dist.destroy_process_group()
    return loss.item()


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(train)
