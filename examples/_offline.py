"""What every example does around its task: W&B offline unless an API key is set, the real ranks
run on this machine, then a table of what each rank logged."""

from __future__ import annotations

import os
from typing import Any

from flyte_wandb_elastic import format_table, read_run_files, run_ranks_locally


def run_and_report(task: Any, work_dir: str | None = None, **inputs: Any) -> Any:
    """Run `task` with its real ranks here and print where its W&B runs are and what they hold."""
    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    # absolute, so that rank processes started elsewhere write to the same place
    wandb_dir = os.environ["WANDB_DIR"] = os.path.abspath(os.environ.get("WANDB_DIR", "wandb-examples"))
    os.makedirs(wandb_dir, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    before = {run.path for run in read_run_files(wandb_dir)}
    result = run_ranks_locally(task, work_dir=work_dir, **inputs)
    runs = [run for run in read_run_files(wandb_dir) if run.path not in before]
    print(f"result of rank 0: {result}")
    print(f"W&B run files under {wandb_dir}/wandb (W&B mode: {os.environ.get('WANDB_MODE', 'online')}):")
    print(format_table(runs))
    return result
