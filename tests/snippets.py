"""The code of the reference page (`seed-distributed-wandb.md`), verbatim but for the import line.

`torch_env` is a plain `Elastic` environment, sized by SNIPPET_NNODES, with fast test settings.
"""
# ruff: noqa: I001, E402

from __future__ import annotations

import os

import flyte

from tests.tasks import FAST_ELASTIC

from flyteplugins.pytorch.task import Elastic

torch_env = flyte.TaskEnvironment(
    name="torch_env",
    plugin_config=Elastic(nnodes=int(os.environ.get("SNIPPET_NNODES", "1")), nproc_per_node=2, **FAST_ELASTIC),
)

# ---- Pattern 1: single primary logger (default) ----
from flyte_wandb_elastic import wandb_init, get_wandb_run


# Default: run_mode="auto", rank_scope="global"
@wandb_init(project="my-project")
@torch_env.task
def train_distributed():
    # Only global rank 0 gets a W&B run object
    # Other ranks receive None from get_wandb_run()
    run = get_wandb_run()
    if run:
        run.log({"global_loss": 0.01})


# ---- Pattern 2: shared run across all ranks ----
@wandb_init(run_mode="shared", project="my-project")
@torch_env.task
def train_shared_run():
    # Every rank gets the same W&B run object
    run = get_wandb_run()
    # Each rank logs its own specific metric to the shared run
    run.log({"rank_specific_metric": 0.5})


# ---- Pattern 3: individual runs per rank ----
@wandb_init(run_mode="new", project="my-project")
@torch_env.task
def train_individual_runs():
    # Every rank gets a unique W&B run object
    # Run IDs follow the pattern: {base_id}-rank-{global_rank}
    run = get_wandb_run()
    run.log({"local_step_time": 0.123})


# ---- Pattern 4: worker-level logging ----
# Creates 1 run per node (Local Rank 0 on each node logs)
@wandb_init(run_mode="auto", rank_scope="worker", project="my-project")
@torch_env.task
def train_per_node():
    run = get_wandb_run()
    if run:
        # This code executes only on Local Rank 0 of each node
        run.log({"node_average_loss": 0.01})


# ---- Accessing distributed metadata ----
from flyte_wandb_elastic import get_distributed_info


@wandb_init
@torch_env.task
def custom_logic_task():
    dist_info = get_distributed_info()
    if dist_info:
        # dist_info contains: rank, local_rank, world_size,
        # local_world_size, worker_index, num_workers
        print(f"I am rank {dist_info['rank']} on worker {dist_info['worker_index']}")
