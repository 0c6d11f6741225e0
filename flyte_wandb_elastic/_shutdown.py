"""Finishing a rank's run when torch elastic stops the rank.

When one rank fails, torch elastic sends SIGTERM to the others and kills them after a grace
period. Python's default SIGTERM action ends the process at once, leaving the run unfinished
(no exit record, and rows not yet flushed). Here SIGTERM instead raises `Stopped` in the rank's
main thread, so the post-execute hook finishes the run as failed. A rank blocked in a collective
runs no Python code until the collective returns; for that case a watcher thread, woken by the
signal itself, finishes the run after a short wait and ends the process.

Process: everything here runs in a worker process that owns a run, from its main thread.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# How long the watcher lets the main thread finish the run itself before doing it.
BLOCKED_GRACE_S = 3.0
STOP_EXIT_CODE = 128 + signal.SIGTERM


class Stopped(BaseException):
    """The rank was stopped by SIGTERM (torch elastic stopping the job, or the pod ending)."""

    def __init__(self) -> None:
        super().__init__("stopped by SIGTERM (another rank failed, or the job was stopped)")


class FinishOnce:
    """Calls `finish(exit_code, error)` at most once, from whichever thread gets there first."""

    def __init__(self, finish: Callable[[int, str | None], None]) -> None:
        self._finish = finish
        self._lock = threading.Lock()
        self._done = False

    def __call__(self, exit_code: int, error: str | None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            self._finish(exit_code, error)


@contextmanager
def finish_on_stop(
    finish: FinishOnce, interrupt: bool = True, on_stopped: Callable[[], None] | None = None
) -> Iterator[Callable[[], None]]:
    """While active, SIGTERM finishes the run through `finish` (see the module docstring).

    With `interrupt=False` (the function runs in another thread, as in a clustered task's `a0`,
    where the main thread only runs the event loop), SIGTERM raises nothing: the watcher finishes
    the run as stopped at once and ends the process, calling `on_stopped` just before.

    Yields a callable to call when the run is being finished anyway: a SIGTERM that arrives after
    it waits until the run is finished (torch elastic would otherwise cut the finish short and the
    run's last rows would be lost), and is delivered again when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    finishing = threading.Event()
    deferred = threading.Event()

    def on_sigterm(signum: int, frame: Any) -> None:
        if finishing.is_set():
            deferred.set()
            return
        if interrupt:
            raise Stopped()

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    leaving = threading.Event()

    def watch() -> None:
        while True:
            try:
                data = os.read(read_fd, 16)
            except OSError:
                return
            if not data or leaving.is_set():
                return
            if signal.SIGTERM in data and not leaving.wait(BLOCKED_GRACE_S if interrupt else 0):
                # The main thread is stuck in native code: finish from here and end the process.
                finish(STOP_EXIT_CODE, str(Stopped()))
                if on_stopped is not None:
                    try:
                        on_stopped()
                    finally:
                        os._exit(STOP_EXIT_CODE)
                os._exit(STOP_EXIT_CODE)

    watcher = threading.Thread(target=watch, name="flyte-wandb-elastic-stop", daemon=True)
    watcher.start()
    try:
        yield finishing.set
    finally:
        leaving.set()
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous_handler)
        os.close(write_fd)  # wakes the watcher with end-of-file
        watcher.join(timeout=1.0)
        os.close(read_fd)
        if deferred.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
