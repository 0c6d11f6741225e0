"""W&B tracking for distributed PyTorch tasks on Flyte: `Elastic` and clustered (JobSet + torchrun)."""

from importlib.metadata import PackageNotFoundError, version

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
