"""`WandbElastic`: the `Elastic` plugin config with W&B logging declared on the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flyteplugins.pytorch import Elastic

from ._options import WandbOptions, invalid
from ._wandb_load import warn_at_declaration

_RDZV_BACKENDS = ("c10d", "etcd", "etcd-v2")


@dataclass
class WandbElastic(Elastic, WandbOptions):
    """A torch elastic job whose ranks log to W&B.

    Every `Elastic` field is kept (`nnodes`, `nproc_per_node`, `max_restarts`, ...); the W&B
    fields of `WandbOptions` are keyword-only, and so are `api_key_secret` (the name of a Flyte
    secret holding the W&B API key, given to every worker as `WANDB_API_KEY`) and
    `api_key_secret_group` (its group, for stores that use one). Each worker process that torch elastic starts runs
    a pre-execute hook (which may open this rank's run) and a post-execute hook (which finishes it
    with the task's exit state).

    Example:
        ```python
        env = flyte.TaskEnvironment(
            name="torch_env",
            plugin_config=WandbElastic(nnodes=2, nproc_per_node=4, project="my-project",
                                       run_mode="shared", rank_scope="worker"),
        )
        ```

    Warns:
        WandbLimitWarning: The declared layout, online at the most nodes `nnodes` allows, would
            exceed one of W&B's documented limits (see the scale page of the docs).

    Raises:
        ValueError: A field is invalid; the message names the field, the value and what is allowed.
    """

    api_key_secret: str | None = field(default=None, kw_only=True)
    api_key_secret_group: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        WandbOptions.__post_init__(self)
        _check_elastic(self)
        check_api_key_fields(self.api_key_secret, self.api_key_secret_group)
        # Runs in the declaring process (and wherever the module declaring it is imported).
        fields = {"nnodes": self.nnodes, "nproc_per_node": self.nproc_per_node}
        warn_at_declaration(self, "WandbElastic", fields, self.node_range[1], self.nproc_per_node)

    @property
    def node_range(self) -> tuple[int, int]:
        """The (minimum, maximum) number of nodes that `nnodes` allows."""
        return parse_nnodes(self.nnodes)


def check_api_key_fields(secret: Any, group: Any) -> None:
    """Validate `api_key_secret` and `api_key_secret_group` (shared by every engine's declaration)."""
    for name, value in (("api_key_secret", secret), ("api_key_secret_group", group)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise invalid(name, value, "the name of a Flyte secret (a non-empty string) or None")
    if group is not None and secret is None:
        raise invalid("api_key_secret_group", group, "None unless api_key_secret is set")


def parse_nnodes(nnodes: Any) -> tuple[int, int]:
    """`nnodes` (an int, `"N"` or `"MIN:MAX"`) as a (minimum, maximum) pair.

    Raises:
        ValueError: `nnodes` is malformed.
    """
    allowed = 'a positive int, "N" or "MIN:MAX" with 1 <= MIN <= MAX'
    if isinstance(nnodes, bool):
        raise invalid("nnodes", nnodes, allowed)
    if isinstance(nnodes, int):
        bounds = (nnodes, nnodes)
    elif isinstance(nnodes, str):
        parts = nnodes.split(":")
        if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
            raise invalid("nnodes", nnodes, allowed)
        bounds = (int(parts[0]), int(parts[-1]))
    else:
        raise invalid("nnodes", nnodes, allowed)
    if not 1 <= bounds[0] <= bounds[1]:
        raise invalid("nnodes", nnodes, allowed)
    return bounds


def _check_elastic(config: Elastic) -> None:
    parse_nnodes(config.nnodes)
    if isinstance(config.nproc_per_node, bool) or not isinstance(config.nproc_per_node, int):
        raise invalid("nproc_per_node", config.nproc_per_node, "an int >= 1")
    if config.nproc_per_node < 1:
        raise invalid("nproc_per_node", config.nproc_per_node, "an int >= 1")
    if config.rdzv_backend not in _RDZV_BACKENDS:
        raise invalid("rdzv_backend", config.rdzv_backend, " or ".join(map(repr, _RDZV_BACKENDS)))
    restarts = config.max_restarts
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
        raise invalid("max_restarts", config.max_restarts, "an int >= 0")
    if (
        isinstance(config.monitor_interval, bool)
        or not isinstance(config.monitor_interval, (int, float))
        or config.monitor_interval <= 0
    ):
        raise invalid("monitor_interval", config.monitor_interval, "a number of seconds > 0")
    if not isinstance(config.rdzv_configs, dict):
        raise invalid("rdzv_configs", config.rdzv_configs, "a dict")


# Declaring a task of a `WandbElastic` environment needs its task type registered with Flyte,
# whichever way `WandbElastic` was imported.
from . import _elastic  # noqa: E402, F401
