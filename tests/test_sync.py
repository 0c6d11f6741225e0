"""`sync` of many stored runs: real offline run files written by wandb, stored by the real copier in a
real S3-compatible server, uploaded to a real W&B-compatible server, whose rows are read back; the
S3 server's own request log says what each `sync` read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flyte_wandb_elastic._persist import RunFilesCopier
from flyte_wandb_elastic._queued import QueuedCalls
from tests.conftest import cli
from tests.servers import ENTITY, S3Server, WandbServer

PROJECT = "p"
ROWS = 20

# Offline runs written by wandb itself, one process for all: each id once, and `again` twice (its
# second start goes on from the first's last step, as a restarted rank's does).
_WRITE = """
import sys, wandb
for run_id in sys.argv[1].split(","):
    run = wandb.init(id=run_id, project="p", entity="default", mode="offline", reinit="create_new")
    for x in range(int(sys.argv[2])):
        run.log({"x": x})
    run.finish()
    if run_id == "again":
        run = wandb.init(id=run_id, project="p", entity="default", mode="offline", reinit="create_new", resume="allow")
        run.log({}, step=int(sys.argv[2]), commit=False)
        for x in range(int(sys.argv[2]), 2 * int(sys.argv[2])):
            run.log({"x": x})
        run.finish()
"""


def write_runs(pod: Path, ids: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_DIR=str(pod), WANDB_MODE="offline", WANDB_SILENT="true")
    subprocess.run([sys.executable, "-c", _WRITE, ",".join(ids), str(ROWS)], env=env, check=True, timeout=300)


def store(run_dirs: list[Path], base: str, rank: int) -> None:
    """Copy run directories to storage as rank `rank`'s copier does at its end."""
    for run_dir in run_dirs:
        RunFilesCopier(run_dir, f"{base}/wandb/a0/rank-{rank}", interval_s=30).copy(final=True)


def object_reads(s3: S3Server, since: int) -> list[str]:
    """The objects read (GET, not a listing) since the `since`-th request the server answered."""
    return [r.path for r in s3.requests()[since:] if r.method in ("GET", "HEAD") and not r.is_list]


def test_many_runs_arrive_whole_in_one_sync_and_what_is_synced_is_not_read_again(
    tmp_path: Path, s3: S3Server, wandb_server: WandbServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    base = s3.uri(uuid.uuid4().hex[:8])
    ids = [f"m{i:02d}" for i in range(3)] + ["again"]  # more runs than `sync -n 2` runs at once
    write_runs(tmp_path / "pod", [*ids, "late"])
    wandb_dir = tmp_path / "pod" / "wandb"
    for rank, run_id in enumerate(ids):
        store(sorted(wandb_dir.glob(f"offline-run-*-{run_id}*")), base, rank)  # a second start may end `-1`
    # a copy that is no W&B log: W&B's sync refuses it, and every other run is synced all the same
    junk = tmp_path / "junk" / "offline-run-20261206_000000-junk"
    junk.mkdir(parents=True)
    (junk / "run-junk.wandb").write_bytes(b"not a W&B log")
    store([junk], base, 9)
    # rank 0's calls queued while its run opened: the run opened and holds them (nothing to send)
    queued = QueuedCalls(wandb_dir, {"id": "m00", "project": PROJECT, "entity": ENTITY}, f"{base}/wandb/a0/rank-0")
    queued.add({"x": 0}, None, None)
    queued.close()
    queued.forget()
    env = {**s3.env(), **wandb_server.env()}

    first = cli("sync", "-n", "2", base, env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "5 synced, 0 already synced, 1 failed" in first.stdout
    assert f"FAILED   {base}/wandb/a0/rank-9/{junk.name}: " in first.stderr
    for run_id in ids[:-1]:
        assert [(r["_step"], r["x"]) for r in wandb_server.rows(PROJECT, run_id)] == [(i, i) for i in range(ROWS)]
    # both starts of one run, in order
    assert [(r["_step"], r["x"]) for r in wandb_server.rows(PROJECT, "again")] == [(i, i) for i in range(2 * ROWS)]
    assert set(wandb_server.runs().items()) == {(run_id, "finished") for run_id in ids}

    # the second reads no object of a synced copy (only the failed one's, tried again), and sends nothing
    before = len(s3.requests())
    second = cli("sync", base, env=env)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "0 synced, 5 already synced, 1 failed" in second.stdout
    reads = object_reads(s3, before)
    assert reads and all("/rank-9/" in path for path in reads), reads
    assert [r for r in s3.requests()[before:] if r.method not in ("GET", "HEAD")] == []
    assert all(len(wandb_server.rows(PROJECT, run_id)) == ROWS for run_id in ids[:-1])

    # a run stored since: only its copy is read
    store(list(wandb_dir.glob("offline-run-*-late")), base, 8)
    before = len(s3.requests())
    third = cli("sync", base, env=env)
    assert "1 synced, 5 already synced, 1 failed" in third.stdout
    reads = object_reads(s3, before)
    assert {"/rank-8/" in path for path in reads} == {True, False}
    assert all("/rank-8/" in path or "/rank-9/" in path for path in reads), reads
    assert [r["x"] for r in wandb_server.rows(PROJECT, "late")] == list(range(ROWS))
