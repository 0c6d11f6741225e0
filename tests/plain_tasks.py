"""Non-Elastic tasks and a plain function decorated with `@wandb_init`."""

from __future__ import annotations

import flyte
import wandb

from flyte_wandb_elastic import get_wandb_run, wandb_init

env = flyte.TaskEnvironment(name="plain_env")


@wandb_init(project="p")
@env.task
async def child(x: int) -> int:
    get_wandb_run().log({"child": x})
    return x


@wandb_init(project="p", run_mode="new")
@env.task
async def new_child(x: int) -> int:
    get_wandb_run().log({"new_child": x})
    return x


@wandb_init(project="p")
@env.task
async def parent() -> int:
    get_wandb_run().log({"parent": 1})
    total = await child(2) + await new_child(3)
    get_wandb_run().log({"parent": 2})
    return total


# The same three tasks, logging through W&B's globals as upstream code does.
@wandb_init(project="p")
@env.task
async def child_via_globals(x: int) -> int:
    wandb.log({"child": x})
    return x


@wandb_init(project="p", run_mode="new")
@env.task
async def new_child_via_globals(x: int) -> int:
    assert wandb.run is get_wandb_run()
    wandb.log({"new_child": x})
    return x


@wandb_init(project="p")
@env.task
async def parent_via_globals() -> int:
    wandb.log({"parent": 1})
    total = await child_via_globals(2) + await new_child_via_globals(3)
    wandb.log({"parent": 2})  # the globals are this task's run again
    return total


@wandb_init(project="p", id="trial-1", config={"lr": 0.1})
def objective() -> float:
    run = get_wandb_run()
    run.log({"score": 0.9})
    return 0.9


@wandb_init(project="p", id="trial-2")
def failing_objective() -> None:
    get_wandb_run().log({"score": 0.1})
    raise RuntimeError("trial failed")
