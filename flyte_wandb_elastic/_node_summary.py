"""Each node's summary of its writers for the report tab: one small object per node and interval.

The ranks of a node share its pod's disk, so its first rank (local rank 0, which writes a run in
every layout where any rank of its node does) reads the run directories of its node's writers
there, incrementally, with the report's own reader (`_stored_runs.Writer`, `read_log`), and
writes what the tab shows of each (rows, last values, bounded curves, exit code) as

    <action prefix>/manifests/node-<n>.summary.json

every `persist_interval`, only when something changed, and once more at the rank's end, after
the node's writers' ends are on its disk (waiting a bounded time for them). It lies beside the
writers' manifests, so that the listing that finds changed manifests finds changed summaries too
(readers of the copies pass over it): rank 0's refresh then reads one object per changed node
instead of two per changed writer (see `StoredRuns`; the format is `_stored_runs.to_json`). It
reads nothing from storage; its failures are warned about once, and training never waits for it.

A writer whose run directory is not on this disk (its rank's W&B directory is elsewhere) is
simply left out: the report reads it from its copies, as for a node with no summary.

Process: the node's first rank's process, in a thread of its own (and briefly at its end).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import _storage
from ._deadline import run_within
from ._manifest import Piece
from ._options import WandbOptions
from ._planner import plan_rank
from ._rank_run import lower_this_threads_priority
from ._runfiles import writers_dir
from ._stored_runs import Cursor, Writer, read_log, start_order, summary_uri, to_json
from ._topology import Topology

logger = logging.getLogger("flyte_wandb_elastic")

# How long the end of a failed or stopped rank waits for its node's other writers' ends.
STOPPED_WAIT_S = 5.0
# The least time the last summary gets, where the last copy took the rank's share of the end.
SUMMARY_MIN_S = 2.0
# How often the end looks again for the node's writers' ends on its disk.
_END_POLL_S = 0.2


def planned_writers(
    options: WandbOptions,
    ranks: range,
    nnodes: int,
    nproc_per_node: int,
    max_nodes: int,
    run_name: str,
    action_name: str,
    parent_run: str | None = None,
) -> dict[int, tuple[str, str]]:
    """The ranks among `ranks` that write a run, each with its run id and label ("" for none), as
    the planner gives them."""
    planned = {}
    for rank in ranks:
        topology = Topology.in_job(rank, nnodes, nproc_per_node)
        plan = plan_rank(options, topology, run_name, action_name, max_nodes, parent_run)
        if plan.opens_run and plan.run_id:
            planned[rank] = (plan.run_id, plan.label or "")
    return planned


@dataclass
class LocalRuns:
    """What the node's writers have written to their run directories on this disk so far, read
    incrementally (each `.wandb` log from where the last read ended).

    Attributes:
        wandb_dir: The node's W&B directory (`<dir>/wandb`), where every rank's run directories lie.
        planned: The node's writing ranks, each with its run id and label.
        writers: What each rank found so far has written, over all its starts.
    """

    wandb_dir: Path
    planned: dict[int, tuple[str, str]]
    writers: dict[int, Writer] = field(default_factory=dict)
    _cursors: dict[tuple[int, str], Cursor] = field(default_factory=dict)

    def read(self) -> bool:
        """Read what was written since the last read; whether anything was."""
        found = []
        names = sorted(p.name for p in self.wandb_dir.iterdir() if p.is_dir()) if self.wandb_dir.is_dir() else []
        for name in names:
            rank = self._rank_of(name)
            if rank is not None:
                found.append((rank, name))
        changed = False
        for key in sorted(found, key=start_order):  # a rank's starts in the order they began
            writer = self.writers.setdefault(key[0], Writer(key[0]))
            if key not in self._cursors:
                self._cursors[key] = Cursor()
                writer.began(key[1])
                changed = True
            cursor = self._cursors[key]
            log = next(iter(sorted((self.wandb_dir / key[1]).glob("run-*.wandb"))), None)
            if log is None or not cursor.valid:
                continue
            with open(log, "rb") as f:
                f.seek(cursor.have)
                data = f.read()
            if data:
                read_log(cursor, [(Piece(cursor.have, cursor.have + len(data), log.name), data)], writer)
                changed = True
        return changed

    def ended(self) -> bool:
        """Whether every writer found has recorded its end."""
        return all(w.exit_code is not None for w in self.writers.values())

    def _rank_of(self, name: str) -> int | None:
        for rank, (run_id, label) in self.planned.items():
            # a same-second clash of one writer's starts gives the later a `-<n>` suffix
            stem, _, tail = name.rpartition("-")
            if writers_dir(name, run_id, label) or (tail.isdigit() and writers_dir(stem, run_id, label)):
                return rank
        return None


class NodeSummary:
    """Writes the summary of this node's writers to `prefix` every `interval_s`, from a thread.

    Args:
        runs: The node's writers' run directories, as read so far.
        prefix: The action's storage prefix (`.../wandb/<action>`).
        node: This node's index.
        interval_s: Seconds between summaries.
    """

    def __init__(self, runs: LocalRuns, prefix: str, node: int, interval_s: float) -> None:
        self.runs = runs
        self.uri = summary_uri(prefix, node)
        self.node = node
        self.interval_s = interval_s
        self.writes = 0
        self._lock = threading.Lock()  # one read and write at a time
        self._unwritten = False  # read but not yet stored (a write failed)
        self._calls = _storage.Calls()
        self._stop = threading.Event()
        self._warned = False

    def start(self) -> None:
        """Write a summary every `interval_s` seconds from a thread of its own, at a lower CPU priority."""

        def loop() -> None:
            lower_this_threads_priority()
            while not self._stop.wait(self.interval_s):
                self._write_in_time(final=False, timeout_s=max(self.interval_s, 10.0))

        threading.Thread(target=loop, name="flyte-wandb-elastic-node-summary", daemon=True).start()

    def write(self, final: bool = False) -> bool:
        """Read what the node's writers wrote since the last time; store the summary if any did
        (or if `final`); whether a summary was stored."""
        with self._lock:
            if self.runs.read() or final:
                self._unwritten = True
            if not self._unwritten:
                return False
            _storage.put_bytes(self.uri, to_json(self.node, self.runs.writers, final), self._calls)
            self._unwritten = False
            self.writes += 1
            return True

    def finish(self, timeout_s: float, stopped: bool) -> bool:
        """Stop the thread; once every writer of the node found on this disk has recorded its end
        (or a bounded wait, shorter where the rank failed or was stopped), store the last summary.

        Waits at most `timeout_s` in all (storage may hang); whether the last summary was stored.
        """
        self._stop.set()
        deadline = time.monotonic() + max(0.0, timeout_s)
        wait_until = time.monotonic() + max(0.0, min(timeout_s / 2, STOPPED_WAIT_S) if stopped else timeout_s / 2)

        def last() -> None:
            while time.monotonic() < wait_until:
                with self._lock:
                    self._unwritten |= self.runs.read()
                    if self.runs.ended():
                        break
                time.sleep(_END_POLL_S)
            self.write(final=True)

        try:
            if run_within(last, max(0.0, deadline - time.monotonic()), "flyte-wandb-elastic-last-node-summary"):
                return True
            self._calls.cancel()
            self._warn_once(f"no answer within {timeout_s:.0f} s")
        except Exception as exc:
            self._warn_once(f"{type(exc).__name__}: {exc}")
        return False

    def _write_in_time(self, final: bool, timeout_s: float) -> None:
        if self._lock.locked():  # the last one is under way
            return
        try:
            if not run_within(lambda: self.write(final), timeout_s, "flyte-wandb-elastic-node-summary-write"):
                self._warn_once(f"no answer within {timeout_s:g} s")
        except Exception as exc:  # never in training's way: the report reads the copies instead
            self._warn_once(f"{type(exc).__name__}: {exc}")

    def _warn_once(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "could not write the W&B report's summary of node %d to %s (%s); trying again every %g s "
                "(the report tab shows this node's writers as of its last summary meanwhile)",
                self.node,
                self.uri,
                why,
                self.interval_s,
            )
