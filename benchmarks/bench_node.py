"""One simulated node of a benchmark job: `python -m benchmarks.bench_node SPEC_JSON`.

Runs `benchmarks.bench_tasks.train_task` as a Flyte pod does (remote-mode task context, torch elastic
started from the main thread). SPEC_JSON holds `run_name`, `action_name`, `work_dir`, `inputs` and
`out`, a JSON file that receives rank 0's result (`None` on nodes without rank 0) or the error.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    out = Path(spec["out"])
    try:
        from benchmarks.bench_tasks import train_task
        from flyte_wandb_elastic._local import execute_node, task_context

        tctx = task_context(spec["work_dir"], spec["run_name"], spec["action_name"], project="bench")
        result = execute_node(train_task, tctx, spec["inputs"])
    except Exception as exc:
        out.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}))
        return 1
    out.write_text(json.dumps({"result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
