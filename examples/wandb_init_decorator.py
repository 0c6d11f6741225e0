"""The `@wandb_init` decorator on a plain `Elastic` environment: code written for
`flyteplugins-wandb`, with only the import changed.

    python examples/wandb_init_decorator.py
"""

import flyte
from flyteplugins.pytorch import Elastic

from flyte_wandb_elastic import get_wandb_run, wandb_init

torch_env = flyte.TaskEnvironment(
    name="wandb_init_decorator",
    plugin_config=Elastic(nnodes=1, nproc_per_node=2, max_restarts=0, monitor_interval=1),
)


@wandb_init(run_mode="new", project="examples")
@torch_env.task
def train_individual_runs():
    run = get_wandb_run()
    run.log({"local_step_time": 0.123})


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(train_individual_runs)
