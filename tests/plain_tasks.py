"""Non-Elastic tasks and a plain function decorated with `@wandb_init`."""

from __future__ import annotations

import flyte

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
    return await child(2) + await new_child(3)


@wandb_init(project="p", id="trial-1", config={"lr": 0.1})
def objective() -> float:
    run = get_wandb_run()
    run.log({"score": 0.9})
    return 0.9


@wandb_init(project="p", id="trial-2")
def failing_objective() -> None:
    get_wandb_run().log({"score": 0.1})
    raise RuntimeError("trial failed")
