"""W&B tracking for distributed PyTorch tasks on Flyte: `Elastic` and clustered (JobSet + torchrun)."""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._checkpoints import log_checkpoint, use_checkpoint
    from ._clustered import WandbClusteredTask, WandbClusteredTaskEnvironment
    from ._config import WandbElastic
    from ._decorator import wandb_init
    from ._downloads import (
        download_wandb_run_dir,
        download_wandb_run_logs,
        download_wandb_sweep_dirs,
        download_wandb_sweep_logs,
    )
    from ._elastic import WandbElasticTask
    from ._hooks import get_distributed_info, get_wandb_run
    from ._links import Wandb, WandbSweep
    from ._local import run_ranks_locally
    from ._options import WandbOptions, wandb_config
    from ._rank_run import RankRun
    from ._run_context import (
        WandbContext,
        get_wandb_context,
        get_wandb_run_dir,
        get_wandb_sweep_context,
        get_wandb_sweep_id,
    )
    from ._runfiles import RunFile, format_table, read_run_file, read_run_files
    from ._sweep import wandb_sweep
    from ._sweep_options import WandbSweepOptions, wandb_sweep_config
    from ._sync import SyncError, SyncReport
    from ._sync import sync as sync_runs
    from ._wandb_load import WandbLimitWarning

# Each public name is imported on first use (PEP 562), so that the command line (`python -m
# flyte_wandb_elastic`), which needs neither torch nor Flyte, starts in a fraction of a second.
# Each module that declares an engine's config registers its task type with Flyte.
_PUBLIC: dict[str, tuple[str, str]] = {
    "log_checkpoint": ("_checkpoints", "log_checkpoint"),
    "use_checkpoint": ("_checkpoints", "use_checkpoint"),
    "WandbClusteredTask": ("_clustered", "WandbClusteredTask"),
    "WandbClusteredTaskEnvironment": ("_clustered", "WandbClusteredTaskEnvironment"),
    "WandbElastic": ("_config", "WandbElastic"),
    "wandb_init": ("_decorator", "wandb_init"),
    "download_wandb_run_dir": ("_downloads", "download_wandb_run_dir"),
    "download_wandb_run_logs": ("_downloads", "download_wandb_run_logs"),
    "download_wandb_sweep_dirs": ("_downloads", "download_wandb_sweep_dirs"),
    "download_wandb_sweep_logs": ("_downloads", "download_wandb_sweep_logs"),
    "WandbElasticTask": ("_elastic", "WandbElasticTask"),
    "get_distributed_info": ("_hooks", "get_distributed_info"),
    "get_wandb_run": ("_hooks", "get_wandb_run"),
    "Wandb": ("_links", "Wandb"),
    "WandbSweep": ("_links", "WandbSweep"),
    "run_ranks_locally": ("_local", "run_ranks_locally"),
    "WandbOptions": ("_options", "WandbOptions"),
    "wandb_config": ("_options", "wandb_config"),
    "RankRun": ("_rank_run", "RankRun"),
    "WandbContext": ("_run_context", "WandbContext"),
    "get_wandb_context": ("_run_context", "get_wandb_context"),
    "get_wandb_run_dir": ("_run_context", "get_wandb_run_dir"),
    "get_wandb_sweep_context": ("_run_context", "get_wandb_sweep_context"),
    "get_wandb_sweep_id": ("_run_context", "get_wandb_sweep_id"),
    "RunFile": ("_runfiles", "RunFile"),
    "format_table": ("_runfiles", "format_table"),
    "read_run_file": ("_runfiles", "read_run_file"),
    "read_run_files": ("_runfiles", "read_run_files"),
    "wandb_sweep": ("_sweep", "wandb_sweep"),
    "WandbSweepOptions": ("_sweep_options", "WandbSweepOptions"),
    "wandb_sweep_config": ("_sweep_options", "wandb_sweep_config"),
    "SyncError": ("_sync", "SyncError"),
    "SyncReport": ("_sync", "SyncReport"),
    "sync_runs": ("_sync", "sync"),
    "WandbLimitWarning": ("_wandb_load", "WandbLimitWarning"),
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


try:
    __version__ = version("flyte-wandb-elastic")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "RankRun",
    "RunFile",
    "SyncError",
    "SyncReport",
    "Wandb",
    "WandbClusteredTask",
    "WandbClusteredTaskEnvironment",
    "WandbContext",
    "WandbElastic",
    "WandbElasticTask",
    "WandbLimitWarning",
    "WandbOptions",
    "WandbSweep",
    "WandbSweepOptions",
    "__version__",
    "download_wandb_run_dir",
    "download_wandb_run_logs",
    "download_wandb_sweep_dirs",
    "download_wandb_sweep_logs",
    "format_table",
    "get_distributed_info",
    "get_wandb_context",
    "get_wandb_run",
    "get_wandb_run_dir",
    "get_wandb_sweep_context",
    "get_wandb_sweep_id",
    "log_checkpoint",
    "read_run_file",
    "read_run_files",
    "run_ranks_locally",
    "sync_runs",
    "use_checkpoint",
    "wandb_config",
    "wandb_init",
    "wandb_sweep",
    "wandb_sweep_config",
]
