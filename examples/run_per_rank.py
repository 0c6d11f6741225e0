"""Pattern 3, one run per rank: ids `{base}-rank-{r}`, grouped under the base id (run_mode="new").

python examples/run_per_rank.py
"""

import time

import flyte

from flyte_wandb_elastic import WandbElastic, get_wandb_run

env = flyte.TaskEnvironment(
    name="run_per_rank",
    plugin_config=WandbElastic(
        nnodes=1, nproc_per_node=2, project="examples", run_mode="new", max_restarts=0, monitor_interval=1
    ),
)


@env.task
def train(steps: int = 5) -> None:
    run = get_wandb_run()  # every rank: its own run
    for _ in range(steps):
        started = time.perf_counter()
        sum(i * i for i in range(10_000))
        run.log({"local_step_time": time.perf_counter() - started})


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(train)
