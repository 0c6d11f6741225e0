"""On a cluster: every run reaches a real W&B-compatible server, the end of a job is bounded whatever
the server does, and every row outlives the pods in a real S3-compatible storage, from where `sync`
brings it to W&B.

Real launches of both engines (torch elastic; torchrun + `a0`), each node with a disk of its own
that is deleted after the job, against `openwandb` and `moto_server` on loopback.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flyte_wandb_elastic import WandbOptions
from flyte_wandb_elastic._persist import whole_records_end
from flyte_wandb_elastic._planner import plan_rank
from flyte_wandb_elastic._runfiles import read_run_file
from flyte_wandb_elastic._topology import Topology
from tests.conftest import REPO, Launch, cli, kill_tree, launch, launch_clustered, launched_pids
from tests.launcher import task_of
from tests.serialize import links, serialize
from tests.servers import ENTITY, S3Server, WandbServer

pytestmark = pytest.mark.launch

PROJECT = "p"
STEPS = 20


def run_job(
    engine: str,
    tmp: Path,
    s3: S3Server,
    options: dict[str, Any],
    env: dict[str, str],
    nodes: int = 2,
    inputs: dict[str, Any] | None = None,
    during: Callable[[Path], None] | None = None,
) -> tuple[Launch, str]:
    """Launch `paced` on `nodes` x 2 ranks with each node's own disk; the job and its run base dir."""
    base = s3.uri(uuid.uuid4().hex[:8], "r1")
    layout = {"nnodes": nodes} if engine == "elastic" else {"replicas": nodes}
    config = {**layout, "nproc_per_node": 2, "project": PROJECT, "entity": ENTITY, **options}
    kwargs: dict[str, Any] = {
        "inputs": {"steps": STEPS, "interval_s": 0.05, **(inputs or {})},
        "extra_env": {**s3.env(), **env},
        "during": during,
        "run_base_dir": base,
        "pods": True,
    }
    if engine == "elastic":
        return launch(tmp, config, function="paced", **kwargs), base
    return launch_clustered(tmp, config, task="paced", **kwargs), base


def writers(job: Launch) -> dict[str, set[int]]:
    """Run id -> the ranks that write it, as the ranks themselves said."""
    out: dict[str, set[int]] = {}
    for rank, facts in job.facts.items():
        if facts["run_id"]:
            out.setdefault(facts["run_id"], set()).add(rank)
    return out


def expected_rows(job: Launch, steps: int = STEPS) -> dict[str, set[tuple[int, int]]]:
    """Run id -> every (rank, row) its writers logged."""
    return {rid: {(r, i) for r in ranks for i in range(steps)} for rid, ranks in writers(job).items()}


def received(server: WandbServer, run_id: str) -> set[tuple[int, int]]:
    return {(row["rank"], row["row"]) for row in server.rows(PROJECT, run_id) if "row" in row}


def planned_ids(run_mode: str, rank_scope: str) -> set[str]:
    options = WandbOptions(run_mode=run_mode, rank_scope=rank_scope)  # type: ignore[arg-type]
    plans = [plan_rank(options, Topology.in_job(r, 2, 2), "r1", "a0", 2) for r in range(4)]
    return {p.run_id for p in plans if p.opens_run and p.run_id}


def assert_every_row_arrived(server: WandbServer, job: Launch, steps: int = STEPS) -> None:
    for run_id, rows in expected_rows(job, steps).items():
        assert received(server, run_id) >= rows, run_id
        assert server.runs()[run_id] == "finished", run_id


def stored_runs(uri: str, env: dict[str, str]) -> list[dict[str, Any]]:
    done = cli("inspect", "--json", uri, env=env)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def wait_for_rows(facts_dir: Path, ranks: int, rows: int, timeout_s: float = 90) -> None:
    """Wait until each of ranks `0..ranks-1` has logged `rows` rows (so each has its run open)."""
    deadline = time.monotonic() + timeout_s
    for rank in range(ranks):
        path = facts_dir / f"rank-{rank}.steps"
        while not (path.exists() and len(path.read_text().splitlines()) >= rows):
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank} did not log {rows} rows within {timeout_s} s")
            time.sleep(0.05)


OUTAGE_STEPS = 60


def _outage(server: WandbServer, facts_dir: Path) -> None:
    """The W&B server stops once every rank has logged 5 rows, and is back 6 s later (rows are
    logged every 0.1 s meanwhile)."""
    wait_for_rows(facts_dir, 4, 5)
    server.kill()
    time.sleep(6)
    server.start()


# Each engine's `new` layout online, whose four ranks each write a run of their own, through an
# outage: every other layout of both engines goes online in the layout matrices of
# tests/test_launch.py and tests/test_clustered.py (tests/online.py).
@pytest.mark.parametrize(("engine", "rank_scope"), [("elastic", "global"), ("clustered", "worker")])
def test_server_back_after_a_few_seconds_gets_every_row(
    tmp_path: Path, s3: S3Server, shared_wandb: WandbServer, engine: str, rank_scope: str
) -> None:
    options = {"run_mode": "new", "rank_scope": rank_scope, "host": shared_wandb.url, "id": uuid.uuid4().hex[:8]}
    inputs = {"steps": OUTAGE_STEPS, "interval_s": 0.1}
    during = functools.partial(_outage, shared_wandb)
    job, _ = run_job(engine, tmp_path, s3, options, shared_wandb.env(), inputs=inputs, during=during)
    assert job.errors == [], job.logs
    ids = {i.replace(options["id"], "r1-a0") for i in writers(job)}
    assert ids == planned_ids("new", rank_scope)
    assert set(writers(job)) <= set(shared_wandb.runs())
    assert_every_row_arrived(shared_wandb, job, OUTAGE_STEPS)
    # the console links are the pages W&B itself gives for these runs' groups
    project_urls = {f["project_url"] for f in job.facts.values() if f["run_id"]}
    for link in _links(engine, options):
        assert any(link == f"{url}/groups/{link.rsplit('/', 1)[1]}" for url in project_urls), link


def _links(engine: str, options: dict[str, Any]) -> list[str]:
    from flyte_wandb_elastic._links import links_for

    declared = WandbOptions(project=PROJECT, entity=ENTITY, **options)
    return [
        link.get_link("r1", "proj", "dev", {}, "", "a0", "")
        for link in links_for(declared, 2, 2, 2)  # both engines declare their links through links_for
    ]


def test_a_server_set_only_in_the_environments_env_vars_gets_the_runs_and_every_link(
    tmp_path: Path, shared_wandb: WandbServer
) -> None:
    # As most self-hosted W&B setups do: WANDB_BASE_URL in `TaskEnvironment(env_vars=...)`, no
    # `host=`, nothing in the pods' environment but what Flyte gives them from the task.
    env_vars = {"WANDB_BASE_URL": shared_wandb.url}
    pod_env = {k: v for k, v in shared_wandb.env().items() if k != "WANDB_BASE_URL"}
    config = {"nnodes": 1, "nproc_per_node": 2, "project": PROJECT, "entity": ENTITY}
    config.update(report=True, persist_interval=1.0)  # the report tab's link, too
    inputs = {"steps": 5, "interval_s": 0.05}
    storage = str(tmp_path / "storage")
    job = launch(tmp_path, config, inputs, function="paced", extra_env=pod_env, env_vars=env_vars, run_base_dir=storage)
    assert job.errors == [], job.logs
    assert set(writers(job)) == {"r1-a0"} and shared_wandb.runs()["r1-a0"] == "finished"
    url = job.facts[0]["url"]  # W&B's own page for the run, in the pod
    # the console links of the same task, serialized by Flyte's serializer, name that page
    task = task_of({"config": config, "function": "paced", "env_vars": env_vars})
    spec = serialize(task, "r1", "proj", "dev", {})
    assert [uri.replace("{{.actionName}}", "a0") for _, uri in links(spec)] == [url]
    # and so does the report tab's
    assert f'href="{url}"' in (tmp_path / "work-0" / "outputs" / "report.html").read_text()


FINISH_TIMEOUT_S = 15.0
STORAGE_FINISH_TIMEOUT_S = 6.0
# past the bound: the ranks' and torch elastic's own exit (a second or two here)
END_SLACK_S = 5.0


@pytest.mark.exclusive
# each way of losing the server once, each engine at least once (every engine's end is bounded
# with the server down from the start below, and with the storage down)
@pytest.mark.parametrize(("engine", "lost"), [("elastic", "refuses"), ("elastic", "hangs"), ("clustered", "errors")])
def test_server_lost_for_good_the_job_ends_in_time_and_sync_brings_every_row(
    tmp_path: Path, s3: S3Server, wandb_server: WandbServer, engine: str, lost: str
) -> None:
    def lose(facts_dir: Path) -> None:
        wait_for_rows(facts_dir, 4, 5)
        {"refuses": wandb_server.kill, "hangs": wandb_server.hang, "errors": wandb_server.fail}[lost]()

    options = {"run_mode": "new", "host": wandb_server.url, "finish_timeout": FINISH_TIMEOUT_S}
    # 25 rows logged after the server is lost, over 2.5 s
    job, base = run_job(
        engine, tmp_path, s3, options, wandb_server.env(), inputs={"steps": 30, "interval_s": 0.1}, during=lose
    )
    assert job.errors == [], job.logs
    last_return = max(f["returned_at"] for f in job.facts.values())
    assert job.ended_at - last_return < FINISH_TIMEOUT_S + END_SLACK_S
    # the pods are gone; the server comes back
    wandb_server.start()
    done = cli("sync", base, env={**s3.env(), **wandb_server.env()})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 synced" in done.stdout
    for run_id, rows in expected_rows(job, 30).items():
        assert received(wandb_server, run_id) >= rows, run_id
        assert wandb_server.runs()[run_id] == "finished", run_id


@pytest.mark.exclusive
@pytest.mark.parametrize("engine", ["elastic", "clustered"])
def test_server_down_for_the_whole_job_its_rows_outlive_the_pods_and_sync_once(
    tmp_path: Path, s3: S3Server, wandb_server: WandbServer, engine: str
) -> None:
    # shared runs, one per node: four writers, each falling back to offline on its pod's own disk
    wandb_server.kill()
    options = {"run_mode": "shared", "rank_scope": "worker", "host": wandb_server.url}
    options["finish_timeout"] = FINISH_TIMEOUT_S
    # the function does not wait for its run: it returns while wandb.init still retries
    job, base = run_job(engine, tmp_path, s3, options, wandb_server.env(), inputs={"wait_open": False})
    assert job.errors == [], job.logs
    last_return = max(f["returned_at"] for f in job.facts.values())
    assert job.ended_at - last_return < FINISH_TIMEOUT_S + END_SLACK_S
    # the fallback's warning names the command that uploads the run from storage
    for rank in range(4):
        assert f"Upload it later with: python -m flyte_wandb_elastic sync {base}/wandb/a0/rank-{rank}/" in "".join(
            job.logs
        )
    assert not any(tmp_path.glob("pod-*"))  # the pods' disks are gone: every row is in storage
    stored = stored_runs(base, s3.env())
    assert len(stored) == 4  # four writers of two shared runs
    by_rank = {r["config"]["flyte"]["rank"]: r for r in stored}
    assert sorted(by_rank) == [0, 1, 2, 3]
    assert all(r["steps"] == STEPS and r["exit_code"] == 0 for r in stored)
    wandb_server.start()
    # uploaded by the example's Flyte task, run where the servers are reachable
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env = {**s3.env(), **wandb_server.env()}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "sync_task.py"), base],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 synced, 0 already synced" in done.stdout
    assert_every_row_arrived(wandb_server, job)
    # a second sync sends nothing
    counts = {rid: len(wandb_server.rows(PROJECT, rid)) for rid in writers(job)}
    second = cli("sync", base, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 synced, 4 already synced" in second.stdout
    assert {rid: len(wandb_server.rows(PROJECT, rid)) for rid in writers(job)} == counts


@pytest.mark.exclusive
@pytest.mark.parametrize("engine", ["elastic", "clustered"])
def test_storage_down_never_fails_or_holds_training(tmp_path: Path, s3: S3Server, engine: str) -> None:
    s3.kill()
    try:
        # offline: only the last copy, which storage refuses until its share runs out, holds the end
        options = {"run_mode": "new", "persist_interval": 1.0, "finish_timeout": STORAGE_FINISH_TIMEOUT_S}
        job, _ = run_job(engine, tmp_path, s3, options, {}, nodes=1, inputs={"steps": 40, "interval_s": 0.1})
    finally:
        s3.start()
    assert job.errors == [], job.logs
    last_return = max(f["returned_at"] for f in job.facts.values())
    assert job.ended_at - last_return < STORAGE_FINISH_TIMEOUT_S + END_SLACK_S
    logs = "".join(job.logs)
    # each rank warns once, though it tried every second and once more at its end
    assert logs.count("could not copy the W&B run files") == 2, logs
    assert {len(r.rows) for r in job.runs} == {40}  # the pod's own files were written all the same


def test_sync_says_what_is_missing(tmp_path: Path, s3: S3Server, wandb_server: WandbServer) -> None:
    no_key = cli("sync", s3.uri("nothing"), env={**s3.env(), "WANDB_BASE_URL": wandb_server.url})
    assert no_key.returncode != 0 and "no W&B API key" in no_key.stderr
    wandb_server.kill()
    unreachable = cli("sync", s3.uri("nothing"), env={**s3.env(), **wandb_server.env()})
    assert unreachable.returncode != 0
    assert f"the W&B server at {wandb_server.url} (WANDB_BASE_URL) cannot be reached" in unreachable.stderr


_TWO_STARTS = """
import sys, wandb
kwargs = {"id": "twice", "project": "p", "entity": "default", "mode": "offline"}
first = wandb.init(**kwargs)
for i in range(5):
    first.log({"x": i})
first.finish()
again = wandb.init(**kwargs, **({"resume_from": "twice?_step=4"} if sys.argv[1] == "rewind" else {"resume": "allow"}))
if sys.argv[1] != "rewind":
    again.log({}, step=5, commit=False)
for i in range(5, 10):
    again.log({"x": i})
again.finish()
"""


@pytest.mark.parametrize("restart", ["rewind", "resume"])
def test_sync_of_a_restarted_offline_run(tmp_path: Path, wandb_server: WandbServer, restart: str) -> None:
    # two starts of one offline run, written by wandb itself: the way this package reopens a run
    # (a plain resume from the next step) syncs whole; a rewind, which W&B's self-managed servers
    # refuse while `wandb sync` exits 0, is reported as failed and not recorded as synced
    env = {**os.environ, **wandb_server.env(), "WANDB_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", _TWO_STARTS, restart], env=env, check=True, capture_output=True)
    done = cli("sync", str(tmp_path), env=wandb_server.env())
    rows = wandb_server.rows(PROJECT, "twice")
    if restart == "resume":
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 synced" in done.stdout
        assert [(r["_step"], r["x"]) for r in rows] == [(i, i) for i in range(10)]
    else:
        assert done.returncode != 0
        assert "rewind" in done.stdout + done.stderr
        assert "1 synced" in done.stdout and len(rows) == 5
        again = cli("sync", str(tmp_path), env=wandb_server.env())
        assert "1 already synced" in again.stdout and again.returncode != 0  # tried again, not skipped


def offline_run(pod: Path, run_id: str, xs: range) -> Path:
    """The directory of an offline run that wandb itself writes under `pod`, logging `x` for each of `xs`."""
    script = f"import wandb\nrun = wandb.init(id='{run_id}', project='{PROJECT}', entity='{ENTITY}', mode='offline')\n"
    script += f"for x in {xs!r}:\n    run.log({{'x': x}})\nrun.finish()\n"
    env = {**os.environ, "WANDB_DIR": str(pod)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    [run_dir] = (pod / "wandb").glob(f"offline-run-*-{run_id}")
    return run_dir


def test_sync_of_a_copy_taken_mid_record(tmp_path: Path, wandb_server: WandbServer) -> None:
    # storage lost while a copy was taken (fault seed 1004): the stored log ends in half a record,
    # which W&B's own reader refuses; sync sends every whole row before it
    written = offline_run(tmp_path / "pod", "torn", range(200)) / "run-torn.wandb"
    data = written.read_bytes()
    torn = data[: len(data) * 2 // 3]
    whole = tmp_path / "whole" / written.name
    whole.parent.mkdir()
    whole.write_bytes(torn)
    kept = [row["x"] for row in read_run_file(whole).rows]
    assert 0 < len(kept) < 200 and len(torn) > whole_records_end(whole)  # it does end mid-record
    parts = tmp_path / "storage" / "wandb" / "a0" / "rank-0" / written.parent.name / f"{written.name}.parts"
    parts.mkdir(parents=True)
    (parts / f"{0:015d}").write_bytes(torn)
    done = cli("sync", str(tmp_path / "storage"), env=wandb_server.env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row["x"] for row in wandb_server.rows(PROJECT, "torn")] == kept


def test_sync_passes_over_a_start_whose_service_died_before_writing(tmp_path: Path, wandb_server: WandbServer) -> None:
    # the node's wandb-core killed 1.8 s in (fault seed 4020): the first start's log holds only its
    # header, which `wandb sync` refuses; the reopened start after it still syncs, every row
    start = offline_run(tmp_path / "pod", "e1", range(5))
    rank_dir = tmp_path / "storage" / "wandb" / "a0" / "rank-0"
    rank_dir.mkdir(parents=True)
    dead = rank_dir / "offline-run-20261204_000000-e1" / "run-e1.wandb"
    dead.parent.mkdir()
    dead.write_bytes((start / "run-e1.wandb").read_bytes()[:7])
    start.rename(rank_dir / start.name)
    done = cli("sync", str(tmp_path / "storage"), env=wandb_server.env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row["x"] for row in wandb_server.rows(PROJECT, "e1")] == list(range(5))


def test_sync_writes_the_calls_queued_by_a_start_lost_while_its_run_opened(
    tmp_path: Path, wandb_server: WandbServer
) -> None:
    # a rank killed while its run opened (its calls kept in storage, no run directory), then its
    # restart, whose run opened (its own file of queued calls says so) and wrote 5 rows
    rank_dir = tmp_path / "storage" / "wandb" / "a0" / "rank-0"
    writer = {"writer": {"id": "q1", "label": None, "project": PROJECT, "entity": ENTITY, "config": {"lr": 0.1}}}

    def queued(name: str, xs: range, *tail: dict[str, Any]) -> None:
        calls = [{"log": {"x": x}, "step": None, "commit": None} for x in xs]
        (rank_dir / name).mkdir(parents=True)
        (rank_dir / name / "calls.log").write_text("".join(json.dumps(line) + "\n" for line in [writer, *calls, *tail]))

    queued("flyte-queued-20261204_000000-q1", range(5))
    queued("flyte-queued-20261204_000010-q1", range(5, 7), {"opened": True})
    start = offline_run(tmp_path / "pod", "q1", range(5, 10))
    start.rename(rank_dir / start.name)
    done = cli("sync", str(tmp_path / "storage"), env=wandb_server.env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 synced" in done.stdout  # the restart's run, and the lost start's calls after it
    rows = [(row["_step"], row["x"]) for row in wandb_server.rows(PROJECT, "q1")]
    assert rows == [(step, x) for step, x in zip(range(10), [*range(5, 10), *range(5)], strict=True)]
    again = cli("sync", str(tmp_path / "storage"), env=wandb_server.env())
    assert "0 synced" in again.stdout and len(wandb_server.rows(PROJECT, "q1")) == 10


PERSIST_S = 2.0


@pytest.mark.exclusive
@pytest.mark.parametrize("engine", ["elastic", "clustered"])
def test_pod_killed_keeps_all_but_the_last_interval_in_storage(tmp_path: Path, s3: S3Server, engine: str) -> None:
    killed_at: list[float] = []

    def kill_pod(facts_dir: Path) -> None:
        wait_for_rows(facts_dir, 2, 1)
        time.sleep(3 * PERSIST_S)
        killed_at.append(time.time())
        for pid in launched_pids(tmp_path):
            kill_tree(pid)

    options = {"run_mode": "new", "persist_interval": PERSIST_S}
    job, base = run_job(
        engine, tmp_path, s3, options, {}, nodes=1, inputs={"steps": 600, "interval_s": 0.05}, during=kill_pod
    )
    assert job.errors, "the pod was killed: the job cannot have succeeded"
    stored = {r["config"]["flyte"]["rank"]: r for r in stored_runs(base, s3.env())}
    assert sorted(stored) == [0, 1]
    for rank, run in stored.items():
        logged = [line.split() for line in (tmp_path / "facts" / f"rank-{rank}.steps").read_text().splitlines()]
        due = [int(step) for step, at in logged if float(at) < killed_at[0] - PERSIST_S - 2.0]
        assert due and run["steps"] >= len(due), (rank, run["steps"], len(due))
        assert run["exit_code"] is None  # killed: no exit record


@pytest.mark.exclusive
@pytest.mark.parametrize("engine", ["elastic", "clustered"])
def test_a_pod_killed_while_its_runs_open_keeps_the_rows_queued_meanwhile(
    tmp_path: Path, s3: S3Server, wandb_server: WandbServer, engine: str
) -> None:
    """Rows logged while `wandb.init` still waits (here on a server that never answers) are kept
    in storage beside the run files, and `sync` writes them to the run."""

    def kill_pod(facts_dir: Path) -> None:
        wait_for_rows(facts_dir, 2, 40)
        time.sleep(2 * 1.0 + 1.0)  # two persist intervals, and a little
        for pid in launched_pids(tmp_path):
            kill_tree(pid)

    wandb_server.hang()
    options = {"run_mode": "new", "host": wandb_server.url, "init_timeout": 120, "persist_interval": 1.0}
    inputs = {"steps": 40, "interval_s": 0.02, "wait_open": False}
    job, base = run_job(engine, tmp_path, s3, options, wandb_server.env(), nodes=1, inputs=inputs, during=kill_pod)
    assert job.errors, "the pod was killed: the job cannot have succeeded"
    wandb_server.start()
    env = {**s3.env(), **wandb_server.env()}
    first = cli("sync", base, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    plans = [plan_rank(WandbOptions(run_mode="new"), Topology.in_job(r, 1, 2), "r1", "a0", 1) for r in range(2)]
    for rank, plan in enumerate(plans):
        assert plan.run_id is not None
        assert received(wandb_server, plan.run_id) == {(rank, row) for row in range(40)}, plan.run_id
    second = cli("sync", base, env=env)
    assert second.returncode == 0 and "0 synced" in second.stdout, second.stdout + second.stderr
    assert all(len(wandb_server.rows(PROJECT, p.run_id or "")) == 40 for p in plans)
