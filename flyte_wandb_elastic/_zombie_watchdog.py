"""A zombie watchdog for the launching process that never fails a job whose ranks all succeeded.

`flyteplugins-pytorch` runs a watchdog beside torch elastic's agent: every 10 s it counts the
launching process's children that have exited but were not collected (zombies), and once there
are `nproc_per_node` of them it takes the agent for deadlocked (torch's agent can hang in
`multiprocessing.Event.set()` when every worker died at once) and ends the process with exit code
1. But a healthy agent also leaves its workers uncollected for a moment: it releases them all at
once when the last returns, and collects them as they exit, so on a busy node they are all
zombies together for tens of milliseconds. A check that falls in that moment fails a job whose
ranks have all returned.

This watchdog counts the same way, then looks again `confirm_s` later: a deadlocked agent never
collects its zombies, a healthy one has. It ends the process only if the same zombies are still
there. `WandbElasticTask` runs it in place of the plugin's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ._procfs import children

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 10.0
CONFIRM_S = 1.0


def zombie_children() -> set[int]:
    """This process's children that have exited and not been collected."""
    return {pid for pid, state in children().items() if state == "Z"}


def start_zombie_watchdog(
    nproc: int, check_interval: float = CHECK_INTERVAL_S, confirm_s: float = CONFIRM_S
) -> threading.Event:
    """Start the watchdog (a daemon thread); set the returned event to stop it.

    The same signature as the plugin's `_start_zombie_watchdog`, whose place it takes.
    """
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(check_interval):
            zombies = zombie_children()
            if len(zombies) < nproc or stop.wait(confirm_s):
                continue
            still = zombies & zombie_children()
            if len(still) >= nproc:
                logger.error(
                    "%d worker processes stayed uncollected for %g s (pids %s): torch elastic's agent "
                    "is deadlocked; ending the process",
                    len(still),
                    confirm_s,
                    sorted(still),
                )
                os._exit(1)

    threading.Thread(target=watch, name="flyte-wandb-elastic-zombie-watchdog", daemon=True).start()
    return stop


@contextmanager
def in_place_of_the_plugins() -> Iterator[None]:
    """Within the block, the pytorch plugin's task starts this watchdog instead of its own."""
    from flyteplugins.pytorch import task as pytorch_task  # torch: only where the plugin runs anyway

    original = getattr(pytorch_task, "_start_zombie_watchdog", None)
    if original is None or original is start_zombie_watchdog:  # none to replace, or replaced already
        yield
        return
    pytorch_task._start_zombie_watchdog = start_zombie_watchdog
    try:
        yield
    finally:
        pytorch_task._start_zombie_watchdog = original
