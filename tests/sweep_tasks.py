"""Sweep objectives and tasks for `test_upstream_api`, and a runner that replays what `wandb.agent` does.

Usage: `python -m tests.sweep_tasks SCENARIO OUT_JSON` with W&B offline (see `wandb_env`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import flyte

from flyte_wandb_elastic import (
    download_wandb_run_dir,
    get_wandb_context,
    get_wandb_run,
    get_wandb_run_dir,
    get_wandb_sweep_context,
    get_wandb_sweep_id,
    wandb_config,
    wandb_init,
    wandb_sweep,
    wandb_sweep_config,
)

env = flyte.TaskEnvironment(name="sweep_env")
FACTS: dict[str, Any] = {}


@wandb_init(project="ignored-in-a-sweep", config={"lr": 0.1, "epochs": 2})
def objective() -> None:
    import wandb

    run = get_wandb_run()
    FACTS[run.id] = {"run_dir": get_wandb_run_dir(), "wandb_run_is_ours": wandb.run is run}
    run.log({"score": wandb.config["lr"] * wandb.config["epochs"]})
    if wandb.config["lr"] > 0.4:
        raise RuntimeError("trial diverged")


def upstream_objective() -> None:
    from flyteplugins.wandb import wandb_init as upstream_init

    @upstream_init(project="ignored-in-a-sweep")
    def trial() -> None:
        raise RuntimeError("trial diverged")

    trial()


def agent_job(function: Callable[[], None], sweep_id: str, run_id: str, config: dict[str, Any]) -> None:
    """One job of `wandb.agent(sweep_id, function=...)`, as `wandb/agents/pyagent.py` (`Agent._run_job`) runs it.

    The agent writes the trial's parameters to a config file, points the trial at it and at the
    run and sweep ids through the environment, calls the function in a thread of its own and
    finishes W&B's global run (exit code 1 if the function raised). Only the server calls
    (registering the agent, fetching the job) are left out.
    """
    import wandb
    from wandb.sdk.lib import config_util

    def run_job() -> None:
        path = os.path.join(os.environ["WANDB_DIR"], "wandb", f"sweep-{sweep_id}", f"config-{run_id}.yaml")
        os.environ["WANDB_RUN_ID"] = run_id
        os.environ["WANDB_SWEEP_PARAM_PATH"] = path
        config_util.save_config_file_from_dict(path, {k: {"value": v} for k, v in config.items()})
        os.environ["WANDB_SWEEP_ID"] = sweep_id
        wandb.teardown()
        try:
            try:
                function()
            except Exception as exc:
                raise RuntimeError(f"Run threw exception: {exc}") from exc
            wandb.finish()
        except Exception:
            wandb.finish(exit_code=1)
        finally:
            for key in ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH"):
                os.environ.pop(key, None)

    thread = threading.Thread(target=run_job)
    thread.start()
    thread.join()


@wandb_sweep
@wandb_init(project="p")
@env.task
async def joins_sweep() -> str:
    context, sweep = get_wandb_context(), get_wandb_sweep_context()
    assert context is not None and sweep is not None
    run_dir = get_wandb_run_dir()
    return json.dumps(
        {
            "sweep_id": get_wandb_sweep_id(),
            "run_id": get_wandb_run().id,
            "run_dir_exists": run_dir is not None and os.path.isdir(run_dir),
            "context": [context.project, context.mode, context.run_mode],
            "sweep": [sweep.method, sweep.to_sweep_config()],
        }
    )


@wandb_sweep
@env.task
async def creates_sweep() -> str:
    return get_wandb_sweep_id() or ""


@wandb_init(project="p")
@env.task
async def downloads_its_run() -> str:
    return download_wandb_run_dir()


@wandb_init(project="p", download_logs=True)
@env.task
async def downloads_after() -> int:
    return 1


SWEEP = wandb_sweep_config(method="random", metric={"name": "score", "goal": "maximize"}, parameters={"lr": {}})


def local_run(task: Any, context: dict[str, str]) -> Any:
    try:
        return {"result": flyte.with_runcontext(mode="local", custom_context=context).run(task).outputs()[0]}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(scenario: str, out: str) -> None:
    offline = wandb_config(project="p", mode="offline")
    facts: dict[str, Any]
    if scenario == "agent":
        agent_job(objective, "sweep-1", "trial-ok", {"lr": 0.3})
        agent_job(objective, "sweep-1", "trial-failed", {"lr": 0.5})
        agent_job(upstream_objective, "sweep-1", "upstream-failed", {"lr": 0.5})
        facts = FACTS
    elif scenario == "tasks":
        facts = {
            "joins": local_run(joins_sweep, {**offline, **SWEEP, "_wandb_sweep_id": "sweep-1"}),
            "creates_offline": local_run(creates_sweep, {**offline, **SWEEP}),
            "no_sweep_config": local_run(creates_sweep, {**wandb_config(project="p")}),
            "download_offline": local_run(downloads_its_run, offline),
            "download_after_offline": local_run(downloads_after, offline),
        }
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    with open(out, "w") as f:
        json.dump(facts, f)


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except Exception:
        traceback.print_exc()
        sys.exit(1)
