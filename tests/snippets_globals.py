"""The reference page's patterns, written against W&B's globals (`wandb.log`, `wandb.run`) instead of
`get_wandb_run()`, as much upstream code is. They must write the same runs and rows as `tests.snippets`.
"""
# ruff: noqa: I001

from __future__ import annotations

import wandb

from tests.snippets import torch_env

from flyte_wandb_elastic import wandb_init


# ---- Pattern 1: single primary logger (default) ----
@wandb_init(project="my-project")
@torch_env.task
def train_distributed():
    if wandb.run:
        wandb.config.update({"lr": 0.1})
        wandb.log({"global_loss": 0.01})
        wandb.summary["best_loss"] = 0.01


# ---- Pattern 2: shared run across all ranks ----
@wandb_init(run_mode="shared", project="my-project")
@torch_env.task
def train_shared_run():
    wandb.log({"rank_specific_metric": 0.5})


# ---- Pattern 3: individual runs per rank ----
@wandb_init(run_mode="new", project="my-project")
@torch_env.task
def train_individual_runs():
    wandb.define_metric("local_step_time", summary="min")
    wandb.run.log({"local_step_time": 0.123})


# ---- Pattern 4: worker-level logging ----
@wandb_init(run_mode="auto", rank_scope="worker", project="my-project")
@torch_env.task
def train_per_node():
    if wandb.run is not None:
        wandb.log({"node_average_loss": 0.01})
