"""Pattern 2, a shared run: every rank writes the same W&B run, each with its own label.

python examples/shared_run.py
"""

import flyte
import torch.distributed as dist

from flyte_wandb_elastic import WandbElastic, get_wandb_run

env = flyte.TaskEnvironment(
    name="shared_run",
    plugin_config=WandbElastic(
        nnodes=1, nproc_per_node=2, project="examples", run_mode="shared", max_restarts=0, monitor_interval=1
    ),
)


@env.task
def train(steps: int = 5) -> None:
    dist.init_process_group("gloo")
    run = get_wandb_run()  # every rank: the same run
    for step in range(steps):
        run.log({"rank_specific_metric": 0.5 * dist.get_rank() + step})
    dist.destroy_process_group()


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(train)
