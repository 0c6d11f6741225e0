"""W&B tracking for distributed PyTorch (torch elastic) tasks on Flyte."""

from importlib.metadata import PackageNotFoundError, version

from ._config import WandbElastic
from ._hooks import get_distributed_info, get_wandb_run
from ._options import WandbOptions, wandb_config
from ._task import WandbElasticTask

try:
    __version__ = version("flyte-wandb-elastic")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "WandbElastic",
    "WandbElasticTask",
    "WandbOptions",
    "__version__",
    "get_distributed_info",
    "get_wandb_run",
    "wandb_config",
]
