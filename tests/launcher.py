"""Run a task the way a Flyte pod does: remote mode, so torch elastic spawns real workers.

Usage: `python -m tests.launcher SPEC_JSON`, once per simulated node, every node with the same
PET_RDZV_ENDPOINT. SPEC_JSON holds `config` (WandbElastic fields) or `task` ("module:name"), `inputs`, `mode` ("local"
for a local Flyte run), `run_name`, `action_name`, `custom_context`, `work_dir` and `out` (a
JSON file that receives the result or the error).
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import flyte

from flyte_wandb_elastic._local import execute_node, task_context
from tests.tasks import make_task


def run(spec: dict[str, Any]) -> Any:
    if "task" in spec:  # "module:name" of a task defined in a module
        module, name = spec["task"].split(":")
        task = getattr(importlib.import_module(module), name)
    else:
        task = make_task(spec.get("function", "train"), **spec["config"])
    inputs = spec.get("inputs", {})
    if spec.get("mode") == "local":
        return flyte.with_runcontext(mode="local").run(task, **inputs).outputs()[0]
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
