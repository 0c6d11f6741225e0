"""The copier the ranks use: each copy sends what was written since the last one, and the copies
read back whole. A real offline W&B run, copied through Flyte's storage layer to a directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import wandb

from flyte_wandb_elastic._manifest import MANIFESTS
from flyte_wandb_elastic._persist import SYNCED_MARKER, RunFilesCopier, fetch_copies
from flyte_wandb_elastic._runfiles import read_run_files
from flyte_wandb_elastic._stored_runs import StoredRuns
from tests.servers import S3Server


def test_each_copy_sends_only_what_is_new_and_the_copies_read_back_whole(wandb_offline: Path) -> None:
    run = wandb.init(project="p", settings=wandb.Settings(x_transaction_log_flush_interval=0.2))
    copier = RunFilesCopier(run.settings.sync_dir, str(wandb_offline / "storage" / "rank-0"), interval_s=3600)
    log = next(Path(run.settings.sync_dir).glob("run-*.wandb"))
    sent = []
    for batch in range(3):
        for i in range(2000):
            run.log({"row": batch * 2000 + i})
        time.sleep(0.6)  # a transaction-log flush
        before, size_before = copier.bytes_sent, log.stat().st_size
        assert copier.copy()
        sent.append(copier.bytes_sent - before)
        if batch:  # after the first copy, never the whole file again: about a third of it here
            assert sent[-1] < 0.6 * size_before
    run.finish()
    assert copier.final_copy(30, synced=True)
    # the whole log was sent about once, in parts
    assert copier.bytes_sent < 1.2 * log.stat().st_size + 200_000
    [stored] = read_run_files(fetch_copies(str(wandb_offline / "storage"), wandb_offline / "read"))
    assert [row["row"] for row in stored.rows] == list(range(6000))
    assert stored.exit_code == 0
    assert (wandb_offline / "storage" / "rank-0" / Path(run.settings.sync_dir).name / SYNCED_MARKER).exists()
    # the copies in storage are left as they were (parts, not joined files)
    assert not list((wandb_offline / "storage").rglob("run-*.wandb"))


def test_a_long_copy_reads_back_whole_by_its_index_and_without_its_manifest(tmp_path: Path) -> None:
    """A real log copied over more than 4**2 copies (4 parts a segment: its segments in an index) to a
    local directory: `inspect`'s reader and a report reader starting from the beginning get every
    row back through the index, and so does the reader of copies without a manifest (an earlier
    version's), which passes over the index."""
    # written whole by wandb in a process of its own (`finish` may return before the log's end is)
    script = "import wandb\nrun = wandb.init(project='p', id='long', mode='offline')\n"
    script += "for i in range(3000):\n    run.log({'row': i})\nrun.finish()\n"
    env = {"WANDB_DIR": str(tmp_path), "WANDB_MODE": "offline", "PATH": str(Path(sys.executable).parent)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=300)
    [written] = (tmp_path / "wandb").glob("offline-run-*/run-long.wandb")
    whole = written.read_bytes()
    pod = tmp_path / "pod" / written.parent.name
    pod.mkdir(parents=True)
    storage = tmp_path / "storage" / "wandb" / "a0"
    copier = RunFilesCopier(pod, str(storage / "rank-0"), interval_s=3600, compact_parts=4)
    copies = 4**2 + 4 + 3
    for k in range(1, copies + 1):
        (pod / "run-long.wandb").write_bytes(whole[: len(whole) * k // copies])
        assert copier.copy()
    assert list(storage.rglob("index-*.json"))
    [back] = read_run_files(fetch_copies(str(tmp_path / "storage"), tmp_path / "read"))
    assert [row["row"] for row in back.rows] == list(range(3000))
    report = StoredRuns(str(storage))
    report.refresh()
    assert report.writers[0].rows == 3000 and report.bytes_read == len(whole)
    shutil.rmtree(storage / MANIFESTS)
    [legacy] = read_run_files(fetch_copies(str(tmp_path / "storage"), tmp_path / "legacy"))
    assert [row["row"] for row in legacy.rows] == list(range(3000))


@pytest.mark.exclusive
def test_a_last_copy_given_up_leaves_no_thread_in_the_storage_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage lost for good mid-run (a real S3 server, killed): the last copy gives up in time, and
    no thread of the copier is left inside the storage client (which retries for minutes) for the
    process's exit to run into."""
    s3 = S3Server(tmp_path / "s3")
    s3.start()
    try:
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        log = run_dir / "run-x.wandb"
        log.write_bytes(os.urandom(50_000))
        copier = RunFilesCopier(run_dir, s3.uri("x", "r1"), interval_s=0.2)
        copier.start()
        deadline = time.monotonic() + 30
        while copier.copies < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert copier.copies >= 2
        s3.kill()
        with log.open("ab") as out:  # written after the storage was lost
            out.write(os.urandom(5000))
        time.sleep(0.5)  # a copy is now retrying
        started = time.monotonic()
        assert not copier.final_copy(1.0, synced=False)
        assert time.monotonic() - started < 2.5
        time.sleep(0.3)
        assert [t.name for t in threading.enumerate() if t.name.startswith("flyte-wandb-elastic")] == []
    finally:
        s3.stop()
