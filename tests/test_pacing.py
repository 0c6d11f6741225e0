"""Run creation within W&B's rate: the ranks that open runs wait for rank-ordered, jittered creation
slots (`max_run_creations_per_s`), training meanwhile; a rank that ends before its slot keeps its
rows; and W&B's HTTP 429 never loses a row nor holds the job past its bounded end.

Real launches (torch elastic on CPU) online against `openwandb` behind `RateLimitingProxy`, which
refuses with HTTP 429 and W&B's `RateLimit-*` headers above a set rate; the slot's own timing, and
a rank that ends long before its slot, in this process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flyte_wandb_elastic import WandbOptions
from flyte_wandb_elastic._planner import RankPlan, creation_slot, plan_rank
from flyte_wandb_elastic._rank_run import MIN_ONLINE_INIT_S, CreationSlot, GivenUp, RankRun
from flyte_wandb_elastic._runfiles import read_run_files
from flyte_wandb_elastic._topology import Topology
from tests.conftest import REPO, Launch, launch
from tests.servers import ENTITY, RateLimitingProxy, WandbServer

# every test here measures time (see `exclusive` in tests/conftest.py)
pytestmark = pytest.mark.exclusive

PROJECT = "p"
STEPS = 20
RANKS = 4
# past the bound: the ranks' and torch elastic's own exit (a second or two here)
END_SLACK_S = 5.0


def test_a_slot_that_comes_before_the_end_lets_init_take_its_own_time() -> None:
    slot = CreationSlot(0.3, open_within_s=10)
    started = time.monotonic()
    assert slot.wait() is None  # no bound but `init_timeout`, which counts from here
    assert 0.3 <= time.monotonic() - started < 1.0
    assert slot.wait() is None  # a second start (a reopened run) does not wait again


def test_an_end_that_begins_before_the_slot_bounds_init_or_sends_the_run_offline() -> None:
    in_time = CreationSlot(0.5, open_within_s=MIN_ONLINE_INIT_S + 1.5)
    in_time.end_began()
    started = time.monotonic()
    left = in_time.wait()  # the slot still comes in time: waited for, and init gets the rest
    assert 0.5 <= time.monotonic() - started < 1.0
    assert left is not None and MIN_ONLINE_INIT_S < left <= MIN_ONLINE_INIT_S + 1.0

    too_late = CreationSlot(60, open_within_s=5)
    waiting: list[float | None] = []
    waiter = threading.Thread(target=lambda: waiting.append(too_late.wait()))
    waiter.start()
    time.sleep(0.2)
    too_late.end_began()  # the function returns long before the slot: offline at once
    waiter.join(2)
    assert waiting == [0.0]


def test_a_run_given_up_stops_waiting_for_its_slot() -> None:
    slot = CreationSlot(60)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            slot.wait()
        except GivenUp as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    slot.give_up()
    waiter.join(2)
    assert len(errors) == 1


def test_a_rank_that_ends_long_before_its_slot_logs_offline_at_once_and_keeps_every_row(
    wandb_offline: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The 8,000th rank of a job: its slot comes 100 s in, its function returned after 1 s. The run
    opens offline as soon as the end begins (not at the slot, and without asking the server,
    which here is not even there), with every queued row, and a warning names the upload command."""
    from flyte_wandb_elastic import _wandb_run

    # `dir` explicit: wandb keeps the first WANDB_DIR it saw for the rest of the process
    options = WandbOptions(
        project=PROJECT,
        mode="online",
        host="http://127.0.0.1:9",
        finish_timeout=10,
        init_kwargs={"dir": str(wandb_offline)},
    )
    plan = RankPlan(opens_run=True, run_id="late-rank-8000", primary=True, creation_order=8000)
    slot = CreationSlot(creation_slot(options, plan), open_within_s=4.0)
    assert slot.delay_s >= 100

    def opener(rank_run: RankRun, again: bool) -> Any:
        return _wandb_run.open_run(plan, options, None, slot=rank_run.slot)

    def finish(run: Any) -> None:
        _wandb_run.finish_run(run, 0)

    rank_run = RankRun(opener, {"id": plan.run_id}, slot=slot)
    rank_run.start()
    for row in range(50):
        rank_run.log({"row": row})
    time.sleep(1.0)  # training, then the function returns: the end begins
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flyte_wandb_elastic"):
        rank_run.finish_when_open(finish)
    assert time.monotonic() - started < 5.0
    [run] = read_run_files(wandb_offline / "wandb")
    assert run.path.parent.name.startswith("offline-run-")
    assert (run.exit_code, [row["row"] for row in run.rows]) == (0, list(range(50)))
    assert "creation slot (max_run_creations_per_s) came too late" in caplog.text
    assert "Upload it later with: wandb sync" in caplog.text


def paced_job(tmp: Path, server: WandbServer, proxy: RateLimitingProxy, **options: Any) -> Launch:
    """1 node x `RANKS` ranks of `new` mode online through `proxy`, each logging `STEPS` rows in
    about a second, not waiting for its run; run files copied under `tmp/storage`."""
    config = {"nnodes": 1, "nproc_per_node": RANKS, "project": PROJECT, "entity": ENTITY, "run_mode": "new"}
    config.update(host=proxy.url, **options)
    return launch(
        tmp,
        config,
        {"steps": STEPS, "interval_s": 0.05, "wait_open": False},
        function="paced",
        extra_env={**server.env(), "WANDB_BASE_URL": proxy.url},
        run_base_dir=str(tmp / "storage"),
        pods=True,
    )


def planned(options: dict[str, Any]) -> list[tuple[str, float]]:
    """(run id, creation slot) of every rank, as the planner gives them."""
    declared = WandbOptions(run_mode="new", **options)
    plans = [plan_rank(declared, Topology.in_job(r, 1, RANKS), "r1", "a0", 1) for r in range(RANKS)]
    return [(p.run_id or "", creation_slot(declared, p)) for p in plans]


def rows_of(server: WandbServer, run_id: str) -> set[tuple[int, int]]:
    return {(row["rank"], row["row"]) for row in server.rows(PROJECT, run_id) if "row" in row}


@pytest.mark.launch
def test_pacing_keeps_the_job_within_its_rate_of_run_creations(tmp_path: Path, shared_wandb: WandbServer) -> None:
    # The slots at 1 a second are 0, 1.07, 2.15 and 3.61 s: a server that refuses a second
    # creation within a second (as the proxy at 2 a second does the third) must refuse none.
    options = {"id": "pacing", "max_run_creations_per_s": 1}
    slots = planned(options)
    assert [round(s, 2) for _, s in slots] == [0.0, 1.07, 2.15, 3.61]
    proxy = RateLimitingProxy(shared_wandb.url, creations_per_s=2)
    try:
        job = paced_job(tmp_path, shared_wandb, proxy, **options)
    finally:
        proxy.stop()
    assert job.errors == [], job.logs
    assert proxy.of_kind("creation", refused=True) == []
    created = proxy.creation_times()
    assert sorted(created) == sorted(run_id for run_id, _ in slots)  # every run online, each created once
    times = sorted(created.values())
    print("creations (s after the first):", [round(t - times[0], 2) for t in times])
    # spread as the slots are (give or take how long each rank took to be ready)
    assert times[-1] - times[0] >= slots[-1][1] - 1.0
    assert all(sum(1 for u in times if t <= u < t + 1.0) <= 2 for t in times)
    # the last ranks' functions returned before their slots: their runs opened online in their end
    returned = {facts["run_id"]: facts["returned_at"] for facts in job.facts.values()}
    assert any(created[run_id] > returned[run_id] for run_id, _ in slots[2:])
    for run_id, _ in slots:
        rank = int(run_id.rsplit("-", 1)[1])
        assert rows_of(shared_wandb, run_id) == {(rank, row) for row in range(STEPS)}, run_id
        assert shared_wandb.runs()[run_id] == "finished", run_id


FINISH_TIMEOUT_S = 10.0


@pytest.mark.launch
def test_w_and_b_refusing_with_429_loses_no_row_and_holds_no_end(tmp_path: Path, shared_wandb: WandbServer) -> None:
    # Paced at 50 a second against a server that takes one creation a second and one file-stream
    # request every two seconds: W&B's client retries after each `Retry-After`.
    options = {"id": "limited", "max_run_creations_per_s": 50, "finish_timeout": FINISH_TIMEOUT_S}
    proxy = RateLimitingProxy(shared_wandb.url, creations_per_s=1, file_stream_per_s=0.5)
    try:
        job = paced_job(tmp_path, shared_wandb, proxy, **options)
    finally:
        proxy.stop()
    assert job.errors == [], job.logs
    refused = {kind: len(proxy.of_kind(kind, refused=True)) for kind in ("creation", "file_stream")}
    print("refused:", refused, "created online:", sorted(proxy.creation_times()))
    assert refused["creation"] >= 1 and refused["file_stream"] >= 1
    last_return = max(facts["returned_at"] for facts in job.facts.values())
    print("end after the last return:", round(job.ended_at - last_return, 2))
    assert job.ended_at - last_return < FINISH_TIMEOUT_S + END_SLACK_S
    # what did not reach the server in time is in storage: `sync` (straight to the server) sends it
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    done = subprocess.run(
        [sys.executable, "-m", "flyte_wandb_elastic", "sync", str(tmp_path / "storage")],
        env={**clean, **shared_wandb.env()},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print("sync:", done.stdout.strip().splitlines()[-1:])
    for run_id, _ in planned(options):
        rank = int(run_id.rsplit("-", 1)[1])
        assert rows_of(shared_wandb, run_id) == {(rank, row) for row in range(STEPS)}, run_id
        assert shared_wandb.runs()[run_id] == "finished", run_id
