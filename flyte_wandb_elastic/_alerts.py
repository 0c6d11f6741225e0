"""The W&B alert a failed job sends from its primary run (global rank 0's run).

Rank 0 composes it at the end of its run, from what it knows then: the first failure any rank of
the job recorded in the job's store (see `_job_end`), which names the rank that failed first even
where torch elastic stopped rank 0 because of it, else rank 0's own error.

Process: global rank 0's worker process, in the end of its run (its main thread, or the thread
that finishes the run when SIGTERM finds the main thread blocked).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ._flyte_console import FlyteAction
from ._job_end import JobEnd
from ._shutdown import STOP_EXIT_CODE
from ._topology import Topology

logger = logging.getLogger("flyte_wandb_elastic")

MAX_TITLE_CHARS = 63
"""W&B's limit on an alert's title (less than 64 characters)."""


@dataclass(frozen=True)
class Alert:
    """One W&B alert: `run.alert(title=..., text=..., level=...)`."""

    title: str
    text: str
    level: str = "ERROR"


@dataclass(frozen=True)
class FailureAlert:
    """What rank 0 needs to tell W&B that its job failed.

    Attributes:
        action: The Flyte action (its console URL where the pod knows the console).
        topology: Rank 0's place in the job.
        last_start: Whether this is the job's last start as rank 0's agent counts them (no torch
            elastic restart left): an earlier start's failure is followed by a restart, not the
            end of the job.
    """

    action: FlyteAction
    topology: Topology
    last_start: bool = True

    @classmethod
    def of(cls, action: FlyteAction, topology: Topology, environ: Mapping[str, str] = os.environ) -> FailureAlert:
        """The alert of rank 0 at `topology` (restarts as torch elastic counts them in `environ`)."""
        max_restarts = int(environ.get("TORCHELASTIC_MAX_RESTARTS") or "0")
        return cls(action, topology, topology.restart_count >= max_restarts)

    def compose(self, exit_code: int, error: str | None) -> Alert | None:
        """The alert for a run that ends with `exit_code`, or `None` where none is due.

        None is due for a success, a start that torch elastic will restart, and a rank stopped
        from outside with no failure recorded by any rank (the job was cancelled or its pod
        deleted: not a failure of the job's own).
        """
        if exit_code == 0 or not self.last_start:
            return None
        # a connection of its own: the rank's may be inside a wait in the main thread
        failure = JobEnd(self.topology).first_failure()
        if failure is not None:
            rank, what = failure["rank"], f"{failure['type']}: {failure['message']}"
        elif exit_code != STOP_EXIT_CODE and error:
            rank, what = self.topology.rank, error
        else:
            return None
        return self.text_of(rank, what)

    def text_of(self, rank: int, error: str) -> Alert:
        """The alert that names `rank` as the first to fail, with `error`."""
        action = self.action
        title = f"Flyte job failed: {action.run_name}/{action.action_name}"[:MAX_TITLE_CHARS]
        where = (
            f"Flyte action: {action.url}"
            if action.url
            else f"Flyte action: {action.run_name}/{action.action_name} in {action.project}/{action.domain}"
        )
        text = f"Rank {rank} failed first: {error}\n{where}"
        return Alert(title=title, text=text)
