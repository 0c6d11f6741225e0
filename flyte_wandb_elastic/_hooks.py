"""The per-rank hooks that wrap the user's function, for every engine.

Process: `RankHooks` runs inside each rank's own process: the worker that torch elastic starts
(Elastic; the launching process only pickles it and opens no run), each rank's `a0` that torchrun
starts (clustered), or, in a local run or a non-distributed task, the one process that runs the
function.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import flyte

from ._after_import import after_import
from ._alerts import FailureAlert
from ._deadline import (
    COPY_SHARE,
    DEFAULT_FINISH_TIMEOUT_S,
    FINISH_SHARE,
    INIT_SHARE,
    REPORT_SHARE,
    WANDB_SHARE,
    run_within,
)
from ._flyte_console import FlyteAction
from ._job_end import JobEnd
from ._node_service import first_rank_service, join_node_service
from ._node_summary import SUMMARY_MIN_S, LocalRuns, NodeSummary, planned_writers
from ._options import PARENT_RUN_KEY, WandbOptions
from ._persist import SLOW_COPY_S, RunFilesCopier, default_persist_interval
from ._planner import RankPlan, creation_slot, plan_rank, run_files_prefix, system_metrics, writers
from ._queued import QueuedCalls
from ._rank_aggregator import END_SHARE, END_WAIT_S, RankAggregator
from ._rank_run import CreationSlot, RankRun, logger, service_lost
from ._report import ReportTab, action_prefix
from ._runfiles import local_wandb_dir
from ._shutdown import STOP_EXIT_CODE, FinishOnce, Stopped, finish_on_stop
from ._topology import Topology

_current_run: ContextVar[Any] = ContextVar("flyte_wandb_elastic_run", default=None)


def get_wandb_run() -> Any:
    """This rank's W&B run, or `None` where this rank opened none.

    With the default background start this is a `RankRun`, returned at once while the run opens:
    it answers `id`, `group`, `project`, `entity` and `name` at once, queues `log` and
    `define_metric` until W&B is ready, and forwards everything else to the `wandb.Run` (waiting
    for it). With `blocking_init=True` it is the `wandb.Run` itself.
    """
    return _current_run.get()


def get_distributed_info() -> dict[str, Any] | None:
    """This rank's place in the job, or `None` when the job is not distributed.

    Returns:
        A dict with `rank`, `local_rank`, `world_size`, `local_world_size`, `worker_index` and
        `num_workers`, or `None`.
    """
    return Topology.from_env(os.environ).as_info()


@dataclass
class RankHooks:
    """The user's function with this package's pre- and post-execute hooks around it.

    Attributes:
        func: The user's task function.
        options: The W&B options declared for the task (run context not yet applied).
        max_nodes: The most nodes the task's `nnodes` allows (`replicas` on a clustered task).
        nproc_per_node: Ranks per node.
        start_node_service: Whether the node's logging ranks share one W&B service that the first
            of them starts (clustered tasks, where no launcher of ours runs to start it).
        report: Whether the task was declared with `report=True`: rank 0 then keeps the report's
            "Weights & Biases" tab up to date (see `_report`).
    """

    func: Callable[..., Any]
    options: WandbOptions
    max_nodes: int = 1
    nproc_per_node: int = 1
    start_node_service: bool = False
    report: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.session():
            return self.func(*args, **kwargs)

    @contextmanager
    def session(self, interrupt: bool = True, on_stopped: Callable[[], None] | None = None) -> Iterator[Any]:
        """Pre-execute hook on entry, post-execute hook on exit (with the exception, if any).

        Args:
            interrupt: Whether the function runs in this thread, so that SIGTERM can interrupt it
                with `Stopped`. Otherwise SIGTERM finishes the run as stopped and ends the process.
            on_stopped: Called when SIGTERM ends the process this way, after the run is finished.
        """
        ctx = flyte.ctx() or None  # outside a task, flyte.ctx() is a falsy stand-in
        topology = Topology.from_env(os.environ)
        job = JobEnd(topology)
        job.start()
        run, rank_run, end = self.pre_execute(ctx, topology)
        if rank_run is None:  # no run, or the parent's: nothing to finish here
            try:
                with self._published(ctx, run):
                    yield run
            except BaseException as exc:
                _record_failure(exc, job)
                raise
            job.returned(wait=False)
            return
        finish = FinishOnce(functools.partial(_finish, rank_run, run, end))
        error: BaseException | None = None
        with self._published(ctx, run), finish_on_stop(finish, interrupt, on_stopped) as finishing:
            try:
                yield run
                job.returned(wait=True)  # success only once every rank has returned
            except BaseException as exc:
                error = exc
                raise
            finally:
                finishing()
                self.post_execute(finish, error, job)
        rank_run.raise_if_failed()  # on_init_failure="raise": the rank fails, if nothing else did

    def pre_execute(self, ctx: Any, topology: Topology) -> tuple[Any, RankRun | None, RankEnd]:
        """Start opening this rank's run if the plan says so (in the background by default).

        Once the run is open, its run directory is copied to durable storage every
        `persist_interval` seconds, from a thread of its own.

        Returns:
            What `get_wandb_run()` answers (the run, a `RankRun` still opening, or `None`), the
            `RankRun` this hook owns and so finishes (`None` for no run, or the parent's), and
            what the end of the rank needs.
        """
        context = ctx.custom_context if ctx else {}
        options = self.options.resolved(context)
        action = ctx.action if ctx else None
        run_name, action_name = (action.run_name or "", action.name) if action else (None, "")
        plan = plan_rank(options, topology, run_name, action_name, self.max_nodes, context.get(PARENT_RUN_KEY))
        if plan.offline and (options.mode or os.environ.get("WANDB_MODE")) != "disabled":
            options = replace(options, mode="offline")  # a rank's own run (rank_runs="offline"): to storage only
        finish_timeout = options.finish_timeout or DEFAULT_FINISH_TIMEOUT_S
        # a longer `init_timeout` than the default is honoured: the end may take that much longer
        end = RankEnd(finish_timeout, max(0.0, (options.init_timeout or 0.0) - INIT_SHARE * finish_timeout))
        if not plan.opens_run:
            return None, None, end
        live = _current_run.get()
        if live is not None and live.id == plan.run_id:
            return live, None, end  # the parent's run, open in this same process (a local run)
        attempt = int(os.environ.get("FLYTE_ATTEMPT_NUMBER", "0"))
        meta = None
        if action is not None:
            # the way back to the Flyte action: its console URL, in the notes and the config, and tags
            flyte_action = FlyteAction.of(
                os.environ, action.project or "", action.domain or "", run_name or "", action_name
            )
            options = replace(options, tags=flyte_action.tags(options.tags), notes=flyte_action.notes(options.notes))
            if (topology.rank or 0) == 0 and options.alert_on_failure is not False:
                end.alert = FailureAlert.of(flyte_action, topology)
            meta = {
                "project": action.project,
                "domain": action.domain,
                "run_name": run_name,
                "action_name": action_name,
                "attempt": attempt,
                "restart_count": topology.restart_count,
                "rank": topology.rank,
                "local_rank": topology.local_rank,
                "node_rank": topology.node_rank,
                "world_size": topology.world_size,
                "nproc_per_node": self.nproc_per_node,
                "console_url": flyte_action.url,
            }
            if topology.pod_index is not None:  # a JobSet's pod
                meta.update(pod_index=topology.pod_index, jobset_restart_attempt=topology.job_restart_attempt)
        resuming = topology.restarted or attempt > 0
        stats = system_metrics(plan, topology, options.run_mode, _gpus_visible())
        background = not options.blocking_init
        start_node_service = self.start_node_service
        copy_prefix = run_files_prefix(
            options, ctx.run_base_dir if ctx else None, run_name, action_name, topology.rank or 0
        )
        # the job's storage budget counts the ranks that copy run files, not every rank
        copying = writers(options, topology.num_nodes or 1, self.nproc_per_node)
        interval = options.persist_interval or default_persist_interval(copying)
        if self.report and copy_prefix is not None and (topology.rank or 0) == 0:
            end.report = ReportTab(
                options,
                action_prefix(copy_prefix),
                topology.num_nodes,
                self.nproc_per_node,
                self.max_nodes,
                run_name or "",
                action_name,
                interval,
                context.get(PARENT_RUN_KEY),
            )
            end.report.start()
        if self.report and copy_prefix is not None and topology.local_rank == 0:
            # the node's first rank sums up its node's writers for the report (see `_node_summary`)
            node = topology.node_rank
            planned = planned_writers(
                options,
                range(node * self.nproc_per_node, (node + 1) * self.nproc_per_node),
                topology.num_nodes,
                self.nproc_per_node,
                self.max_nodes,
                run_name or "",
                action_name,
                context.get(PARENT_RUN_KEY),
            )
            runs = LocalRuns(local_wandb_dir(options.init_kwargs.get("dir")), planned)
            end.summary = NodeSummary(runs, action_prefix(copy_prefix), node, interval)
            end.summary.start()

        def opener(rank_run: RankRun, again: bool) -> Any:
            # wandb itself first, then this package's modules that call it: the end of wandb's
            # import sets the globals through `_wandb_run` (see `after_import`), which must not be
            # half imported then. Only ranks that log import them, and off the training thread.
            importlib.import_module("wandb")
            if not again:  # before wandb starts a service of its own (again: the service died)
                first_rank_service() if start_node_service else join_node_service()
            from . import _wandb_run

            run = _wandb_run.open_run(
                plan, options, meta, resuming or again, stats, copy_prefix, fresh_service=again, slot=rank_run.slot
            )
            if rank_run.abandoned:  # the rank's end ran out of time while it opened: the exit must not wait
                _wandb_run.kill_own_services()
                return run
            if copy_prefix is not None:
                if end.copier is not None:  # the dead start's files, as its service left them
                    end.copier.final_copy(SLOW_COPY_S, synced=False)
                end.copier = RunFilesCopier(_wandb_run.run_dir(run), copy_prefix, interval)
                end.copier.start()
            if background:
                _wandb_run.open_globals(rank_run, run)
            return run

        known = {"id": plan.run_id, "group": plan.group, "project": options.project, "entity": options.entity}
        disabled = (options.mode or os.environ.get("WANDB_MODE")) == "disabled"
        if background and plan.run_id is not None and not disabled:
            end.keep_queued(options, plan, meta, copy_prefix, interval)
        slot = CreationSlot(creation_slot(options, plan), end.by(INIT_SHARE))  # W&B's rate of run creations
        rank_run = RankRun(opener, {**known, "name": options.name}, end.queued, slot)
        primary = (topology.rank or 0) == 0
        if options.rank_runs == "offline" and topology.distributed and primary and copy_prefix and not disabled:
            peers = frozenset(range(1, topology.world_size or 1))
            end.aggregator = RankAggregator(rank_run, action_prefix(copy_prefix), interval, peers)
            end.aggregator.start()
        if not background:
            rank_run.open()
            run = rank_run.wandb_run()  # a plain wandb.Run; raises when opening failed
            from . import _wandb_run

            _wandb_run.make_global(run)
            return run, rank_run, end
        # W&B's globals are this run's from the end of wandb's import, whichever thread imports
        # it (this one, now, if the user's code already has): `wandb.log` works from the first line.
        after_import("wandb", functools.partial(_make_global, rank_run))
        rank_run.start()
        return rank_run, rank_run, end

    def post_execute(self, finish: FinishOnce, error: BaseException | None, job: JobEnd) -> None:
        """Finish the run: exit code 0, 1 when the function raised, 143 when the rank was stopped.

        The error is recorded in the run summary (`flyte_error`), where torch elastic reads it (so
        the task fails with this rank's message) and, if it is the job's first, for rank 0.
        """
        if error is None:
            finish(0, None)
            return
        _record_failure(error, job)
        exit_code = STOP_EXIT_CODE if isinstance(error, Stopped) else 1
        finish(exit_code, f"{type(error).__name__}: {error}")

    @staticmethod
    @contextmanager
    def _published(ctx: Any, run: Any) -> Iterator[None]:
        """`run` is `get_wandb_run()`'s answer, and tasks called from here see its id as their parent's."""
        token = _current_run.set(run)
        publish = ctx is not None and run is not None
        saved_parent = ctx.custom_context.get(PARENT_RUN_KEY) if publish else None
        if publish:
            ctx.custom_context[PARENT_RUN_KEY] = run.id
        try:
            yield
        finally:
            _current_run.reset(token)
            if publish and saved_parent is None:
                ctx.custom_context.pop(PARENT_RUN_KEY, None)
            elif publish:
                ctx.custom_context[PARENT_RUN_KEY] = saved_parent


def _make_global(run: Any) -> None:
    from . import _wandb_run

    _wandb_run.make_global(run)


@dataclass
class RankEnd:
    """What the end of a rank needs: its time bound, once the run is open its copier, and on rank 0
    of a task with `report=True` the report tab (with `rank_runs="offline"`, the aggregates' thread), and
    on each node's first rank of such a task its node's summary."""

    finish_timeout: float
    extra_s: float = 0.0  # what an `init_timeout` longer than its default adds
    copier: RunFilesCopier | None = None
    report: ReportTab | None = None
    queued: QueuedCalls | None = None
    alert: FailureAlert | None = None  # global rank 0's, unless alert_on_failure=False
    aggregator: RankAggregator | None = None  # global rank 0's, with rank_runs="offline"
    summary: NodeSummary | None = None  # each node's first rank's, with report=True

    def by(self, share: float) -> float:
        """Seconds from the function's return by which `share` of the end must be done."""
        return share * self.finish_timeout + self.extra_s

    def keep_queued(
        self, options: WandbOptions, plan: RankPlan, meta: dict[str, Any] | None, prefix: str | None, interval: float
    ) -> None:
        """Keep the calls queued while the run opens in a file (copied to `prefix` with the run files)."""
        writer = {
            "id": plan.run_id,
            "label": plan.label,
            "primary": plan.primary,
            # as `wandb.init` resolves them in this pod, for wherever `sync` runs
            "project": options.project or os.environ.get("WANDB_PROJECT"),
            "entity": options.entity or os.environ.get("WANDB_ENTITY"),
            "name": options.name,
            "group": plan.group,
            "job_type": options.job_type,
            "tags": options.tags,
            "notes": options.notes,
            "config": {**(options.config or {}), **({"flyte": meta} if meta is not None else {})},
        }
        try:
            self.queued = QueuedCalls(local_wandb_dir(options.init_kwargs.get("dir")), writer, prefix, interval)
        except OSError as exc:  # an unwritable disk: the calls still reach the run once it opens
            logger.warning("could not keep the calls queued while %s opens (%s)", plan.run_id, exc)


def _finish(rank_run: RankRun, published: Any, end: RankEnd, exit_code: int, error: str | None) -> None:
    """Finish the run once every queued call is written, copy its files a last time, hand W&B's globals back.

    The end is bounded by `end.finish_timeout` from here (see `_deadline` for how it is shared).
    """
    started = time.monotonic()
    uploaded: list[bool] = []

    def finish(run: Any) -> None:
        from . import _wandb_run

        try:
            uploaded.append(_wandb_run.finish_run(run, exit_code, error, _alert(end, exit_code, error)))
        except Exception as exc:
            if not service_lost(exc):
                raise
            logger.warning(
                "could not finish %r: its W&B service is gone (%s); the run files hold its rows", rank_run, exc
            )

    if end.aggregator is not None:  # its last row goes into the run before the run finishes
        end.aggregator.finish(min(END_WAIT_S, END_SHARE * end.finish_timeout), stopped=exit_code != 0)
    try:
        # W&B keeps its whole share of the end for the finish (its own bound is `WANDB_SHARE`)
        _wait_for_checkpoints(end.by(FINISH_SHARE - WANDB_SHARE) - (time.monotonic() - started))
        finish_s = end.by(FINISH_SHARE) - (time.monotonic() - started)
        try:
            if not run_within(lambda: rank_run.finish_when_open(finish), finish_s, "flyte-wandb-elastic-finish"):
                unwritten = rank_run.abandon()
                logger.warning(
                    "W&B did not finish %r within %.0f s (finish_timeout=%g): this rank ends without it. %s",
                    rank_run,
                    finish_s,
                    end.finish_timeout,
                    f"It was not open: its {unwritten} queued call(s) {_kept(end)}."
                    if unwritten
                    else "Its run files hold every row; upload them with `python -m flyte_wandb_elastic sync`.",
                )
                from . import _wandb_run

                _wandb_run.kill_own_services()
        finally:
            if end.queued is not None:
                end.queued.end(exit_code, end.by(COPY_SHARE) - (time.monotonic() - started))
            if end.copier is not None:
                left = end.by(COPY_SHARE) - (time.monotonic() - started)
                end.copier.final_copy(left, synced=bool(uploaded and uploaded[0]))
            if end.summary is not None:  # once the node's writers' ends are on its disk, or its share ran out
                left = end.by(COPY_SHARE) - (time.monotonic() - started)
                end.summary.finish(max(SUMMARY_MIN_S, left), stopped=exit_code != 0)
            if end.report is not None:
                left = end.by(REPORT_SHARE) - (time.monotonic() - started)
                end.report.finish(left, stopped=exit_code != 0)
    finally:
        if "wandb" in sys.modules:  # the globals were set only if wandb was imported
            from . import _wandb_run

            _wandb_run.restore_global(published)


def _alert(end: RankEnd, exit_code: int, error: str | None) -> Any:
    """The failure alert the run sends as it finishes, if any; never in the way of the finish."""
    if end.alert is None:
        return None
    try:
        return end.alert.compose(exit_code, error)
    except Exception as exc:
        logger.warning("could not compose the W&B alert of this failed job (%s): the run finishes without it", exc)
        return None


def _wait_for_checkpoints(timeout_s: float) -> None:
    """Let the checkpoints logged on this rank reach the run's calls before it finishes (see `_checkpoints`)."""
    checkpoints = sys.modules.get(f"{__package__}._checkpoints")
    if checkpoints is not None and not checkpoints.wait_for_checkpoints(timeout_s):
        logger.warning("a checkpoint was not recorded in W&B within %.0f s of the end: it is left out", timeout_s)


def _kept(end: RankEnd) -> str:
    """What became of a run's queued calls, for a warning."""
    if end.queued is None or not end.queued.is_open:
        return "were not written"
    where = end.queued.where
    return f"are kept in {where}; `python -m flyte_wandb_elastic sync {where.rsplit('/', 1)[0]}` writes them"


def _gpus_visible() -> bool:
    """Whether this process sees a GPU (asked only when torch is already imported)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


def _record_failure(error: BaseException, job: JobEnd) -> None:
    """Write the rank's error where torch elastic reads it (so the task fails with this message)
    and, when it is the job's first failure, where rank 0 finds it (see `_job_end`)."""
    if not isinstance(error, Exception):  # stopped, not failed
        return
    job.failed(error)
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(error)
