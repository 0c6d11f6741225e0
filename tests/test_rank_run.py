"""A rank's run: given up when its end runs out of time (nothing waits for it, fails for it or
reopens it), and the offline fallback of a failed start, which removes only its own leftovers.

`RankRun` is driven here by an opener of the test's own (the real one calls `wandb.init`; the
launches of `test_durable` cover that): one that is still opening when the rank's end gives up.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from flyte_wandb_elastic._rank_run import RankRun


class SlowOpener:
    """Opens nothing until released, then fails as a `wandb.init` whose service was stopped does."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, rank_run: RankRun, again: bool) -> Any:
        self.calls += 1
        self.release.wait(10)
        raise ConnectionResetError("Connection lost")


@pytest.mark.exclusive
def test_a_run_given_up_while_opening_neither_waits_nor_fails_the_rank() -> None:
    opener = SlowOpener()
    rank_run = RankRun(opener, {"id": "r1-a0-rank-0"})
    rank_run.start()
    for step in range(5):
        rank_run.log({"row": step})
    assert rank_run.abandon() == 5  # the queued calls, never written
    started = time.monotonic()
    rank_run.raise_if_failed()  # does not wait for the opener, and raises nothing
    assert time.monotonic() - started < 1
    rank_run.log({"row": 5})  # goes nowhere, and does not raise
    opener.release.set()
    time.sleep(0.2)
    rank_run.raise_if_failed()  # the opener's later failure does not fail the rank
    assert rank_run.abandoned and opener.calls == 1  # nor is the run opened again
    assert rank_run.id == "r1-a0-rank-0"


def test_a_failed_start_removes_only_its_own_writers_directory() -> None:
    """The offline fallback removes the empty directory its failed online start left; in shared
    mode the node's other writers of the same run have directories of the same run id."""
    from flyte_wandb_elastic._runfiles import writers_dir

    assert writers_dir("run-20261203_180242-r1-a0", "r1-a0", None)
    assert writers_dir("run-20261203_180242-r1-a0-rank-0", "r1-a0", "rank-0")
    assert writers_dir("offline-run-20261203_180242-r1-a0-rank-0", "r1-a0", "rank-0")
    assert not writers_dir("run-20261203_180242-r1-a0-rank-1", "r1-a0", "rank-0")
    assert not writers_dir("run-20261203_180242-r1-a0-rank-1", "r1-a0", None)
    assert not writers_dir("run-20261203_180242-r1-a0-rank-10", "r1-a0-rank-1", None)
