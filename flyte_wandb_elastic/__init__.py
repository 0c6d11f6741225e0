"""W&B tracking for distributed PyTorch tasks on Flyte: `Elastic` and clustered (JobSet + torchrun)."""

from importlib.metadata import PackageNotFoundError, version

from ._clustered import WandbClusteredTask, WandbClusteredTaskEnvironment
from ._config import WandbElastic
from ._decorator import wandb_init
from ._elastic import WandbElasticTask
from ._hooks import get_distributed_info, get_wandb_run
from ._links import Wandb
from ._local import run_ranks_locally
from ._options import WandbOptions, wandb_config
from ._runfiles import RunFile, format_table, read_run_file, read_run_files

try:
    __version__ = version("flyte-wandb-elastic")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "RunFile",
    "Wandb",
    "WandbClusteredTask",
    "WandbClusteredTaskEnvironment",
    "WandbElastic",
    "WandbElasticTask",
    "WandbOptions",
    "__version__",
    "format_table",
    "get_distributed_info",
    "get_wandb_run",
    "read_run_file",
    "read_run_files",
    "run_ranks_locally",
    "wandb_config",
    "wandb_init",
]
