"""The benchmarks' training task, on the environment that the BENCH_* environment variables select.

Read at import time, in the node process and again in every torch elastic worker (which imports this
module to unpickle `train` by reference), so all of them build the same task:

- BENCH_VARIANT: `plain` (a plain `Elastic` environment, no W&B), `upstream` (a plain `Elastic`
  environment with `flyteplugins.wandb.wandb_init` above `@env.task`) or `ours` (a
  `flyte_wandb_elastic.WandbElastic` environment).
- BENCH_RUN_MODE, BENCH_NNODES, BENCH_NPROC (ranks per node, default 2).
- BENCH_BODY: `ddp` (default: DDP over a `Linear(64, 64)`) or `light` (no process group, one tiny
  matmul per step).
- BENCH_LOG_PROBE: a number N > 0 makes each logging rank time N `run.log` calls at the very start
  of the function, one by one, before any step (see `_log_probe`).
- BENCH_WANDB_OPTIONS: JSON of W&B options for `ours` (`WandbOptions` fields, e.g. `mode`, `host`,
  `init_timeout`, `blocking_init`); for `upstream`, `mode`, `host` and `init_timeout` are passed
  as `wandb.init` arguments and settings.

Each rank writes `rank-{rank}.json` into BENCH_RANK_DIR with its timestamps and step times.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import flyte
import psutil
import torch
import torch.distributed as dist
from flyteplugins.pytorch import Elastic

VARIANTS = ("plain", "upstream", "ours")
RUN_MODES = ("auto", "shared", "new")

VARIANT = os.environ.get("BENCH_VARIANT", "plain")
RUN_MODE = os.environ.get("BENCH_RUN_MODE", "auto")
NNODES = int(os.environ.get("BENCH_NNODES", "1"))
NPROC_PER_NODE = int(os.environ.get("BENCH_NPROC", "2"))
BODY = os.environ.get("BENCH_BODY", "ddp")
LOG_PROBE_CALLS = int(os.environ.get("BENCH_LOG_PROBE", "0"))
WANDB_OPTIONS: dict[str, Any] = json.loads(os.environ.get("BENCH_WANDB_OPTIONS") or "{}")
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
if BODY not in ("ddp", "light"):
    raise ValueError(f"BENCH_BODY={BODY!r}: expected 'ddp' or 'light'")


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


def _log_probe(run: Any, calls: int) -> dict[str, Any] | None:
    """Time `calls` `run.log` calls one by one; the median and worst in µs of those made while the run was opening.

    The dict is built outside the timed span; only the call itself is timed.
    """
    if run is None or calls <= 0:
        return None
    queued_ns = []
    for i in range(calls):
        row = {f"probe{k}": i * (k + 1) for k in range(10)}  # 10 scalars, as each step logs
        opening = not getattr(run, "is_open", True)  # a wandb.Run (blocking start, upstream) is always open
        start = time.perf_counter_ns()
        run.log(row)
        elapsed = time.perf_counter_ns() - start
        if opening and not getattr(run, "is_open", True):
            queued_ns.append(elapsed)
    if not queued_ns:
        return {"calls": calls, "queued": 0}
    return {
        "calls": calls,
        "queued": len(queued_ns),
        "median_us": statistics.median(queued_ns) / 1000,
        "max_us": max(queued_ns) / 1000,
    }


def _ddp_steps(run: Any, steps: int) -> tuple[int, float, list[float], float]:
    """`steps` DDP steps of a Linear(64, 64) on random batches; (rank, first step time, step durations, loss)."""
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
    finally:
        dist.destroy_process_group()
    return rank, t_first_step, durations, loss_value


def _light_steps(run: Any, steps: int) -> tuple[int, float, list[float], float]:
    """`steps` steps of one tiny matmul each, no process group; the same results as `_ddp_steps`."""
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(rank)
    weights = torch.randn(16, 16)
    durations = []
    t_first_step = time.time()
    value = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        value = (weights @ weights).tanh().mean().item()
        if run is not None:
            run.log({f"m{i}": value * (i + 1) for i in range(10)})
        durations.append(time.perf_counter() - start)
    return rank, t_first_step, durations, value


def train(steps: int = 300, warmup: int = 10) -> float:
    """`steps` training steps (BENCH_BODY); logs 10 scalars per step where this rank has a run."""
    t_enter = time.time()
    run = get_run()
    probe = _log_probe(run, LOG_PROBE_CALLS)
    rank, t_first_step, durations, value = (_ddp_steps if BODY == "ddp" else _light_steps)(run, steps)
    t_last_step = time.time()
    timed = durations[warmup:] or durations
    facts = {
        "rank": rank,
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "node": int(os.environ.get("GROUP_RANK", "0")),
        "has_run": run is not None,
        "process_start": psutil.Process().create_time(),
        "t_enter": t_enter,
        "t_first_step": t_first_step,
        "t_last_step": t_last_step,
        "step_s": sum(timed) / len(timed),
        "steps": steps,
        "log_probe": probe,
    }
    Path(os.environ["BENCH_RANK_DIR"], f"rank-{rank}.json").write_text(json.dumps({**facts, "t_return": time.time()}))
    return value


def _upstream_kwargs() -> dict[str, Any]:
    """`wandb.init` arguments for upstream's `@wandb_init` from BENCH_WANDB_OPTIONS.

    The mode is always explicit: upstream's shared mode, and its one-process (1 x 1) path, set
    `Settings(mode="shared")`, which overrides WANDB_MODE=offline and then fails for want of an API key.
    """
    settings = {"base_url": WANDB_OPTIONS.get("host"), "init_timeout": WANDB_OPTIONS.get("init_timeout")}
    kwargs: dict[str, Any] = {"mode": WANDB_OPTIONS.get("mode") or os.environ.get("WANDB_MODE") or "offline"}
    if any(v is not None for v in settings.values()):
        kwargs["settings"] = {k: v for k, v in settings.items() if v is not None}
    return kwargs


if VARIANT == "ours":
    env = flyte.TaskEnvironment(
        name="bench_env",
        plugin_config=WandbElastic(**ELASTIC, project=PROJECT, run_mode=RUN_MODE, **WANDB_OPTIONS),
    )
    train_task = env.task(train)
elif VARIANT == "upstream":
    env = flyte.TaskEnvironment(name="bench_env", plugin_config=Elastic(**ELASTIC))
    train_task = upstream_wandb_init(run_mode=RUN_MODE, project=PROJECT, **_upstream_kwargs())(env.task(train))
else:
    env = flyte.TaskEnvironment(name="bench_env", plugin_config=Elastic(**ELASTIC))
    train_task = env.task(train)
