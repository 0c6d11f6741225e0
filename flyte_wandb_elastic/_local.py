"""Running a task's real ranks on this machine, laid out as on the cluster.

A local Flyte run of an Elastic or clustered task calls the function once, in process.
`run_ranks_locally` instead executes the task as its pods do, every node on 127.0.0.1, so the W&B
runs written locally have the ids, groups and labels of a cluster run:
- Elastic: torch elastic starts `nproc_per_node` workers per node (gloo on CPU); node 0 runs in
  this process, each other node in a child process joining the same rendezvous.
- Clustered: each node runs the command Flyte's `clustered` entrypoint execs in a pod,
  `torchrun ... --no-python -- a0 ...`, so every rank is a full Flyte `a0` process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flyte._context import internal_ctx
from flyte._internal.resolvers.default import DefaultTaskResolver
from flyte._internal.runtime.convert import Outputs, convert_from_native_to_inputs, convert_outputs_to_native
from flyte.clustered import ClusteredTaskTemplate
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
    run_base_dir: str | None = None,
) -> TaskContext:
    """A remote-mode Flyte task context, as a pod gets, with its paths under `work_dir` (and the
    run's base directory there too, unless `run_base_dir` is given)."""
    work = Path(work_dir)
    return TaskContext(
        action=ActionID(name=action_name, run_name=run_name, project=project, domain=domain, org="local"),
        version="local",
        raw_data_path=RawDataPath(path=str(work / "raw")),
        output_path=str(work / "outputs"),
        run_base_dir=run_base_dir or str(work / "base"),
        report=Report(name=action_name),
        mode="remote",
        custom_context=dict(custom_context or {}),
    )


def execute_node(task: TorchFunctionTask, tctx: TaskContext, inputs: Mapping[str, Any]) -> Any:
    """Run one node of `task` in this process, from its main thread; rank 0's result or `None`."""
    with internal_ctx().replace_task_context(tctx):
        return asyncio.run(task.execute(**inputs))


def run_ranks_locally(
    task: TorchFunctionTask | ClusteredTaskTemplate,
    /,
    *,
    run_name: str | None = None,
    action_name: str = "a0",
    custom_context: Mapping[str, str] | None = None,
    work_dir: str | Path | None = None,
    **inputs: Any,
) -> Any:
    """Run `task` with its real ranks on this machine and return global rank 0's result.

    Elastic: each of the task's nodes (the most that `nnodes` allows) runs torch elastic with
    `nproc_per_node` workers; node 0 runs in this process, the others in child processes.
    Clustered: each of the `replicas` nodes runs `torchrun` with `nproc_per_node` `a0` ranks,
    which load the task by its module, as in a pod (run it from the directory that holds it).
    Call it from the main thread, outside any event loop, under `if __name__ == "__main__":`.

    Args:
        task: A task of an `Elastic` (or `WandbElastic`) environment, or of a clustered one.
        run_name: The Flyte run name that run ids are built from; a fresh one by default.
        action_name: The Flyte action name.
        custom_context: Run context, e.g. `wandb_config(...)`.
        work_dir: Where Flyte's task paths go; a temporary directory by default.
        **inputs: The task's inputs.

    Returns:
        Global rank 0's return value.

    Raises:
        TypeError: `task` is neither an Elastic nor a clustered task.
        RuntimeError: A rank failed; the message carries the task's error where Flyte recorded one.
    """
    run_name = run_name or f"local-{uuid.uuid4().hex[:8]}"
    if isinstance(task, ClusteredTaskTemplate):
        return _run_clustered(task, run_name, action_name, custom_context, work_dir, inputs)
    if not isinstance(task, TorchFunctionTask):
        raise TypeError(
            f"task={task!r} is not a distributed task: expected a task of an Elastic or a clustered environment"
        )
    nnodes = parse_nnodes(task.plugin_config.nnodes)[1]
    with tempfile.TemporaryDirectory(prefix="flyte-wandb-elastic-") as tmp:
        work = Path(work_dir or tmp)
        base = str(work / "base")  # one run base directory for every node, as in a Flyte run
        contexts = [
            task_context(work / f"node-{n}", run_name, action_name, custom_context, run_base_dir=base)
            for n in range(nnodes)
        ]
        if nnodes == 1:
            return execute_node(task, contexts[0], inputs)
        saved = os.environ.get("PET_RDZV_ENDPOINT")
        port = _free_port()
        os.environ["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{port}"
        # This process hosts the rendezvous store until every node has shut down: a node that
        # hosted it would close it on exit, under a peer still shutting its rendezvous down (a
        # harmless error, printed with a C++ stack trace after every successful job).
        from torch.distributed import TCPStore

        store = TCPStore("127.0.0.1", port, is_master=True, multi_tenant=True, wait_for_workers=False)
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
            del store
            if saved is None:
                os.environ.pop("PET_RDZV_ENDPOINT", None)
            else:
                os.environ["PET_RDZV_ENDPOINT"] = saved


def _run_clustered(
    task: ClusteredTaskTemplate,
    run_name: str,
    action_name: str,
    custom_context: Mapping[str, str] | None,
    work_dir: str | Path | None,
    inputs: Mapping[str, Any],
) -> Any:
    """Run each node of a clustered task as its pod does: `torchrun ... --no-python -- a0 ...`."""
    settings = task._settings()
    nnodes, nproc = settings.replicas, settings.nproc_per_node
    torchrun, a0 = (shutil.which(name, path=Path(sys.executable).parent) or name for name in ("torchrun", "a0"))
    # Where `a0` imports the task from: a script's own directory, else here; the ranks get this
    # process's import path.
    main = sys.modules.get(task.func.__module__)
    root = Path(main.__file__).parent if task.func.__module__ == "__main__" and main and main.__file__ else Path.cwd()
    loader = DefaultTaskResolver().loader_args(task=task, root_dir=root)
    interface = task.native_interface
    with tempfile.TemporaryDirectory(prefix="flyte-wandb-elastic-") as tmp:
        work = Path(work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        proto = asyncio.run(
            convert_from_native_to_inputs(interface, custom_context=dict(custom_context or {}), **inputs)
        )
        (work / "inputs.pb").write_bytes(proto.proto_inputs.SerializeToString())
        endpoint, rdzv_id = f"127.0.0.1:{_free_port()}", f"{run_name}-0"
        env = {**os.environ, "FLYTE_CLUSTERED_WORKER": "1", "NNODES": str(nnodes), "MASTER_ADDR": "127.0.0.1"}
        env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, sys.path)])
        env.setdefault("JOBSET_RESTART_ATTEMPT", "0")
        nodes = []
        for node in range(nnodes):
            out = work / f"node-{node}" / "outputs"
            out.mkdir(parents=True, exist_ok=True)
            command = [
                torchrun,
                *(f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", f"--node-rank={node}"),
                *("--rdzv-backend=c10d", f"--rdzv-id={rdzv_id}", f"--rdzv-endpoint={endpoint}"),
                *("--no-python", "--", a0, "--inputs", str(work / "inputs.pb"), "--outputs-path", str(out)),
                *("--version", "local", "--run-base-dir", str(work / "base"), "--name", action_name),
                *("--run-name", run_name, "--project", "local", "--domain", "development", "--org", "local"),
                *("--resolver", DefaultTaskResolver().import_path, *loader),
            ]
            nodes.append((subprocess.Popen(command, env={**env, "NODE_RANK": str(node)}), out))
        codes = [proc.wait() for proc, _ in nodes]
        if any(codes):
            raise RuntimeError(f"clustered task {task.name!r} failed (node exit codes {codes}){_error_of(nodes)}")
        for _, out in nodes:  # only the node holding global rank 0 writes the outputs
            if (out / "outputs.pb").exists():
                from flyteidl2.task import common_pb2

                written = common_pb2.Outputs.FromString((out / "outputs.pb").read_bytes())
                return asyncio.run(convert_outputs_to_native(interface, Outputs(proto_outputs=written)))
        return None


def _error_of(nodes: list[tuple[Any, Path]]) -> str:
    """The task error that rank 0 recorded (`error.pb`), as `: message`, or `""`."""
    from flyteidl2.core import execution_pb2

    for _, out in nodes:
        if (out / "error.pb").exists():
            document = execution_pb2.ErrorDocument.FromString((out / "error.pb").read_bytes())
            return f": {document.error.message}"
    return ""


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
