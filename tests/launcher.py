"""Run a task the way a Flyte pod does: remote mode, so torch elastic spawns real workers.

Usage: python -m tests.launcher SPEC_JSON. SPEC_JSON holds `config` (WandbElastic fields),
`inputs`, `mode` ("local" for a local run), `run_name`, `action_name`, `custom_context`, `out` (a JSON file for the result or error)
and `work_dir`. Run it once per simulated node, with the same PET_RDZV_ENDPOINT.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from pathlib import Path

import flyte
from flyte._context import internal_ctx
from flyte.models import ActionID, RawDataPath, TaskContext
from flyte.report import Report

from tests.tasks import make_task


def main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    out = Path(spec["out"])
    try:
        result = asyncio.run(_execute(spec))
    except Exception as exc:
        out.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()}))
        return 1
    out.write_text(json.dumps({"result": result}))
    return 0


async def _execute(spec: dict) -> object:
    task = make_task(**spec["config"])
    if spec.get("mode") == "local":
        run = await flyte.with_runcontext(mode="local").run.aio(task, **spec.get("inputs", {}))
        return run.outputs()[0]
    work = Path(spec["work_dir"])
    tctx = TaskContext(
        action=ActionID(
            name=spec["action_name"], run_name=spec["run_name"], project="proj", domain="dev", org="org"
        ),
        version="v1",
        raw_data_path=RawDataPath(path=str(work / "raw")),
        output_path=str(work / "outputs"),
        run_base_dir=str(work / "base"),
        report=Report(name="report"),
        mode="remote",
        custom_context=spec.get("custom_context", {}),
    )
    with internal_ctx().replace_task_context(tctx):
        return await task.execute(**spec.get("inputs", {}))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
