"""Tasks launched by the tests. Importable, because torch elastic workers unpickle them."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import flyte
import torch
import torch.distributed as dist

from flyte_wandb_elastic import WandbElastic, get_distributed_info, get_wandb_run

FAST_ELASTIC: dict[str, Any] = {
    "max_restarts": 0,
    "monitor_interval": 0.1,  # torch's own default (torchrun's too): a rank's exit is seen at once
    "rdzv_configs": {"timeout": 60, "join_timeout": 60},
}


def train(
    steps: int = 3,
    fail_rank: int = -1,
    fail_step: int = -1,
    sleep_rank: int = -1,
    sleep_s: float = 0.0,
    extra_metrics: int = 0,
    via_globals: bool = False,
) -> float:
    """A tiny DDP-style job: all-reduce a value each step and log it where this rank has a run.

    `fail_rank` raises after the loop, or at the start of step `fail_step` when given (its peers
    then block in that step's all-reduce). `sleep_rank` sleeps `sleep_s` at the start of step 1.
    Each row holds `loss`, `reduced`, `rank` and `extra_metrics` more scalars. With `via_globals`
    the rows go through `wandb.log`, as upstream-style code writes them.
    """
    info = get_distributed_info()
    if info is not None:
        dist.init_process_group("gloo")
    rank = info["rank"] if info else 0
    run = get_wandb_run()
    if via_globals:
        import wandb  # upstream-style code imports wandb itself; its globals are this rank's run

    # W&B's own page for an online run (waits for the run to open, as any use of `run.url` does)
    urls = {"url": run.url} if run is not None and not run.offline else {}
    _record_facts(rank, run, info, **urls)
    total = torch.tensor([0.0])
    try:
        for step in range(steps):
            if rank == fail_rank and step == fail_step:
                raise ValueError(f"rank {rank} failed on purpose at step {step}")
            if rank == sleep_rank and step == 1:
                time.sleep(sleep_s)
            value = torch.tensor([float(rank + step)])
            if info is not None:
                dist.all_reduce(value)
            total += value
            if run is not None:
                row = {"loss": 1.0 / (step + 1), "reduced": value.item(), "rank": rank}
                row.update({f"m{i}": step * i for i in range(extra_metrics)})
                if via_globals:
                    wandb.log(row)
                else:
                    run.log(row)
        if rank == fail_rank and fail_step < 0:
            raise ValueError(f"rank {rank} failed on purpose")
    finally:
        if info is not None:
            dist.destroy_process_group()
    return total.item()


def flaky(steps: int = 3, fail_rank: int = 1, fail_after_s: float = 2.0, ckpt_dir: str = "") -> int:
    """Log `steps` rows; `fail_rank` then fails on the job's first start (not after a torch elastic
    or JobSet restart; no process group is formed),
    `fail_after_s` later, so that the other ranks have logged their rows by then.

    With `ckpt_dir`, every rank writes its shard `rank-<r>.bin` there on the first start and calls
    `log_checkpoint(ckpt_dir)` (once every shard is written); a later start reads its shard and
    calls `use_checkpoint(ckpt_dir)`.

    Returns the torch elastic restart count it finished in.
    """
    from flyte_wandb_elastic import log_checkpoint, use_checkpoint

    info = get_distributed_info()
    rank, world = (info["rank"], info["world_size"]) if info else (0, 1)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    run = get_wandb_run()
    for step in range(steps):
        if run is not None:
            run.log({"row": step, "restart": restart, "rank": rank})
    first_start = restart == 0 and os.environ.get("JOBSET_RESTART_ATTEMPT", "0") == "0"
    if ckpt_dir:
        shards = [Path(ckpt_dir, f"rank-{r}.bin") for r in range(world)]
        if first_start:
            shards[rank].parent.mkdir(parents=True, exist_ok=True)
            shards[rank].write_text(f"shard {rank}")
            _wait_for(lambda: all(shard.exists() for shard in shards))
            log_checkpoint(ckpt_dir)
        else:
            assert shards[rank].read_text() == f"shard {rank}"
            use_checkpoint(ckpt_dir)
    if rank == fail_rank and first_start:
        time.sleep(fail_after_s)
        raise ValueError(f"rank {rank} fails on the first attempt")
    return restart


def burst(rows: int = 200, first_step: int = 100, pause_s: float = 0.0, user_init: bool = False) -> int:
    """Log `rows` rows at once from the first line, with explicit steps from `first_step`, then
    sleep `pause_s`; record whether the run was open when the function started, and when it returned.
    With `user_init`, then call `wandb.init()` as code of its own would, log one more row through
    what it returns, and record that run's id and whether the rank's run was open at the call.
    """
    info = get_distributed_info()
    rank = info["rank"] if info else 0
    run = get_wandb_run()
    opened_at_start = getattr(run, "is_open", True) if run is not None else None
    more: dict[str, Any] = {}
    if run is not None:
        run.define_metric("value", summary="max")
        for i in range(rows):
            run.log({"value": i, "rank": rank}, step=first_step + i)
        if user_init:
            import wandb

            more["opened_at_init"] = run.is_open
            own = wandb.init(project="p")
            own.log({"value": rows, "rank": rank}, step=first_step + rows)
            more["user_init_id"] = own.id
    time.sleep(pause_s)
    _record_facts(rank, run, info, opened_at_start=opened_at_start, returned_at=time.time(), **more)
    return rows


def paced(steps: int = 40, interval_s: float = 0.1, wait_open: bool = True, diverge: bool = False) -> int:
    """Log `steps` rows `interval_s` apart; after each, note its step and wall time in the facts
    directory (one `step time` line per row in `rank-<r>.steps`), so a test knows when each row was
    logged. With `wait_open`, waits for the run to open first (reading W&B's page for it, recorded
    in the facts); else the rows are queued until it opens. Records the facts at the end.
    With `diverge`, each row also holds a `loss` that is not finite where `diverging_loss` says.
    """
    info = get_distributed_info()
    rank = info["rank"] if info else 0
    run = get_wandb_run()
    # W&B's own page for the run (waits for the run to open, as any use of `run.url` does)
    urls = {}
    if run is not None and wait_open and not run.offline:
        urls = {"url": run.url, "project_url": run.project_url}
    for step in range(steps):
        row: dict[str, float] = {"row": step, "rank": rank}
        if diverge:
            row["loss"] = diverging_loss(rank, step, steps)
        _log_row(run, rank, step, row)
        time.sleep(interval_s)
    _record_facts(rank, run, info, **urls, returned_at=time.time())
    return steps


NAN, INF = float("nan"), float("inf")


def diverging_loss(rank: int, step: int, steps: int) -> float:
    """A loss that rank 1 sees go NaN at steps 10-11 and at its last step and +inf at step 20, and
    rank 3 sees go -inf at step 15; finite everywhere else."""
    if rank == 1 and step in (10, 11, steps - 1):
        return NAN
    if rank == 1 and step == 20:
        return INF
    if rank == 3 and step == 15:
        return -INF
    return 1.0 / (step + 1) + rank / 100


def load(
    rows: int = 2000,
    interval_s: float = 0.002,
    reduce_every: int = 0,
    raise_rank: int = -1,
    raise_at: float = -1.0,
    hold_s: float = 0.0,
) -> int:
    """The fault-injection load: log `rows` rows, one every `interval_s`, noting each as `paced` does.

    Each rank writes its pid first (`rank-<r>.pid`). With `reduce_every`, ranks all-reduce every
    that many rows (gloo), as training does. `raise_rank` raises `raise_at` seconds into the loop, on the job's
    first start only (not after a restart), so a restarted job can succeed. With `hold_s`, the
    other ranks of that first start then wait up to that long before returning, as ranks blocked
    in the next collective with the failed one would (without a collective, they would finish,
    and torch elastic cannot restart a node whose ranks have all finished).
    """
    info = get_distributed_info()
    rank = info["rank"] if info else 0
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    facts_dir = os.environ.get("TEST_FACTS_DIR")
    if facts_dir:
        Path(facts_dir, f"rank-{rank}.pid").write_text(str(os.getpid()))
    if info is not None and reduce_every:
        dist.init_process_group("gloo")
    run = get_wandb_run()
    # A start after the raise is not the first, whatever the restart counts say (torch elastic's
    # agent of a node whose ranks did not fail restarts them without counting a restart).
    raised = Path(facts_dir, "raised") if facts_dir else None
    first_start = restart == 0 and os.environ.get("JOBSET_RESTART_ATTEMPT", "0") == "0"
    first_start = first_start and not (raised is not None and raised.exists())
    started = time.monotonic()
    try:
        for row in range(rows):
            if rank == raise_rank and 0 <= raise_at <= time.monotonic() - started and first_start:
                if raised is not None:
                    raised.touch()
                raise ValueError(f"rank {rank} raises at row {row}")
            if reduce_every and info is not None and row % reduce_every == 0:
                dist.all_reduce(torch.tensor([1.0]))
            _log_row(run, rank, row, {"row": row, "rank": rank, "restart": restart})
            # at a fixed rate, as training steps go: ranks that log no faster than those that log
            time.sleep(max(0.0, started + (row + 1) * interval_s - time.monotonic()))
    finally:
        if reduce_every and info is not None:
            dist.destroy_process_group()
    if raise_rank >= 0 and first_start:
        time.sleep(hold_s)  # torch elastic stops this rank meanwhile, once it sees the failure
    _record_facts(rank, run, info, returned_at=time.time())
    return rows


def checkpointed(ckpt_uri: str, steps: int = 3, fail_rank: int = 1, fail_after_s: float = 2.0) -> int:
    """A job that checkpoints to object storage and resumes from it, then fails on every start.

    Each rank writes its shard `rank-<r>.bin` under `ckpt_uri` (an `s3://` prefix, reached with
    boto3 at `AWS_S3_ENDPOINT_URL`) on the first start, and the job's checkpoint (both shards) is
    logged with `log_checkpoint`; a later start finds the shards, reads its own and says so with
    `use_checkpoint`. `fail_rank` raises `fail_after_s` after each start's checkpoint work.

    Returns the torch elastic restart count (never reached while `fail_rank` is a rank of the job).
    """
    import boto3

    from flyte_wandb_elastic import log_checkpoint, use_checkpoint

    info = get_distributed_info()
    rank, world = (info["rank"], info["world_size"]) if info else (0, 1)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    bucket, _, prefix = ckpt_uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_S3_ENDPOINT_URL"])
    shards = [f"{prefix.rstrip('/')}/rank-{r}.bin" for r in range(world)]
    run = get_wandb_run()
    for step in range(steps):
        if run is not None:
            run.log({"row": step, "restart": restart, "rank": rank})
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    if len(listed) == world:  # a checkpoint of an earlier start: load this rank's shard
        assert s3.get_object(Bucket=bucket, Key=shards[rank])["Body"].read() == f"shard {rank}".encode()
        use_checkpoint(ckpt_uri)
    else:
        s3.put_object(Bucket=bucket, Key=shards[rank], Body=f"shard {rank}".encode())
        _wait_for(lambda: len(s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])) == world)
        log_checkpoint(ckpt_uri, aliases=("latest", f"restart-{restart}"))
    if rank == fail_rank:
        time.sleep(fail_after_s)
        raise ValueError(f"rank {rank} fails after its checkpoint work (restart {restart})")
    return restart


def _wait_for(done: Any, timeout_s: float = 30.0) -> None:
    """Wait until `done()` (the other ranks' part of a checkpoint is written, say)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the other ranks' shards were not written")
        time.sleep(0.1)


def _log_row(run: Any, rank: int, row: int, data: dict[str, Any]) -> None:
    """Log `data` where this rank has a run, and note the row and when in `rank-<r>.steps`."""
    if run is None:
        return
    run.log(data)
    facts_dir = os.environ.get("TEST_FACTS_DIR")
    if facts_dir:
        with open(Path(facts_dir, f"rank-{rank}.steps"), "a") as steps:
            steps.write(f"{row} {time.time()}\n")


def _record_facts(rank: int, run: Any, info: dict[str, Any] | None, **more: Any) -> None:
    facts_dir = os.environ.get("TEST_FACTS_DIR")
    if not facts_dir:
        return
    facts = {
        "rank": rank,
        "pid": os.getpid(),
        "run_id": run.id if run is not None else None,
        # W&B's global run, read without importing wandb where this rank has not
        "global_run_id": getattr(getattr(sys.modules.get("wandb"), "run", None), "id", None),
        "info": info,
        "wandb_imported": "wandb" in sys.modules,
        **more,
    }
    Path(facts_dir, f"rank-{rank}.json").write_text(json.dumps(facts))


def make_env(**config: Any) -> flyte.TaskEnvironment:
    """An environment whose tasks run on `WandbElastic(**config)` with fast test settings."""
    return flyte.TaskEnvironment(
        name="train_env",
        plugin_config=WandbElastic(**{**FAST_ELASTIC, **config}),
    )


def make_task(function: str = "train", report: bool = False, **config: Any) -> Any:
    """The task for `function` (`train`, `flaky`, `burst`, `paced`, `load` or `checkpointed`) on an
    environment built from `config`, declared with Flyte's `report` flag."""
    functions = {
        "train": train,
        "flaky": flaky,
        "burst": burst,
        "paced": paced,
        "load": load,
        "checkpointed": checkpointed,
    }
    return make_env(**config).task(functions[function], report=report)
