"""The benchmark's training task, on the environment that BENCH_VARIANT, BENCH_RUN_MODE and BENCH_NNODES select.

Read at import time, in the node process and again in every torch elastic worker (which imports this
module to unpickle `train` by reference), so all of them build the same task:

- `plain`: a plain `Elastic` environment, no W&B.
- `upstream`: a plain `Elastic` environment with `flyteplugins.wandb.wandb_init` above `@env.task`.
- `ours`: a `flyte_wandb_elastic.WandbElastic` environment.

Each rank writes `rank-{rank}.json` into BENCH_RANK_DIR with its timestamps and step times.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import flyte
import torch
import torch.distributed as dist
from flyteplugins.pytorch import Elastic

VARIANTS = ("plain", "upstream", "ours")
RUN_MODES = ("auto", "shared", "new")

VARIANT = os.environ.get("BENCH_VARIANT", "plain")
RUN_MODE = os.environ.get("BENCH_RUN_MODE", "auto")
NNODES = int(os.environ.get("BENCH_NNODES", "1"))
NPROC_PER_NODE = 2
PROJECT = "bench"

ELASTIC: dict[str, Any] = {
    "nnodes": NNODES,
    "nproc_per_node": NPROC_PER_NODE,
    "max_restarts": 0,
    "monitor_interval": 1,
    "rdzv_configs": {"timeout": 60, "join_timeout": 60},
}

if VARIANT not in VARIANTS:
    raise ValueError(f"BENCH_VARIANT={VARIANT!r}: expected one of {VARIANTS}")
if RUN_MODE not in RUN_MODES:
    raise ValueError(f"BENCH_RUN_MODE={RUN_MODE!r}: expected one of {RUN_MODES}")


def _no_run() -> None:
    return None


if VARIANT == "ours":
    from flyte_wandb_elastic import WandbElastic
    from flyte_wandb_elastic import get_wandb_run as get_run
elif VARIANT == "upstream":
    from flyteplugins.wandb import get_wandb_run as get_run
    from flyteplugins.wandb import wandb_init as upstream_wandb_init
else:
    get_run = _no_run


def _process_start_time() -> float:
    """This process's start time (seconds since the epoch), from /proc."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    stat = Path("/proc/stat").read_text().splitlines()
    boot = next(float(line.split()[1]) for line in stat if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def train(steps: int = 300, warmup: int = 10) -> float:
    """`steps` DDP steps of a Linear(64, 64) on random batches; logs 10 scalars per step where this rank has a run."""
    t_enter = time.time()
    run = get_run()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        torch.manual_seed(rank)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        durations = []
        t_first_step = time.time()
        loss_value = 0.0
        for _ in range(steps):
            start = time.perf_counter()
            batch = torch.randn(32, 64)
            loss = model(batch).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_value = loss.item()
            if run is not None:
                run.log({f"m{i}": loss_value * (i + 1) for i in range(10)})
            durations.append(time.perf_counter() - start)
        t_last_step = time.time()
    finally:
        dist.destroy_process_group()
    timed = durations[warmup:] or durations
    facts = {
        "rank": rank,
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "node": int(os.environ.get("GROUP_RANK", "0")),
        "has_run": run is not None,
        "process_start": _process_start_time(),
        "t_enter": t_enter,
        "t_first_step": t_first_step,
        "t_last_step": t_last_step,
        "step_s": sum(timed) / len(timed),
        "steps": steps,
    }
    Path(os.environ["BENCH_RANK_DIR"], f"rank-{rank}.json").write_text(json.dumps(facts))
    return loss_value


if VARIANT == "ours":
    env = flyte.TaskEnvironment(
        name="bench_env",
        plugin_config=WandbElastic(**ELASTIC, project=PROJECT, run_mode=RUN_MODE),
    )
    train_task = env.task(train)
elif VARIANT == "upstream":
    env = flyte.TaskEnvironment(name="bench_env", plugin_config=Elastic(**ELASTIC))
    # Upstream shared mode sets Settings(mode="shared"), which overrides WANDB_MODE=offline and then fails for want
    # of an API key; an explicit mode="offline" (a wandb.init argument) lets it run.
    extra: dict[str, Any] = {"mode": "offline"} if RUN_MODE == "shared" else {}
    train_task = upstream_wandb_init(run_mode=RUN_MODE, project=PROJECT, **extra)(env.task(train))
else:
    env = flyte.TaskEnvironment(name="bench_env", plugin_config=Elastic(**ELASTIC))
    train_task = env.task(train)
