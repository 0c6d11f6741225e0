"""Training never waits for W&B: runs open in the background, and nothing logged meanwhile is lost.

Real launches (torch elastic on CPU, gloo), W&B offline files read back. Timings are the
benchmark's business; these check order, completeness, exit codes and that the function started
before the run was open.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.conftest import launch

pytestmark = [pytest.mark.launch, pytest.mark.exclusive]

ONE_NODE = {"nnodes": 1, "nproc_per_node": 2, "project": "p", "run_mode": "new"}
ROWS = 300


@pytest.mark.parametrize("blocking_init", [False, True])
def test_rows_logged_before_wandb_is_ready_are_written_in_order(tmp_path: Path, blocking_init: bool) -> None:
    result = launch(tmp_path, {**ONE_NODE, "blocking_init": blocking_init}, inputs={"rows": ROWS}, function="burst")
    assert result.errors == [], result.logs
    # the function started before the run was open, unless the blocking start was asked for
    assert {rank: facts["opened_at_start"] for rank, facts in result.facts.items()} == {
        0: blocking_init,
        1: blocking_init,
    }
    assert len(result.runs) == 2
    for run in result.runs:
        assert run.exit_code == 0
        # every row, in order, at the steps the code gave
        assert [(row["_step"], row["value"]) for row in run.rows] == [(100 + i, i) for i in range(ROWS)]
        assert run.summary["value"] == {"max": ROWS - 1}  # define_metric, queued first, applied


def test_a_wandb_init_of_the_users_while_the_run_opens_gets_the_ranks_run(tmp_path: Path) -> None:
    # as W&B answers once the run is open (Accelerate's tracker, code of one's own): no second run
    result = launch(tmp_path, ONE_NODE, inputs={"rows": ROWS, "user_init": True}, function="burst")
    assert result.errors == [], result.logs
    for facts in result.facts.values():
        assert facts["opened_at_init"] is False  # the call came while the rank's run opened
        assert facts["user_init_id"] == facts["run_id"]
    # no other run: no other run file (W&B's init, answering with the open run, still leaves a
    # directory holding only its debug log, as it does for any rank whose run is already open)
    assert len(result.runs) == 2 and len(list(tmp_path.glob("wandb/*run-*/run-*.wandb"))) == 2
    for run in result.runs:
        assert run.exit_code == 0
        assert [(row["_step"], row["value"]) for row in run.rows] == [(100 + i, i) for i in range(ROWS + 1)]


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a W&B server that hangs."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def test_a_hanging_server_delays_neither_training_nor_the_end_and_loses_no_row(tmp_path: Path) -> None:
    hole = BlackHole()
    init_timeout, pause = 5, 8.0
    config = {**ONE_NODE, "mode": "online", "host": f"http://127.0.0.1:{hole.port}", "init_timeout": init_timeout}
    try:
        result = launch(
            tmp_path,
            config,
            inputs={"rows": ROWS, "pause_s": pause},
            function="burst",
            extra_env={"WANDB_API_KEY": "x" * 40},
        )
    finally:
        hole.close()
    assert result.errors == [], result.logs
    # training started at once, and wrote its rows while W&B hung
    assert [facts["opened_at_start"] for facts in result.facts.values()] == [False, False]
    # every row reached the offline fallback
    assert len(result.runs) == 2
    for run in result.runs:
        assert run.path.parent.name.startswith("offline-run-")
        assert (run.exit_code, [row["value"] for row in run.rows]) == (0, list(range(ROWS)))
    # the job ends soon after its last rank returns: no wait on the W&B service that hung
    assert result.ended_at - max(f["returned_at"] for f in result.facts.values()) < 10
