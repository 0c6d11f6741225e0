"""A bucket under load: S3's `503 SlowDown` (GCS answers 429 the same way) to requests above a rate.

The copies of the run files back off and catch up, no row is lost, readers never see a half-written
copy, and the end stays within its bound. Real W&B run files (written offline by wandb itself),
copied by the copier the ranks use through a real HTTP proxy (`SlowDownProxy`) in front of a real
S3 server (`moto_server`), read back from the server by the package's own readers; and one real
1 x 2 launch against it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import wandb

from flyte_wandb_elastic._persist import CANCEL_WAIT_S, RunFilesCopier, fetch_copies
from flyte_wandb_elastic._runfiles import RunFile, read_run_files
from flyte_wandb_elastic._storage import WRITE_RETRY
from tests.conftest import launch
from tests.servers import S3Server, SlowDownProxy

# both tests bound a copy's or a job's end in time (see `exclusive` in tests/conftest.py)
pytestmark = pytest.mark.exclusive

INTERVAL_S = 1.0


@pytest.fixture
def slowdown(s3: S3Server) -> Iterator[SlowDownProxy]:
    """A proxy in front of the S3 server that forwards every request until a test sets its rate."""
    proxy = SlowDownProxy(s3.url, rate=None)
    yield proxy
    proxy.stop()


@pytest.fixture
def reads_s3(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process reads the S3 server directly (no proxy)."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


@contextlib.contextmanager
def through(proxy: SlowDownProxy, s3: S3Server) -> Iterator[None]:
    """This process's storage calls go through `proxy` meanwhile."""
    saved = {key: os.environ.get(key) for key in proxy.env(s3)}
    os.environ.update(proxy.env(s3))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def stored(uri: str, into: Path) -> list[RunFile]:
    """The runs stored under `uri`, read back by the package's reader (straight from the server)."""
    return read_run_files(fetch_copies(uri, into))


def test_a_refused_copy_backs_off_the_next_catches_up_and_the_last_says_what_it_could_not_send(
    wandb_offline: Path, reads_s3: S3Server, slowdown: SlowDownProxy, caplog: pytest.LogCaptureFixture
) -> None:
    s3 = reads_s3
    run = wandb.init(project="p", settings=wandb.Settings(x_transaction_log_flush_interval=0.2))
    run_dir = Path(run.settings.sync_dir)
    root = s3.uri(uuid.uuid4().hex[:8])
    copier = RunFilesCopier(run_dir, f"{root}/wandb/a0/rank-0", interval_s=INTERVAL_S)

    def log(rows: range) -> None:
        for i in rows:
            run.log({"row": i})
        time.sleep(0.6)  # a transaction-log flush

    def rows_stored(name: str) -> list[int]:
        [back] = stored(root, wandb_offline / name)
        return [r["row"] for r in back.rows]

    log(range(0, 50))
    with through(slowdown, s3):
        assert copier.copy()
    assert copier.next_wait_s() == INTERVAL_S

    # the bucket refuses everything: the store retries the first write (the run's log) as
    # WRITE_RETRY says, then the copy stops there, asking nothing more of a bucket that refuses
    slowdown.set_rate(0)
    log(range(50, 100))
    mark = len(slowdown.requests)
    with through(slowdown, s3):
        assert not copier.copy()
    refused = slowdown.requests[mark:]
    assert len(refused) == 1 + WRITE_RETRY["max_retries"], [(r.method, r.path) for r in refused]
    assert all(r.refused and r.path == refused[0].path for r in refused)
    assert f"/run-{run.id}.wandb.parts/" in refused[0].path
    # the next copy waits twice the interval (less up to a quarter, so that ranks spread out)
    assert 1.5 * INTERVAL_S <= copier.next_wait_s() <= 2 * INTERVAL_S
    assert rows_stored("read-refused") == list(range(50))  # what was stored before, whole

    # the bucket takes requests again: one copy sends everything written meanwhile
    slowdown.set_rate(None)
    log(range(100, 150))
    with through(slowdown, s3):
        assert copier.copy()
    assert copier.next_wait_s() == INTERVAL_S
    assert rows_stored("read-caught-up") == list(range(150))

    # the end, against a bucket that refuses everything (as GCS does, with 429): the last copy
    # keeps trying within its bound, then gives up and says what storage lacks; the stored copy
    # is still whole
    slowdown.status = 429
    slowdown.set_rate(0)
    log(range(150, 200))
    run.finish()
    last_s = 6.0  # longer than a write's retries take (2.6 to 3.4 s here): the 429 is met and said
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flyte_wandb_elastic"), through(slowdown, s3):
        assert not copier.final_copy(last_s, synced=False)
    assert time.monotonic() - started < last_s + CANCEL_WAIT_S + 0.5
    assert f"did not finish within {last_s:.0f} s" in caplog.text
    assert "429 Too Many Requests" in caplog.text
    # the file as it stands once the last copy is given up (W&B may write its end after `finish`)
    size = (run_dir / f"run-{run.id}.wandb").stat().st_size
    assert f"of the {size:,} bytes of run-{run.id}.wandb" in caplog.text
    assert rows_stored("read-end") == list(range(150))


# A 1 x 2 job copying every half second through a bucket that takes 3 requests a second (its
# ranks ask for about 10 a second: most copies meet a refusal).
RATE_PER_S = 3.0
STEPS = 60
FINISH_TIMEOUT_S = 15.0
# past the bound: the ranks' and torch elastic's own exit (as in tests/test_durable.py)
END_SLACK_S = 5.0


@pytest.mark.launch
def test_a_job_under_slowdown_stores_every_row_and_ends_in_time(
    tmp_path: Path, reads_s3: S3Server, slowdown: SlowDownProxy
) -> None:
    s3 = reads_s3
    base = s3.uri(uuid.uuid4().hex[:8], "r1")
    slowdown.set_rate(RATE_PER_S)
    reads: list[dict[int, int]] = []

    def read_while_copied(facts_dir: Path) -> None:
        """Read the copies back while the ranks log and end: each read holds a whole prefix of each
        rank's rows (never a half-written copy), however many of their requests were refused."""
        ended = tmp_path / "node-0.json"  # the node's outcome: its ranks have ended
        deadline = time.monotonic() + 90
        while not ended.exists() and time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):  # nothing stored yet
                runs = stored(base, tmp_path / f"read-{len(reads)}")
                for back in runs:
                    assert [r["row"] for r in back.rows] == list(range(len(back.rows))), back.path
                reads.append({int(back.rows[0]["rank"]): len(back.rows) for back in runs if back.rows})
            time.sleep(1.0)

    config = {
        "nnodes": 1,
        "nproc_per_node": 2,
        "project": "p",
        "run_mode": "new",
        "persist_interval": 0.5,
        "finish_timeout": FINISH_TIMEOUT_S,
    }
    job = launch(
        tmp_path,
        config,
        inputs={"steps": STEPS, "interval_s": 0.05},
        extra_env=slowdown.env(s3),
        during=read_while_copied,
        function="paced",
        run_base_dir=base,
        pods=True,
    )
    assert job.errors == [], job.logs
    # the bucket refused a good share of what the ranks asked (about 6 in 10 here)
    refused, forwarded = slowdown.refused(), slowdown.forwarded()
    assert len(refused) > 0 and forwarded, (len(refused), len(forwarded))
    assert any(reads), "no read while the ranks ran found rows"
    # the end within its bound, counted from the last rank's return
    last_return = max(f["returned_at"] for f in job.facts.values())
    assert job.ended_at - last_return < FINISH_TIMEOUT_S + END_SLACK_S
    assert "did not finish" not in "".join(job.logs)
    # every row each rank logged is stored, with the run's end
    back = {int(r.rows[0]["rank"]): r for r in stored(base, tmp_path / "read-end")}
    assert sorted(back) == [0, 1]
    for rank, run in back.items():
        assert [(r["rank"], r["row"]) for r in run.rows] == [(rank, i) for i in range(STEPS)]
        assert run.exit_code == 0
    # as the pods' own run files held them
    assert {r.run_id: r.rows for r in job.runs} == {r.run_id: r.rows for r in back.values()}
