"""Distributed metadata: `get_distributed_info()` on every rank, and the `flyte` key in each run.

python examples/distributed_metadata.py
"""

import flyte

from flyte_wandb_elastic import WandbElastic, get_distributed_info, get_wandb_run

env = flyte.TaskEnvironment(
    name="distributed_metadata",
    plugin_config=WandbElastic(
        nnodes=1, nproc_per_node=2, project="examples", run_mode="new", max_restarts=0, monitor_interval=1
    ),
)


@env.task
def describe() -> dict:
    info = get_distributed_info()  # rank, local_rank, world_size, local_world_size, worker_index, num_workers
    print(f"I am rank {info['rank']} on worker {info['worker_index']}", flush=True)
    run = get_wandb_run()
    run.log({"rank": info["rank"]})
    return {"info": info, "flyte": dict(run.config["flyte"])}


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(describe)
