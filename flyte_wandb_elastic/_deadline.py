"""Bounding the end of a job: how the time a rank may take to end is split, and waiting no longer.

A rank's end takes at most `finish_timeout` seconds (default 60), whatever the W&B server does,
counted from when it begins: once every rank of the job has returned (`_job_end`), or at once
where the rank fails or is stopped. The shares below count from that moment:

- a run still opening then (a server lost before or during `wandb.init`) is open, or its
  `wandb.init` has failed, by `INIT_SHARE` of it (`init_timeout`'s default counts from the start
  of `wandb.init`, before the return); the offline fallback then opens in a fresh service and takes
  the queued rows before `FINISH_SHARE`. A run still waiting for its creation slot (see
  `_rank_run.CreationSlot`) opens online only where the slot leaves time for that before
  `INIT_SHARE`, else offline at once;
- checkpoints the rank logged (`log_checkpoint`, `use_checkpoint`) reach the run's calls by
  `FINISH_SHARE - WANDB_SHARE` of it, so that W&B keeps its whole share, else are left out (warned);
- W&B gets `WANDB_SHARE` of it to upload what is left (`wandb.Settings.finish_timeout`: past it,
  wandb-core stops trying and the rest stays in the run files);
- the finish call itself is abandoned at `FINISH_SHARE` of it, should wandb not keep its own bound
  (or the fallback not open in time): the run is given up, nothing reopens it, and the exit does
  not wait for its service;
- the last copy of the run files to storage must be done by `COPY_SHARE` of it;
- the report tab's last write (rank 0 of a task with `report=True`) waits for the other ranks'
  last copies until `REPORT_SHARE` of it;
- the rest is for the processes to exit: a node's launcher gives its W&B service `SERVICE_SHARE`
  of it to stop (Elastic), once its ranks have ended.

W&B's bound is a plain timeout: it cannot tell a server that is slowly taking a large upload from
one that is gone, so an upload still going at that point is cut too. Nothing is lost: the copy in
storage holds every row, and `sync` sends it.

Process: wherever something must not wait for ever (a rank's process, a node's launcher).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

DEFAULT_FINISH_TIMEOUT_S = 60.0
INIT_SHARE = 0.4
WANDB_SHARE = 0.5
FINISH_SHARE = 0.65
COPY_SHARE = 0.8
REPORT_SHARE = 0.85
SERVICE_SHARE = 0.15


def run_within(func: Callable[[], object], timeout_s: float, name: str) -> bool:
    """Run `func` in a daemon thread and wait at most `timeout_s` for it; whether it returned.

    An exception in `func` counts as returned (it is raised again here). A call that is still
    running when the time is up goes on in its thread, and the process may end under it.
    """
    done = threading.Event()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            func()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=call, name=name, daemon=True).start()
    if not done.wait(max(0.0, timeout_s)):
        return False
    if errors:
        raise errors[0]
    return True
