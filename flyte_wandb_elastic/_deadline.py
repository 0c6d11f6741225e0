"""Bounding the end of a job: how the time a rank may take to end is split, and waiting no longer.

A rank's end, once its run is open and its function has returned, takes at most `finish_timeout`
seconds (default 60), whatever the W&B server does:

- W&B gets `WANDB_SHARE` of it to upload what is left (`wandb.Settings.finish_timeout`: past it,
  wandb-core stops trying and the rest stays in the run files);
- the finish call itself is abandoned at `FINISH_SHARE` of it, should wandb not keep its own bound;
- the last copy of the run files to storage gets the rest.

Process: wherever something must not wait for ever (a rank's process, a node's launcher).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

DEFAULT_FINISH_TIMEOUT_S = 60.0
WANDB_SHARE = 0.6
FINISH_SHARE = 0.8


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
