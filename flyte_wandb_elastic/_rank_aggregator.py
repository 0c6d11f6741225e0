"""The thread that logs the cross-rank aggregates of each metric into global rank 0's run
(`rank_runs="offline"`).

Every `persist_interval` it reads, incrementally, the copies of every rank's run in storage
(`_stored_runs.StoredRuns`, as the report tab does: a refresh costs what changed), and, when any
rank logged a row since the last time, logs one row of `ranks/*` aggregates (`_rank_aggregates`)
into the run: with `commit=False`, so that it joins the run's next row and never moves its `_step`
(W&B drops rows whose `_step` goes back), and numbered by its own step metric, `ranks/step`, which
W&B charts the aggregates against. The aggregates are so about one interval behind the ranks.
Training never waits for it: it runs in a thread of its own at a lower priority, pacing its
parsing as the report does; a storage that fails or hangs costs a warning and the next interval
tries again.

Process: global rank 0's worker process, in a thread of its own (and briefly at its end). No other
process reads storage for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from ._deadline import run_within
from ._rank_aggregates import PREFIX, STEP, aggregate
from ._rank_run import lower_this_threads_priority
from ._report import REFRESH_SHARE
from ._stored_runs import StoredRuns

logger = logging.getLogger("flyte_wandb_elastic")

# The most the end of rank 0 waits for its peers' last copies before its last row of aggregates:
# this, or this share of `finish_timeout` if less (taken from the time the run's finish may take).
END_WAIT_S = 5.0
END_SHARE = 0.1


class RankAggregator:
    """Logs the aggregates of the copies under `prefix` into `run` every `interval_s` seconds.

    Args:
        run: The primary's run (a `RankRun`: its calls are queued while it opens).
        prefix: The storage prefix under which every rank's copies lie (`.../wandb/<action>`).
        interval_s: Seconds between two rows of aggregates.
        peers: The other ranks of the job, whose ends the last row waits for.
    """

    def __init__(self, run: Any, prefix: str, interval_s: float, peers: frozenset[int] = frozenset()) -> None:
        self.run = run
        self.peers = peers
        self.prefix = prefix
        self.interval_s = interval_s
        self.stored = StoredRuns(prefix, share=REFRESH_SHARE)
        self.logged = 0  # rows of aggregates logged: the next one's `ranks/step`
        self._seen: dict[int, tuple[int, int]] = {}  # each rank's (starts, rows) when last aggregated
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._warned = False

    def start(self) -> None:
        """Log a row of aggregates every `interval_s` seconds, from a thread of its own."""

        def loop() -> None:
            lower_this_threads_priority(lowest=True)
            while not self._stop.wait(self.interval_s):
                self.log_once()

        threading.Thread(target=loop, name="flyte-wandb-elastic-rank-aggregates", daemon=True).start()

    def log_once(self) -> bool:
        """Read what the ranks copied since the last time and log its aggregates; whether a row was logged."""
        with self._lock:
            try:
                self.stored.refresh()
            except Exception as exc:  # storage down: the next interval tries again
                self._warn_once(f"could not read the stored run files ({type(exc).__name__}: {exc})")
                return False
            writers = self.stored.writers
            seen = {rank: (w.starts, w.rows) for rank, w in writers.items()}
            if seen == self._seen:
                return False  # no rank logged since the last row
            self._seen = seen
            row = aggregate({rank: writer.metrics for rank, writer in writers.items()})
            if not row:
                return False
            try:
                if self.logged == 0:
                    self.run.define_metric(STEP)
                    self.run.define_metric(f"{PREFIX}*", step_metric=STEP)
                values = {**row, STEP: self.logged}
                self.run.when_open(lambda run: run.log(values, commit=False))
            except Exception as exc:  # the run failed to open, or its service is gone
                self._warn_once(f"could not log into the run ({type(exc).__name__}: {exc})")
                return False
            self.logged += 1
            return True

    def finish(self, timeout_s: float, stopped: bool) -> None:
        """Stop the thread and log a last row (before the run finishes): once every peer's end is in
        storage, or `timeout_s` has passed (at once where this rank failed or was stopped)."""
        self._stop.set()
        self.stored.share = 1.0  # the rank's function has returned: nothing to make room for
        deadline = time.monotonic() + max(0.0, timeout_s)

        def ended() -> bool:
            return all((w := self.stored.writers.get(r)) is not None and w.exit_code is not None for r in self.peers)

        def last_row() -> None:
            while not stopped and time.monotonic() < deadline:
                with self._lock, contextlib.suppress(Exception):  # the last `log_once` warns
                    self.stored.refresh()
                if ended():
                    break
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            self.log_once()

        # storage that hangs must not hold the end of the rank
        if not run_within(last_row, max(0.1, timeout_s), "flyte-wandb-elastic-rank-aggregates-end"):
            self._warn_once(f"the stored run files could not be read within {timeout_s:.1f} s")

    def _warn_once(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("W&B rank aggregates: %s; trying again at the next interval", why)
