"""The live "Weights & Biases" tab of a task's Flyte report, for tasks declared with `report=True`.

One process per job writes it: global rank 0's (which writes a run in every layout), from what
storage holds of every rank's run files (`_stored_runs`): each node's summary of its writers (see
`_node_summary`), and the copies of any writer no summary holds. So it shows every node's runs,
offline ones included. A thread of its own rebuilds the tab and flushes the report every
`persist_interval`; rank 0's end writes it once more with the final states. Training never waits
for it, and no other rank does any of it.

Process: global rank 0's worker process, in a thread of its own (and briefly at its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import threading
import time
from urllib.parse import quote

from ._deadline import run_within
from ._diagram import layout_diagram
from ._node_summary import planned_writers
from ._options import WandbOptions
from ._rank_run import lower_this_threads_priority
from ._report_html import MAX_LINES, Row, chart_lines, render_tab
from ._stored_runs import StoredRuns, Writer
from ._wandb_host import wandb_server

logger = logging.getLogger("flyte_wandb_elastic")

TAB_NAME = "Weights & Biases"
# How long the end of a failed or stopped rank 0 waits for its peers' last copies.
STOPPED_WAIT_S = 5.0
# The most one write of the report to storage may take.
FLUSH_TIMEOUT_S = 10.0
# The share of the time a live refresh may spend parsing in rank 0's process (see `StoredRuns`): it
# sleeps between short bursts, so that the training thread waits little for the GIL.
REFRESH_SHARE = 0.25


class ReportTab:
    """Keeps the tab of the current task's report up to date from `prefix` (the action's copies).

    Args:
        options: The task's resolved W&B options.
        prefix: The storage prefix under which every rank's copies lie (`.../wandb/<action>`).
        nnodes: Nodes in the job.
        nproc_per_node: Ranks per node.
        max_nodes: The most nodes the task allows (as the ranks' own plans take it).
        run_name: The Flyte run's name (as the planner takes it).
        action_name: The Flyte action's name.
        interval_s: Seconds between rebuilds.
        parent_run: The parent task's run id, where the run context names one.
    """

    def __init__(
        self,
        options: WandbOptions,
        prefix: str,
        nnodes: int,
        nproc_per_node: int,
        max_nodes: int,
        run_name: str,
        action_name: str,
        interval_s: float,
        parent_run: str | None = None,
    ) -> None:
        self.options = options
        self.prefix = prefix
        self.interval_s = interval_s
        self.stored = StoredRuns(prefix, share=REFRESH_SHARE)
        self.layout = layout_diagram(options, nnodes, nproc_per_node)
        # rank -> (run id, label), for ranks that write
        self.planned = planned_writers(
            options,
            range(nnodes * nproc_per_node),
            nnodes,
            nproc_per_node,
            max_nodes,
            run_name,
            action_name,
            parent_run,
        )
        self.lines = MAX_LINES
        with contextlib.suppress(ValueError):  # refused where the task was declared with it
            self.lines = chart_lines(os.environ)
        self.writes = 0
        self._final = False
        self._context = contextvars.copy_context()  # the task's context: where the report lives
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._warned = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write the tab now and every `interval_s` seconds after, from a thread of its own."""

        def loop() -> None:
            lower_this_threads_priority(lowest=True)
            self.write(final=False)
            while not self._stop.wait(self.interval_s):
                self.write(final=False)

        self._thread = threading.Thread(target=loop, name="flyte-wandb-elastic-report", daemon=True)
        self._thread.start()

    def finish(self, timeout_s: float, stopped: bool) -> None:
        """Write the tab a last time, once every writer's end is in storage or `timeout_s` has passed."""
        self._stop.set()
        self.stored.share = 1.0  # the rank's function has returned: nothing to make room for
        flush_s = min(FLUSH_TIMEOUT_S, max(0.0, timeout_s) / 4)  # for the write itself
        wait_s = max(0.0, timeout_s - flush_s)
        deadline = time.monotonic() + (min(wait_s, STOPPED_WAIT_S) if stopped else wait_s)
        # past it, a writer whose node's summary still shows no end is read from its copies
        from_copies_at = time.monotonic() + (deadline - time.monotonic()) / 2
        while True:
            # storage that hangs must not hold the end of the job
            if not run_within(self._refresh, max(0.1, deadline - time.monotonic()), "flyte-wandb-elastic-report-read"):
                break
            running = {
                rank for rank in self.planned if (w := self.stored.writers.get(rank)) is None or w.exit_code is None
            }
            if not running or time.monotonic() >= deadline:
                break
            if time.monotonic() >= from_copies_at and running & self.stored.summarized:
                with self._lock:
                    self.stored.read_from_copies(running & self.stored.summarized)
                continue
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self._publish(final=True, timeout_s=max(1.0, flush_s))

    def write(self, final: bool) -> None:
        self._refresh()
        self._publish(final)

    def html(self, final: bool) -> str:
        """The tab as it stands (what `write` flushes)."""
        rows = [self._row(rank, run_id, label, final) for rank, (run_id, label) in sorted(self.planned.items())]
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        stage = "Final" if final else "Live, while the job runs"
        status = f"{stage}: updated {when}. Run files read from {self.prefix}."
        return render_tab(rows, self.layout, status, self.interval_s, self.lines)

    def _refresh(self) -> None:
        try:
            with self._lock:
                self.stored.refresh()
        except Exception as exc:  # storage down: the next write tries again
            self._warn_once(f"could not read the stored run files ({type(exc).__name__}: {exc})")

    def _publish(self, final: bool, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        if not self._lock.acquire(timeout=timeout_s):  # a read still hangs on the storage
            self._warn_once("the stored run files could not be read in time")
            return
        try:
            if self._final:  # a live write never replaces the final one
                return
            self._final = final
            page = self.html(final)
            # in a thread of its own: the caller may be inside an event loop (a clustered rank's
            # end), and the report must be flushed in the task's context
            flush = functools.partial(self._context.run, asyncio.run, _flush(page))
            if not run_within(flush, timeout_s, "flyte-wandb-elastic-report-flush"):
                raise TimeoutError(f"no answer within {timeout_s:g} s")
            self.writes += 1
        except Exception as exc:
            self._warn_once(f"could not write the report tab ({type(exc).__name__}: {exc})")
        finally:
            self._lock.release()

    def _row(self, rank: int, run_id: str, label: str, final: bool) -> Row:
        writer = self.stored.writers.get(rank) or Writer(rank)
        if writer.starts == 0:
            state = "no run files stored" if final else "not started"
        elif writer.exit_code is None:
            state = "no end recorded" if final else "running"
        elif writer.exit_code == 0:
            state = "finished"
        else:
            state = f"failed (exit {writer.exit_code})"
        options = self.options
        entity, project = writer.entity or options.entity, writer.project or options.project
        link = sync = None
        if writer.starts and writer.online and entity and project:
            # the page the console links name, in this pod's environment (the task's env_vars)
            pages = wandb_server(options.host, os.environ).app_url
            parts = (entity, project, "runs", writer.run_id or run_id)
            link = "/".join((pages, *(quote(part, safe="") for part in parts)))
        elif writer.starts:
            sync = f"python -m flyte_wandb_elastic sync {self.prefix}/rank-{rank}"
        return Row(
            run_id=writer.run_id or run_id,
            label=label,
            ranks=[rank],
            rows=writer.rows,
            metrics=dict(writer.metrics),
            state=state,
            link=link,
            sync=sync,
            curves={name: curve.shown() for name, curve in writer.curves.items()},
            exit_code=writer.exit_code,
            last_time=writer.last_time,
        )

    def _warn_once(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("W&B report tab: %s; trying again at the next update", why)


async def _flush(page: str) -> None:
    import flyte
    import flyte.report

    from . import _storage

    ctx = flyte.ctx()
    if ctx and ctx.output_path:  # a local output path may not exist yet
        _storage.make_local_dir(ctx.output_path)
    flyte.report.get_tab(TAB_NAME).replace(page)
    await flyte.report.flush.aio()


def action_prefix(copy_prefix: str) -> str:
    """The prefix of every rank's copies, from one rank's (`.../wandb/<action>/rank-<r>`)."""
    return copy_prefix.rsplit("/rank-", 1)[0]
