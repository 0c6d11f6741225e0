"""Running a task's real ranks on this machine, laid out as on the cluster.

A local Flyte run of an Elastic task calls the function once, in process. `run_ranks_locally`
instead executes the task as a Flyte pod does: torch elastic starts `nproc_per_node` workers per
node (gloo on CPU), and each extra node is a separate process that joins the same rendezvous on
127.0.0.1, so the W&B runs written locally have the ids, groups and labels of a cluster run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flyte._context import internal_ctx
from flyte.models import ActionID, RawDataPath, TaskContext
from flyte.report import Report
from flyteplugins.pytorch.task import TorchFunctionTask

from ._config import parse_nnodes


def task_context(
    work_dir: str | Path,
    run_name: str,
    action_name: str,
    custom_context: Mapping[str, str] | None = None,
    project: str = "local",
    domain: str = "development",
) -> TaskContext:
    """A remote-mode Flyte task context, as a pod gets, with its paths under `work_dir`."""
    work = Path(work_dir)
    return TaskContext(
        action=ActionID(name=action_name, run_name=run_name, project=project, domain=domain, org="local"),
        version="local",
        raw_data_path=RawDataPath(path=str(work / "raw")),
        output_path=str(work / "outputs"),
        run_base_dir=str(work / "base"),
        report=Report(name=action_name),
        mode="remote",
        custom_context=dict(custom_context or {}),
    )


def execute_node(task: TorchFunctionTask, tctx: TaskContext, inputs: Mapping[str, Any]) -> Any:
    """Run one node of `task` in this process, from its main thread; rank 0's result or `None`."""
    with internal_ctx().replace_task_context(tctx):
        return asyncio.run(task.execute(**inputs))


def run_ranks_locally(
    task: TorchFunctionTask,
    /,
    *,
    run_name: str | None = None,
    action_name: str = "a0",
    custom_context: Mapping[str, str] | None = None,
    work_dir: str | Path | None = None,
    **inputs: Any,
) -> Any:
    """Run `task` with its real ranks on this machine and return global rank 0's result.

    Each of the task's nodes (the most that `nnodes` allows) runs torch elastic with
    `nproc_per_node` workers; node 0 runs in this process, the others in child processes.
    Call it from the main thread, outside any event loop, under `if __name__ == "__main__":`.

    Args:
        task: A task of an environment whose `plugin_config` is an `Elastic` (or `WandbElastic`).
        run_name: The Flyte run name that run ids are built from; a fresh one by default.
        action_name: The Flyte action name.
        custom_context: Run context, e.g. `wandb_config(...)`.
        work_dir: Where Flyte's task paths go; a temporary directory by default.
        **inputs: The task's inputs.

    Returns:
        Global rank 0's return value.

    Raises:
        TypeError: `task` is not an Elastic task.
        RuntimeError: A rank failed; the message carries the rank's error.
    """
    if not isinstance(task, TorchFunctionTask):
        raise TypeError(f"task={task!r} is not an Elastic task: expected a task of an Elastic environment")
    run_name = run_name or f"local-{uuid.uuid4().hex[:8]}"
    nnodes = parse_nnodes(task.plugin_config.nnodes)[1]
    with tempfile.TemporaryDirectory(prefix="flyte-wandb-elastic-") as tmp:
        work = Path(work_dir or tmp)
        contexts = [task_context(work / f"node-{n}", run_name, action_name, custom_context) for n in range(nnodes)]
        if nnodes == 1:
            return execute_node(task, contexts[0], inputs)
        saved = os.environ.get("PET_RDZV_ENDPOINT")
        os.environ["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{_free_port()}"
        spawn = multiprocessing.get_context("spawn")
        others = [
            spawn.Process(target=_node_main, args=(_locate(task), contexts[n], dict(inputs)), daemon=False)
            for n in range(1, nnodes)
        ]
        try:
            for proc in others:
                proc.start()
            return execute_node(task, contexts[0], inputs)
        finally:
            for proc in others:
                proc.join()
            if saved is None:
                os.environ.pop("PET_RDZV_ENDPOINT", None)
            else:
                os.environ["PET_RDZV_ENDPOINT"] = saved


def _locate(task: TorchFunctionTask) -> tuple[str, str]:
    """Where a child process finds `task`: its module and its name in that module."""
    module = task.func.__module__
    return ("__mp_main__" if module == "__main__" else module), task.func.__name__


def _node_main(location: tuple[str, str], tctx: TaskContext, inputs: dict[str, Any]) -> None:
    import importlib

    module_name, func_name = location
    module = importlib.import_module(module_name)
    task = getattr(module, func_name)
    execute_node(task, tctx, inputs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
