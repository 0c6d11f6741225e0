"""Run a task the way a Flyte pod does: remote mode, so torch elastic spawns real workers.

Usage: `python -m tests.launcher SPEC_JSON`, once per simulated node, every node with the same
PET_RDZV_ENDPOINT. SPEC_JSON holds `config` (WandbElastic fields) or `task` ("module:name"), `inputs`, `mode` ("local"
for a local Flyte run), `run_name`, `action_name`, `custom_context`, `work_dir` and `out` (a
JSON file that receives the result or the error); with `config`, `env_vars` for the task's
environment (`TaskEnvironment(env_vars=...)`).

In remote mode the task's `env_vars` are set in this process's environment before the task runs, as
Flyte sets them in a pod's container (its workers inherit them).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import flyte

from flyte_wandb_elastic._local import execute_node, task_context
from tests import tasks
from tests.tasks import make_env, make_task


def task_of(spec: dict[str, Any]) -> Any:
    """The task a launch spec names, declared as a user would."""
    if "task" in spec:  # "module:name" of a task defined in a module
        module, name = spec["task"].split(":")
        return getattr(importlib.import_module(module), name)
    function = spec.get("function", "train")
    if not spec.get("env_vars"):
        return make_task(function, **spec["config"])
    config = dict(spec["config"])
    report = config.pop("report", False)
    env = make_env(**config).clone_with("train_env", env_vars=spec["env_vars"])
    return env.task(getattr(tasks, function), report=report)


def run(spec: dict[str, Any]) -> Any:
    task = task_of(spec)
    inputs = spec.get("inputs", {})
    if spec.get("mode") == "local":
        return flyte.with_runcontext(mode="local").run(task, **inputs).outputs()[0]
    os.environ.update(task.env_vars or {})  # a pod's container has its task's env_vars
    tctx = task_context(
        spec["work_dir"],
        spec["run_name"],
        spec["action_name"],
        spec.get("custom_context"),
        "proj",
        "dev",
        run_base_dir=spec.get("run_base_dir"),
    )
    return execute_node(task, tctx, inputs)


def main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    out = Path(spec["out"])
    try:
        result = run(spec)
    except Exception as exc:
        out.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()}))
        return 1
    out.write_text(json.dumps({"result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
