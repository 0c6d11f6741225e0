"""Downloading runs and sweeps from the W&B server into a task: upstream's four helpers.

Which run or sweep, and where it lives, comes from the task: the current run (`get_wandb_run()`),
the run and sweep ids published in the run context, and `wandb_config` / `wandb_sweep_config`.
A task set to log offline (or disabled) gets an error naming what a download needs.

Process: the task's own process.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import flyte
from flyte.io import Dir

from . import _wandb_server
from ._hooks import get_wandb_run
from ._options import PARENT_RUN_KEY, WandbOptions, from_context
from ._sweep_options import SWEEP_ID_KEY, sweep_from_context

logger = logging.getLogger("flyte_wandb_elastic")

# Where downloads go by default, as upstream (`/tmp/wandb_runs` on Linux).
DOWNLOAD_ROOT = Path(tempfile.gettempdir(), "wandb_runs")


def _context() -> dict[str, str]:
    ctx = flyte.ctx()
    return dict(ctx.custom_context or {}) if ctx else {}


def download_wandb_run_dir(
    run_id: str | None = None,
    path: str | None = None,
    include_history: bool = True,
) -> str:
    """Download a run's files from the W&B server, with its summary and metrics history as JSON.

    Writes every file W&B stored for the run, `summary.json` (the final summary) and, with
    `include_history`, `metrics_history.json` (the logged rows).

    Args:
        run_id: The run to download; by default the current run (the run context's run id, else
            `get_wandb_run()`).
        path: Where to put the files; by default `/tmp/wandb_runs/<run_id>`.
        include_history: Whether to write `metrics_history.json`.

    Returns:
        The directory holding the files.

    Raises:
        RuntimeError: No run id is given or known; W&B is set to log offline or disabled (a
            download needs the server); or the server refused or the files could not be written.
    """
    context = _context()
    run = get_wandb_run()
    if run_id is None:
        run_id = context.get(PARENT_RUN_KEY) or (run.id if run is not None else None)
        if run_id is None:
            raise RuntimeError(
                "download_wandb_run_dir() has no run to download: pass run_id=..., or call it inside a task "
                "decorated with @wandb_init (or of a WandbElastic environment) on a rank that has a run."
            )
    options = from_context(context)
    entity, project, mode, source = options.entity, options.project, options.mode, "wandb_config"
    current = run is not None and run.id == run_id
    if current and (run.offline or run.disabled):
        mode, source = ("disabled" if run.disabled else "offline"), "this task's run"
    _wandb_server.require_server(f"downloading the W&B run {run_id!r}", mode, source)
    if current:  # the current run knows where it lives
        entity, project = run.entity or entity, run.project or project
    run_path = "/".join(p for p in (entity, project, run_id) if p)
    return _download(run_path, path or str(DOWNLOAD_ROOT / run_id), include_history, options)


def _download(run_path: str, path: str, include_history: bool, options: WandbOptions) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"could not create the download directory {path} ({exc})") from exc
    _wandb_server.download_run(run_path, path, include_history, options.host)
    return path


def download_wandb_sweep_dirs(
    sweep_id: str | None = None,
    base_path: str | None = None,
    include_history: bool = True,
) -> list[str]:
    """Download every run of a sweep, each into its own directory named by its run id.

    Args:
        sweep_id: The sweep; by default the one a `@wandb_sweep` task created (`get_wandb_sweep_id()`).
        base_path: The parent of the run directories; by default `/tmp/wandb_runs`.
        include_history: Whether to write each run's `metrics_history.json`.

    Returns:
        The directories of the runs that were downloaded. When only some runs fail, a warning
        names them.

    Raises:
        RuntimeError: No sweep id is given or known; the sweep's entity and project are unknown;
            W&B is set to log offline or disabled; the sweep could not be read; or every run failed.
    """
    context = _context()
    if sweep_id is None:
        sweep_id = context.get(SWEEP_ID_KEY)
        if not sweep_id:
            raise RuntimeError(
                "download_wandb_sweep_dirs() has no sweep to download: pass sweep_id=..., or call it inside a "
                "task decorated with @wandb_sweep (or one it calls)."
            )
    options = from_context(context)
    sweep = sweep_from_context(context)
    # Where the sweep was created: the sweep's own project and entity first, as @wandb_sweep does.
    entity = (sweep.entity if sweep else None) or options.entity
    project = (sweep.project if sweep else None) or options.project
    if not entity or not project:
        raise RuntimeError(
            f"download_wandb_sweep_dirs() needs the entity and project of sweep {sweep_id!r}: set them with "
            "wandb_config(entity=..., project=...) or wandb_sweep_config(entity=..., project=...)."
        )
    _wandb_server.require_server(f"downloading the W&B sweep {sweep_id!r}", options.mode, "wandb_config")
    run_ids = _wandb_server.sweep_run_ids(f"{entity}/{project}/{sweep_id}", options.host)
    root = Path(base_path) if base_path else DOWNLOAD_ROOT
    paths: list[str] = []
    failed: list[str] = []
    for run_id in run_ids:
        try:
            paths.append(_download(f"{entity}/{project}/{run_id}", str(root / run_id), include_history, options))
        except RuntimeError as exc:
            failed.append(f"{run_id} ({exc})")
    if failed and not paths:
        raise RuntimeError(f"downloading the {len(run_ids)} runs of sweep {sweep_id!r} failed: {', '.join(failed)}")
    if failed:
        count = f"{len(failed)} of the {len(run_ids)}"
        logger.warning("downloading %s runs of sweep %r failed: %s", count, sweep_id, ", ".join(failed))
    return paths


@flyte.trace
async def download_wandb_run_logs(run_id: str) -> Dir:
    """Download a run's files (`download_wandb_run_dir`) as a traced step whose output is the directory.

    `@wandb_init(download_logs=True)` (or `wandb_config(download_logs=True)`) calls it after a
    non-distributed task, so the files show as a trace output in the Flyte UI.

    Args:
        run_id: The run to download.

    Returns:
        The downloaded files, as a Flyte `Dir`.

    Raises:
        RuntimeError: As `download_wandb_run_dir`.
    """
    return await Dir.from_local(download_wandb_run_dir(run_id=run_id))


@flyte.trace
async def download_wandb_sweep_logs(sweep_id: str) -> Dir:
    """Download every run of a sweep (`download_wandb_sweep_dirs`) as a traced step.

    `@wandb_sweep(download_logs=True)` (or `wandb_sweep_config(download_logs=True)`) calls it
    after the task.

    Args:
        sweep_id: The sweep to download.

    Returns:
        The directory holding one folder per run, as a Flyte `Dir`.

    Raises:
        RuntimeError: As `download_wandb_sweep_dirs`.
    """
    paths = download_wandb_sweep_dirs(sweep_id=sweep_id)
    return await Dir.from_local(os.path.dirname(paths[0]) if paths else str(DOWNLOAD_ROOT))
