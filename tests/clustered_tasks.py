"""Clustered tasks launched by the tests with the real worker command (torchrun + `a0`).

`a0` loads a task by module and attribute name, so the environment is built at import from
`CLUSTERED_CONFIG` (JSON: `replicas`, `nproc_per_node`, `max_restarts` and `WandbOptions` fields):
`train` and `flaky` are on a `WandbClusteredTaskEnvironment`, `train_decorated` is
`@wandb_init(...)` over the same function on a plain `ClusteredTaskEnvironment`.
"""

from __future__ import annotations

import json
import os

from flyte.clustered import ClusteredTaskEnvironment, TorchRun

from flyte_wandb_elastic import WandbClusteredTaskEnvironment, WandbOptions, wandb_init
from tests import tasks

_config = json.loads(os.environ.get("CLUSTERED_CONFIG", "{}"))
_layout = {
    "replicas": _config.pop("replicas", 1),
    "nproc_per_node": _config.pop("nproc_per_node", 2),
    "runtime": TorchRun(rdzv_backend="c10d", max_restarts=_config.pop("max_restarts", 0)),
}
_secret = {k: _config.pop(k) for k in ("api_key_secret", "api_key_secret_group") if k in _config}

env = WandbClusteredTaskEnvironment(name="clustered_env", wandb=WandbOptions(**_config), **_layout, **_secret)
plain_env = ClusteredTaskEnvironment(name="plain_clustered_env", **_layout)


# Defined here, not wrapped from `tests.tasks`: Flyte's resolver loads a task by its function's
# module and name, as in a pod.
@env.task
def train(
    steps: int = 3,
    fail_rank: int = -1,
    fail_step: int = -1,
    sleep_rank: int = -1,
    sleep_s: float = 0.0,
    extra_metrics: int = 0,
    via_globals: bool = False,
) -> float:
    return tasks.train(steps, fail_rank, fail_step, sleep_rank, sleep_s, extra_metrics, via_globals)


@env.task
def flaky(steps: int = 3, fail_rank: int = 1, fail_after_s: float = 2.0) -> int:
    return tasks.flaky(steps, fail_rank, fail_after_s)


@env.task
def paced(steps: int = 40, interval_s: float = 0.1, wait_open: bool = True, diverge: bool = False) -> int:
    return tasks.paced(steps, interval_s, wait_open, diverge)


@env.task(report=True)
def paced_report(steps: int = 40, interval_s: float = 0.1, wait_open: bool = True, diverge: bool = False) -> int:
    return tasks.paced(steps, interval_s, wait_open, diverge)


@env.task
def load(
    rows: int = 2000,
    interval_s: float = 0.002,
    reduce_every: int = 0,
    raise_rank: int = -1,
    raise_at: float = -1.0,
    hold_s: float = 0.0,
) -> int:
    return tasks.load(rows, interval_s, reduce_every, raise_rank, raise_at, hold_s)


@wandb_init(**_config)
@plain_env.task
def train_decorated(steps: int = 3, via_globals: bool = False) -> float:
    return tasks.train(steps, via_globals=via_globals)
