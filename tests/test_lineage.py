"""Checkpoints with lineage, and the alert of a failed job, online: one real launch against a
W&B-compatible server (`openwandb`) and an S3-compatible one (`moto_server`) on loopback.

The job (1 node x 2 ranks, `new` mode, one torch elastic restart) writes a sharded checkpoint to
the bucket on its first start, logs it with `log_checkpoint`, and fails; the restarted start loads
it, says so with `use_checkpoint`, and fails again, which fails the job. `openwandb` keeps the
artifacts it is sent but has no alerts: the alert is checked in the run files, where W&B records
it, and in the request the server refused.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from flyte_wandb_elastic._checkpoints import checkpoint_name
from tests.conftest import launch
from tests.records import POD_ENV, console_url, records
from tests.servers import ENTITY, S3Server, WandbServer

pytestmark = pytest.mark.launch

PROJECT = "p"


def server_artifacts(server: WandbServer) -> list[tuple[str, str, str, dict]]:
    """(run id, name, type, metadata) of every artifact the server stored, in the order created."""
    with sqlite3.connect(server.data_dir / "openwandb.db") as conn:
        rows = conn.execute("select run_id, name, artifact_type, metadata_json from artifacts order by id").fetchall()
    return [(run_id, name, kind, json.loads(meta)) for run_id, name, kind, meta in rows]


def test_checkpoints_are_reference_artifacts_their_use_is_recorded_and_the_failed_job_alerts(
    tmp_path: Path, s3: S3Server, shared_wandb: WandbServer
) -> None:
    uri = s3.uri(uuid.uuid4().hex[:8], "ckpt")
    config = {"nnodes": 1, "nproc_per_node": 2, "project": PROJECT, "entity": ENTITY, "run_mode": "new"}
    aws = {"AWS_S3_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    env = {**s3.env(), **aws, **shared_wandb.env(), **POD_ENV}
    result = launch(
        tmp_path, {**config, "max_restarts": 1}, inputs={"ckpt_uri": uri}, function="checkpointed", extra_env=env
    )
    [error] = result.errors
    assert "rank 1 fails after its checkpoint work (restart 1)" in error
    assert all(not run.path.parent.name.startswith("offline-") for run in result.runs)  # online
    by_start = sorted(result.runs, key=lambda r: r.config["flyte"]["restart_count"])
    starts = {rank: [r for r in by_start if r.run_id == f"r1-a0-rank-{rank}"] for rank in (0, 1)}
    assert [[run.config["flyte"]["restart_count"] for run in starts[rank]] for rank in (0, 1)] == [[0, 1], [0, 1]]
    first, second = (records(run) for run in starts[0])

    # online, W&B sends artifacts to the server at once (its run files hold no record of them):
    # the first start's checkpoint, then the restarted start's use of the same one, both from
    # rank 0's run, each with the checkpoint's URI and Flyte action; none from the other rank
    name = checkpoint_name(uri)
    stored = [a for a in server_artifacts(shared_wandb) if a[1] == name]
    assert [(run_id, kind) for run_id, _, kind, _ in stored] == [("r1-a0-rank-0", "checkpoint")] * 2
    for _, _, _, meta in stored:
        assert meta["uri"] == uri
        assert meta["flyte"] == {
            "project": "proj",
            "domain": "dev",
            "run_name": "r1",
            "action_name": "a0",
            "console_url": console_url(),
        }
    # and W&B asked it to record the use (`useArtifact`, which openwandb answers with an error: its
    # stub takes other arguments, and would store nothing). The references' checksums, and the
    # use as W&B keeps it for `sync`, are in the offline run files of test_reliability's restarts.
    server_log = (shared_wandb.data_dir / "server.log").read_text()
    assert "mutation UseArtifact" in server_log

    # the restarted start was not the job's end: no alert; the last start's failure is, once
    assert first.alerts == []
    assert second.alerts == [
        {
            "title": "Flyte job failed: r1/a0",
            "text": "Rank 1 failed first: ValueError: rank 1 fails after its checkpoint work (restart 1)\n"
            f"Flyte action: {console_url()}",
            "level": "ERROR",
        }
    ]
    assert [records(run).alerts for run in starts[1]] == [[], []]
    # online, W&B sent it at once (openwandb has no alerts, and refuses W&B's mutation for one)
    assert "notifyScriptableRunAlert" in server_log
