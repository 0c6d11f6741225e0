"""This rank's run, opened in the background: training never waits for W&B.

`RankRun` starts opening the run in a thread of its own (importing wandb, joining the node's W&B
service, `wandb.init`, and the offline fallback) and answers the training thread at once:

- what the plan already knows (`id`, `group`, `project`, `entity`, `name`) without waiting;
- `log` and `define_metric` are queued, in order, with the steps as given, and written as soon as
  the run is open (to the offline fallback, if that is what opened);
- anything else waits for the run, then goes to it.

Process: a rank's own process. The thread that opens the run is the only one that imports wandb
here; the training thread never does unless the user's code does.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("flyte_wandb_elastic")

# How much lower than training the threads (and the W&B services they start) that open runs run.
NICE_INCREMENT = 10


def lower_this_threads_priority() -> None:
    """Make the calling thread yield the CPU to training where the two compete (Linux; else nothing).

    On Linux a thread has a nice value of its own, and the processes it starts (a W&B service)
    inherit it: W&B's start-up work then runs in the gaps that training leaves, not in its place.
    """
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICE_INCREMENT))
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


def service_lost(error: BaseException) -> bool:
    """Whether `error` says this process lost its W&B service (`wandb-core` gone), not a bad call."""
    lost = ("MailboxClosedError", "HandleAbandonedError", "WandbServiceConnectionError")
    return isinstance(error, OSError) or type(error).__name__ in lost


class RankRun:
    """A W&B run that may still be opening; forwards everything to the real run once it is open.

    `start()` opens it in the background; `open()` opens it before returning.

    Args:
        opener: Opens the run and returns the `wandb.Run`; it is given this object.
        known: What is known before W&B answers (`id`, `group`, `project`, `entity`, `name`);
            a `None` value is asked of the run once it is open.
    """

    def __init__(self, opener: Callable[[RankRun], Any], known: dict[str, Any]) -> None:
        self._opener = opener
        self._known = {key: value for key, value in known.items() if value is not None}
        self._lock = threading.Lock()
        self._queue: list[tuple[str, tuple[Any, ...], dict[str, Any]]] | None = []
        self._run: Any = None
        self._error: BaseException | None = None
        self._opened = threading.Event()
        self._lost = False

    def start(self) -> None:
        """Open the run in a thread of its own, at a lower CPU priority than training."""

        def open_in_background() -> None:
            lower_this_threads_priority()
            self.open()

        threading.Thread(target=open_in_background, name="flyte-wandb-elastic-init", daemon=True).start()

    def open(self) -> None:
        """Open the run now, then write every queued call to it."""
        try:
            run = self._opener(self)
        except BaseException as exc:  # the task ends with it at finish, or at the next call
            self._error = exc
            with self._lock:
                dropped, self._queue = len(self._queue or ()), None
            if dropped:
                logger.error("wandb.init failed (%s); %d queued call(s) were not written", exc, dropped)
            self._opened.set()
            return
        with self._lock:  # new calls wait while the queue is written, so order is kept
            for name, args, kwargs in self._queue or ():
                try:
                    getattr(run, name)(*args, **kwargs)
                except Exception as exc:  # as if the call had failed in the training thread
                    logger.warning("run.%s(...) queued before the run opened failed: %s", name, exc)
            self._queue = None
            self._run = run
        self._opened.set()

    def wandb_run(self) -> Any:
        """The `wandb.Run`, once open (waits for it).

        Raises:
            Exception: Opening the run failed (with `on_init_failure="raise"`).
        """
        self._opened.wait()
        if self._error is not None:
            raise self._error
        return self._run

    def raise_if_failed(self) -> None:
        """Raise the error that opening the run ended with, if it did (waits for the outcome)."""
        self._opened.wait()
        if self._error is not None:
            raise self._error

    @property
    def is_open(self) -> bool:
        """Whether the run is open (or opening it has failed)."""
        return self._opened.is_set()

    def log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        """`wandb.Run.log`; queued (with a shallow copy of `data`) until the run is open."""
        self._call("log", (dict(data),), {"step": step, "commit": commit})

    def define_metric(self, name: str, *args: Any, **kwargs: Any) -> None:
        """`wandb.Run.define_metric`; queued until the run is open."""
        self._call("define_metric", (name, *args), kwargs)

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        run = self._run
        if run is None:
            with self._lock:
                if self._queue is not None:
                    self._queue.append((name, args, kwargs))
                    return None
            run = self.wandb_run()
        try:
            return getattr(run, name)(*args, **kwargs)
        except Exception as exc:
            if not service_lost(exc):
                raise
            if not self._lost:  # a W&B outage never kills training
                self._lost = True
                logger.warning(
                    "this rank's W&B service is gone (%s: %s); training goes on, and what it logs from now on "
                    "is not recorded (the rows written so far are in the run files)",
                    type(exc).__name__,
                    exc,
                )
            return None

    def finish_when_open(self, finish: Callable[[Any], None]) -> None:
        """Call `finish(run)` once the run is open and every queued call is written; nothing if it never opened."""
        self._opened.wait()
        if self._run is not None:
            finish(self._run)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        known = self.__dict__.get("_known", {})
        if name in known:
            return known[name]
        return getattr(self.wandb_run(), name)

    def __repr__(self) -> str:
        state = "open" if self._run is not None else "failed" if self._error else "opening"
        return f"<RankRun {self._known.get('id', '?')} ({state})>"
