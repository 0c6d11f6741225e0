"""The layout matrices' online launches: a W&B-compatible server, and the runs' storage in an
S3-compatible one (`openwandb` and `moto_server` on loopback, both shared by a test module)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Launch, cli
from tests.records import POD_ENV
from tests.servers import ENTITY, S3Server, WandbServer


@dataclass
class Online:
    server: WandbServer
    s3: S3Server
    base: str  # the Flyte run's base directory, in the S3 server

    @classmethod
    def of(cls, request: pytest.FixtureRequest) -> Online:
        s3: S3Server = request.getfixturevalue("s3")
        return cls(request.getfixturevalue("shared_wandb"), s3, s3.uri(uuid.uuid4().hex[:8], "r1"))

    def env(self) -> dict[str, str]:
        return {**self.server.env(), **self.s3.env()}

    def check(self, job: Launch, project: str, steps: int, links: list[str], stored: bool) -> None:
        """Every row of every writer reached the server and each run finished; the console links
        (of `auto` or `shared` runs) are W&B's own pages for them; with `stored`, each writer's
        files are in storage, recorded as synced by its pod."""
        writers: dict[str, set[int]] = {}
        for rank, facts in job.facts.items():
            if facts["run_id"]:
                writers.setdefault(facts["run_id"], set()).add(rank)
        world = len(job.facts)
        for run_id, ranks in writers.items():
            assert self.server.runs().get(run_id) == "finished", run_id
            rows = self.server.rows(project, run_id)
            received = {(row["rank"], row["reduced"]) for row in rows if "reduced" in row}
            # each writer's rows, told apart by the all-reduced value of their step
            assert received == {(r, float(sum(q + s for q in range(world)))) for r in ranks for s in range(steps)}
        assert sorted(links) == sorted({f["url"] for f in job.facts.values() if f["run_id"]})
        if not stored:
            return
        done = cli("inspect", "--json", self.base, env=self.s3.env())
        assert done.returncode == 0, done.stderr
        copies = json.loads(done.stdout)
        assert sorted(r["run_id"] for r in copies) == sorted(f["run_id"] for f in job.facts.values() if f["run_id"])
        assert all(r["steps"] == steps and r["exit_code"] == 0 for r in copies)
        done = cli("sync", self.base, env=self.env())
        assert done.returncode == 0, done.stderr
        assert f"0 synced, {len(copies)} already synced, 0 failed" in done.stdout


def layout_launch(
    request: pytest.FixtureRequest, online: bool, config: dict[str, Any]
) -> tuple[Online | None, dict[str, Any]]:
    """The servers of a layout matrix's job, if it goes `online` (their options added to `config`), and
    its launch's keyword arguments: every pod knows the Flyte console's endpoint, as the backend
    tells every pod, and an online job's pods reach the servers and store the runs in the S3 one."""
    if not online:
        return None, {"extra_env": dict(POD_ENV)}
    servers = Online.of(request)
    config.update(host=servers.server.url, entity=ENTITY)
    return servers, {"extra_env": {**POD_ENV, **servers.env()}, "run_base_dir": servers.base}
