"""This rank's run, opened in the background: training never waits for W&B.

`RankRun` starts opening the run in a thread of its own (importing wandb, joining the node's W&B
service, `wandb.init`, and the offline fallback) and answers the training thread at once:

- what the plan already knows (`id`, `group`, `project`, `entity`, `name`) without waiting;
- `log` and `define_metric` are queued, in order, with the steps as given, and written as soon as
  the run is open (to the offline fallback, if that is what opened); each queued `log` is also
  kept in a file that outlives the process (`_queued`), until the run holds it;
- `when_open(call)` (the checkpoint helpers' W&B calls) is queued with them, in order;
- anything else waits for the run, then goes to it.

If the rank's W&B service (`wandb-core`) dies under a live run (killed, out of memory), training
goes on: calls are queued again while the run is reopened in a fresh service of this rank's own,
as a restart reopens it (from the step after the last row on disk). The calls the dead service
took but never wrote to the run file (up to one transaction-log flush interval) are written again
first, where that can be told exactly: when every `log` since the run opened was a plain
`log(data)` (one row each, no explicit `step` or `commit`).

Run creations are paced: the run opens no earlier than the rank's creation slot (see
`CreationSlot`), so that the job asks W&B for at most `max_run_creations_per_s` of them a second.

Process: a rank's own process. The thread that opens the run is the only one that imports wandb
here; the training thread never does unless the user's code does. (With `blocking_init=True`, the
training thread opens the run itself, and so waits for the slot.)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._queued import QueuedCalls

logger = logging.getLogger("flyte_wandb_elastic")

# The most `log` calls kept to write again into a run reopened after its service died.
REPLAY_CALLS = 100_000
# The most times a run is reopened after its service died.
MAX_REOPENS = 3
# How much lower than training the threads (and the W&B services they start) that open runs run.
NICE_INCREMENT = 10
# Less time than this left for `wandb.init` online, once the rank's end has begun: the run opens
# offline at once instead (a start so short would most likely be cut, then fall back anyway).
MIN_ONLINE_INIT_S = 2.0


def lower_this_threads_priority(lowest: bool = False) -> None:
    """Make the calling thread yield the CPU to training where the two compete (Linux; else nothing).

    On Linux a thread has a nice value of its own, and the processes it starts (a W&B service)
    inherit it: W&B's start-up work then runs in the gaps that training leaves, not in its place.
    With `lowest`, the lowest priority there is (nice 19), for work that only shows what storage
    holds (the report's tab, the ranks' aggregates); the storage client's threads follow the
    calling thread down (`_storage`).
    """
    try:
        tid = threading.get_native_id()
        lowered = 19 if lowest else min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICE_INCREMENT)
        os.setpriority(os.PRIO_PROCESS, tid, lowered)
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


def service_lost(error: BaseException) -> bool:
    """Whether `error` says this process lost its W&B service (`wandb-core` gone), not a bad call."""
    lost = ("MailboxClosedError", "HandleAbandonedError", "WandbServiceConnectionError")
    return isinstance(error, OSError) or type(error).__name__ in lost


class GivenUp(Exception):
    """The rank's end gave its run up before the run's creation slot came."""


class CreationSlot:
    """How long this rank's `wandb.init` online waits, and how long the call may take then.

    Every rank that opens a run has a creation slot (`_planner.creation_slot`): its `wandb.init`
    waits that long, counted from when the rank is ready to call it (wandb imported, the node's W&B
    service joined: about the same moment for every rank of a job), so that the job creates at
    most `max_run_creations_per_s` runs a second. Training goes on meanwhile (its calls are
    queued, and kept in a file). Once the rank's end has begun (`end_began`, at the return of its
    function), the run must be open within `open_within_s`: a slot that comes too late for that
    leaves the run to open offline at once, and one that comes in time gives `wandb.init` only
    what is left.

    Args:
        delay_s: The slot, in seconds.
        open_within_s: Seconds from the start of the rank's end by which its run must be open
            (online, or else its offline fallback begun).
    """

    def __init__(self, delay_s: float = 0.0, open_within_s: float = float("inf")) -> None:
        self.delay_s = max(0.0, delay_s)
        self.at: float | None = None  # when the slot comes (`time.monotonic()`), from the first `wait`
        self._open_within_s = open_within_s
        self._end_by: float | None = None
        self._given_up = False
        self._changed = threading.Event()

    def end_began(self) -> None:
        """The rank's end has begun: its run must be open within `open_within_s` from now."""
        if self._end_by is None:
            self._end_by = time.monotonic() + self._open_within_s
        self._changed.set()

    def give_up(self) -> None:
        """The rank's end gave its run up: a wait for the slot ends with `GivenUp`."""
        self._given_up = True
        self._changed.set()

    def wait(self) -> float | None:
        """Wait for the slot (or until the rank's end shows that it comes too late).

        Returns:
            `None` once the slot has come before the rank's end began (`wandb.init` takes as long
            as its `init_timeout` allows, from now), else the seconds `wandb.init` may take from
            now, 0 where the run must open offline at once.

        Raises:
            GivenUp: The rank's end gave the run up meanwhile.
        """
        if self.at is None:
            self.at = time.monotonic() + self.delay_s
        while True:
            if self._given_up:
                raise GivenUp("the rank's end gave its run up before its creation slot came")
            now = time.monotonic()
            if self._end_by is not None and self._end_by - max(now, self.at) < MIN_ONLINE_INIT_S:
                return 0.0
            if now >= self.at:
                return None if self._end_by is None else self._end_by - now
            self._changed.wait(self.at - now)
            self._changed.clear()


class RankRun:
    """A W&B run that may still be opening; forwards everything to the real run once it is open.

    `start()` opens it in the background; `open()` opens it before returning.

    Args:
        opener: Opens the run and returns the `wandb.Run`; it is given this object, and whether
            this is a reopening after the run's service died (then in a fresh service, resuming).
        known: What is known before W&B answers (`id`, `group`, `project`, `entity`, `name`);
            a `None` value is asked of the run once it is open.
        queued: Where the `log` calls queued before the run first opens are kept meanwhile.
        slot: When the opener may call `wandb.init` online (it waits for `slot.wait()`); told
            when the rank's end begins (`finish_when_open`) and when the end gives the run up.
    """

    def __init__(
        self,
        opener: Callable[[RankRun, bool], Any],
        known: dict[str, Any],
        queued: QueuedCalls | None = None,
        slot: CreationSlot | None = None,
    ) -> None:
        self._opener = opener
        self.queued = queued
        self.slot = slot or CreationSlot()
        self._known = {key: value for key, value in known.items() if value is not None}
        self._lock = threading.Lock()
        self._queue: list[tuple[str, tuple[Any, ...], dict[str, Any]]] | None = []
        self._run: Any = None
        self._error: BaseException | None = None
        self._opened = threading.Event()
        self._reopens = 0
        self._lost = False  # the service died and the run could not be reopened: calls go nowhere
        # what was written to the open run, to write again should its service die
        self._sent: deque[tuple[str, tuple[Any, ...], dict[str, Any]]] = deque(maxlen=REPLAY_CALLS)
        self._sent_rows = 0  # plain `log` calls written since the run opened
        self._plain = True  # every `log` since the run opened was plain
        self._setup: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []  # define_metric calls

    def start(self) -> None:
        """Open the run in a thread of its own, at a lower CPU priority than training."""
        self._in_background(self.open)

    def _in_background(self, target: Callable[[], None]) -> None:
        def run() -> None:
            lower_this_threads_priority()
            target()

        threading.Thread(target=run, name="flyte-wandb-elastic-init", daemon=True).start()

    def open(self, again: bool = False) -> None:
        """Open the run now (`again`: in a fresh service, after its service died), then write every queued call."""
        try:
            run = self._opener(self, again)
        except BaseException as exc:
            with self._lock:
                if self._lost:  # given up while it opened (its service stopped under it)
                    return
                dropped, self._queue = len(self._queue or ()), None
                if again:  # a W&B outage never kills training
                    self._lost = True
                else:  # the task ends with it at finish, or at the next call
                    self._error = exc
            if again:
                logger.warning("could not reopen %r (%s); what it logs from now on is not recorded", self, exc)
            elif dropped:
                kept = f"kept for `sync` in {self.queued.where}" if self.queued is not None else "not written"
                logger.error("wandb.init failed (%s); %d queued call(s) were %s", exc, dropped, kept)
            self._opened.set()
            return
        with self._lock:  # new calls wait while the queue is written, so order is kept
            if self._lost:  # given up while it opened
                return
            queue, self._queue = self._queue or [], None
            self._sent.clear()
            self._sent_rows, self._plain, self._setup = 0, True, []
            for i, (name, args, kwargs) in enumerate(queue):
                try:
                    self._write(run, name, args, kwargs)
                except Exception as exc:  # as if the call had failed in the training thread
                    if service_lost(exc) and self._reopen_later(run, queue[i:]):
                        return
                    logger.warning("run.%s(...) queued before the run opened failed: %s", name, exc)
            self._run = run
            # the run holds every call queued so far: say so in their file, then let it go
            queued = self.queued if self.queued is not None and self.queued.is_open else None
            if queued is not None:
                queued.close()
        self._opened.set()
        if queued is not None:
            queued.forget()

    def _write(self, run: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = _apply(run, name, args, kwargs)
        if name == "log":
            self._sent.append((name, args, kwargs))
            self._sent_rows += 1
            self._plain = self._plain and kwargs.get("step") is None and kwargs.get("commit") is None
        elif name == "define_metric":
            self._setup.append((name, args, kwargs))
        return result

    def _reopen_later(self, dead: Any, unwritten: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> bool:
        """With the lock held: queue calls again and reopen the run in the background; whether it will."""
        if self._reopens >= MAX_REOPENS or self._lost:
            return False
        self._reopens += 1
        self._queue, self._run = list(unwritten), None
        self._opened.clear()
        sent, sent_rows, plain, setup = list(self._sent), self._sent_rows, self._plain, list(self._setup)

        def reopen() -> None:
            from . import _wandb_run

            try:
                on_disk = _wandb_run.rows_on_disk(dead)
            except (OSError, ValueError) as exc:  # unreadable: write nothing twice, say so
                logger.warning("could not read what the dead W&B service of %r wrote (%s)", self, exc)
                on_disk = sent_rows
            lost = self._lost_calls(sent, sent_rows - on_disk, plain)
            logger.warning(
                "the W&B service of %r is gone; training goes on while the run is reopened in a fresh one "
                "(%d row(s) it had not written to the run file are written again)",
                self,
                len(lost),
            )
            with self._lock:
                self._queue = [*setup, *lost, *(self._queue or [])]
            self.open(again=True)

        self._in_background(reopen)
        return True

    def _lost_calls(
        self, sent: list[tuple[str, tuple[Any, ...], dict[str, Any]]], missing: int, plain: bool
    ) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        """The last `missing` `log` calls, which the dead service took but did not write, where known."""
        if missing <= 0:
            return []
        if not plain:
            logger.warning(
                "up to %d row(s) of %r may be lost with its W&B service: with explicit steps, the calls "
                "cannot be matched to the rows on disk",
                missing,
                self,
            )
            return []
        if missing > len(sent):
            logger.warning("%d row(s) of %r were lost with its W&B service", missing - len(sent), self)
        return sent[-missing:]

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

    def when_open(self, call: Callable[[Any], None]) -> None:
        """`call(run)` with the `wandb.Run`; queued, in order with `log`, until the run is open."""
        self._call("when_open", (call,), {})

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            if self._lost:
                return None
            if self._queue is not None:
                self._queue.append((name, args, kwargs))
                if name == "log" and self.queued is not None:
                    self.queued.add(args[0], kwargs["step"], kwargs["commit"])
                return None
            run = self._run
            if run is not None:
                try:
                    return self._write(run, name, args, kwargs)
                except Exception as exc:
                    if not service_lost(exc):
                        raise
                    if not self._reopen_later(run, [(name, args, kwargs)]):  # a W&B outage never kills training
                        self._lost = True
                        logger.warning("%r lost its W&B service again; what it logs now is not recorded", self)
                    return None
        run = self.wandb_run()  # opening failed: raises
        return _apply(run, name, args, kwargs)

    def abandon(self) -> int:
        """Give the run up (its end ran out of time): nothing more is written or reopened.

        Returns:
            How many calls were still queued (never written: the run had not opened).
        """
        with self._lock:
            self._lost = True
            dropped, self._queue = len(self._queue or ()), None
        self.slot.give_up()
        self._opened.set()  # nothing waits for it any more
        return dropped

    @property
    def abandoned(self) -> bool:
        """Whether the run was given up: what is logged from now on is not recorded."""
        return self._lost

    def finish_when_open(self, finish: Callable[[Any], None]) -> None:
        """Call `finish(run)` once the run is open and every queued call is written; nothing if it never opened.

        The rank's end begins here: a run still waiting for its creation slot opens within the
        slot's `open_within_s`, online if its slot comes in time, else offline at once.
        """
        self.slot.end_began()
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


def _apply(run: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One call on the open `run`: its method `name`, or, for `when_open`, the callable given."""
    if name == "when_open":
        return args[0](run)
    return getattr(run, name)(*args, **kwargs)
