"""Seeded fault injection over real launches of both engines, with every guarantee checked after each.

`draw(seed)` picks one fault (kind, engine, run mode, online or offline, moment, target) from a
seed, so that a failing seed replays exactly. `run_fault` launches the fault-injection load
(`tests.tasks.load`: a few thousand rows per rank, all-reducing as training does) on 2 nodes x 2
ranks, each node with a disk of its own that is deleted after the job, against a real W&B server
and a real S3 server behind an outage proxy, injects the fault at its moment, then checks:

- `rows`: every row logged at least one persist interval (plus a flush) before the fault is kept,
  and `sync` of the run's storage brings it to the server (every row, for faults that kill no
  process and lose no storage);
- `no_false_success`: a job that failed leaves no run file with exit code 0, unless it failed only
  after every rank had returned (a run ends successful only then, and its end cannot be undone);
- `bound`: the job ends within `finish_timeout` (plus the time torch elastic takes to notice a
  lost rank) after its last row or the fault;
- `steps`: after a restart, steps never go back within a writer's files (for a W&B shared-mode
  writer online, which W&B gives no steps of its own, its rows never go back in time);
- `no_leftovers`: no `wandb-core` of the job is left running.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flyte_wandb_elastic import SyncReport, WandbOptions, sync_runs
from flyte_wandb_elastic._persist import fetch_copies
from flyte_wandb_elastic._planner import plan_rank
from flyte_wandb_elastic._runfiles import read_run_files
from flyte_wandb_elastic._topology import Topology
from tests.conftest import Launch, kill_tree, launch, launch_clustered, launched_pids, wandb_core_processes
from tests.servers import ENTITY, Outage, S3Server, WandbServer

KINDS = (
    "sigkill_rank",
    "sigterm_rank",
    "sigkill_node",
    "sigkill_core",
    "wandb_lost",
    "wandb_back",
    "storage_lost",
    "storage_back",
    "rank_raises",
    "restart",
)
ENGINES = ("elastic", "clustered")
MODES = ("auto", "shared", "new")
PROJECT = "faults"
ROWS = 3000
RESTART_BY_S = 3.0
# the peers of a rank that raises before a restart wait this long after their rows (see `load`)
HOLD_S = 30.0
INTERVAL_S = 0.002
PERSIST_S = 1.0
FLUSH_S = 1.0
FINISH_TIMEOUT_S = 20.0
# torch elastic's monitor interval, rendezvous shutdown and process exits, past the bound
END_SLACK_S = 20.0
# faults that may lose what was logged after the last copy: a process gone, or (offline) the storage
LOSSY = ("sigkill_rank", "sigkill_node", "sigkill_core")
INVARIANTS = ("rows", "no_false_success", "bound", "steps", "no_leftovers")


@dataclass(frozen=True)
class Fault:
    """One fault, drawn from `seed`."""

    seed: int
    engine: str
    kind: str
    run_mode: str
    online: bool
    at_s: float  # seconds after the first row of the job
    rank: int  # the rank it hits (a rank's faults), or whose node it hits

    @property
    def node(self) -> int:
        return self.rank // 2


def draw(seed: int) -> Fault:
    rnd = random.Random(seed)
    kind = rnd.choice(KINDS)
    return Fault(
        seed=seed,
        engine=rnd.choice(ENGINES),
        kind=kind,
        run_mode=rnd.choice(MODES),
        online=kind.startswith("wandb") or rnd.random() < 0.5,
        # a restart needs every node still training: torch elastic cannot restart a job one of
        # whose nodes has finished (ranks drift apart here, with no collective to hold them)
        at_s=min(round(rnd.uniform(0.0, 7.0), 2), RESTART_BY_S if kind == "restart" else 7.0),
        rank=rnd.randrange(4),
    )


@dataclass
class Outcome:
    fault: Fault
    failed: bool
    held: dict[str, bool]
    rows_due: int
    rows_kept: int
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(self.held.values())


def run_fault(fault: Fault, tmp: Path, s3: S3Server, wandb_server: WandbServer) -> Outcome:
    """Launch the load with `fault` injected at its moment, then check every invariant."""
    proxy = Outage(s3.port)
    base = s3.uri("faults", uuid.uuid4().hex[:8], "r1")
    run_id = f"f{fault.seed}-{uuid.uuid4().hex[:6]}"
    options: dict[str, Any] = {
        "project": PROJECT,
        "entity": ENTITY,
        "run_mode": fault.run_mode,
        "id": run_id,
        "persist_interval": PERSIST_S,
        "finish_timeout": FINISH_TIMEOUT_S,
        **({"host": wandb_server.url} if fault.online else {}),
    }
    raising = fault.kind in ("rank_raises", "restart")
    inputs = {
        "rows": ROWS,
        "interval_s": INTERVAL_S,
        "reduce_every": 0 if fault.kind == "restart" else 50,  # a restarted gloo group fails to reconnect
        **({"raise_rank": fault.rank, "raise_at": fault.at_s} if raising else {}),
        **({"hold_s": HOLD_S} if fault.kind == "restart" else {}),
    }
    env = {**s3.env(), "FLYTE_AWS_ENDPOINT": proxy.url, **(wandb_server.env() if fault.online else {})}
    env["WANDB__TRANSACTION_LOG_FLUSH_INTERVAL"] = str(FLUSH_S)
    fault_at: list[float] = []

    def inject(facts_dir: Path) -> None:
        first = _first_row(facts_dir)
        time.sleep(max(0.0, first + fault.at_s - time.time()))
        fault_at.append(time.time())
        _inject(fault, tmp, facts_dir, s3, proxy, wandb_server)

    restarts = 1 if fault.kind == "restart" else 0
    try:
        if fault.engine == "elastic":
            config = {"nnodes": 2, "nproc_per_node": 2, "max_restarts": restarts, **options}
            job = launch(tmp, config, inputs, function="load", extra_env=env, during=inject,
                         run_base_dir=base, pods=True)  # fmt: skip
        else:
            config = {"replicas": 2, "nproc_per_node": 2, **options}
            job = launch_clustered(tmp, config, inputs, task="load", extra_env=env, during=inject,
                                   max_restarts=restarts, run_base_dir=base, pods=True)  # fmt: skip
    finally:
        proxy.restore()
        if wandb_server.proc is None:
            wandb_server.release_port()
            wandb_server.start()
    with _environ({**s3.env(), **wandb_server.env()}):
        outcome = _check(fault, job, tmp, base, run_id, fault_at[0] if fault_at else time.time(), wandb_server)
    proxy.cut()
    return outcome


def _first_row(facts_dir: Path, timeout_s: float = 120) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        times = [
            float(line.split()[1]) for p in facts_dir.glob("rank-*.steps") for line in p.read_text().splitlines()[:1]
        ]
        if times:
            return min(times)
        time.sleep(0.02)
    raise TimeoutError("no rank logged a row")


def _pid(facts_dir: Path, rank: int, timeout_s: float = 60) -> int | None:
    path = facts_dir / f"rank-{rank}.pid"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.02)
    return None


def _inject(fault: Fault, tmp: Path, facts_dir: Path, s3: S3Server, proxy: Outage, server: WandbServer) -> None:
    kind = fault.kind
    if kind in ("sigkill_rank", "sigterm_rank"):
        pid = _pid(facts_dir, fault.rank)
        if pid:
            os.kill(pid, signal.SIGKILL if kind == "sigkill_rank" else signal.SIGTERM)
    elif kind == "sigkill_node":
        for pid in launched_pids(tmp):
            if Path(f"/proc/{pid}/environ").exists() and _node_of(pid) == fault.node:
                kill_tree(pid)
    elif kind == "sigkill_core":
        for pid in wandb_core_processes(tmp / f"pod-{fault.node}"):
            os.kill(pid, signal.SIGKILL)
    elif kind in ("wandb_lost", "wandb_back"):
        server.kill()
        if kind == "wandb_back":
            time.sleep(5)
            server.start()
    elif kind in ("storage_lost", "storage_back"):
        proxy.cut()
        if kind == "storage_back":
            time.sleep(5)
            proxy.restore()


def _node_of(pid: int) -> int | None:
    """The simulated node a process belongs to (by the `WANDB_DIR` of its pod), if any."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"WANDB_DIR=") and b"/pod-" in item:
            return int(item.rsplit(b"/pod-", 1)[1])
    return None


def _logged(facts_dir: Path) -> dict[int, list[tuple[int, float]]]:
    out: dict[int, list[tuple[int, float]]] = {}
    for path in facts_dir.glob("rank-*.steps"):
        rank = int(path.stem.split("-")[1])
        out[rank] = [(int(a), float(b)) for a, b in (line.split() for line in path.read_text().splitlines())]
    return out


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _received(server: WandbServer, run_id: str) -> set[tuple[int, int]]:
    return {(row["rank"], row["row"]) for row in server.rows(PROJECT, run_id) if "row" in row}


def _check(
    fault: Fault, job: Launch, tmp: Path, base: str, run_id: str, fault_at: float, server: WandbServer
) -> Outcome:
    details: list[str] = []
    held: dict[str, bool] = {}
    logged = _logged(tmp / "facts")
    last_row = max((at for rows in logged.values() for _, at in rows), default=fault_at)
    failed = bool(job.errors)
    # bound
    end_s = job.ended_at - max(fault_at, last_row)
    held["bound"] = end_s < FINISH_TIMEOUT_S + END_SLACK_S and not job.killed_after_grace
    if not held["bound"]:
        details.append(f"ended {end_s:.1f} s after the fault or the last row")
    if job.killed_after_grace:
        details.append(f"{job.killed_after_grace} deleted pod(s) still ran a rank after the whole grace")
    # the copies in storage
    import tempfile

    with tempfile.TemporaryDirectory() as read_back:
        try:
            stored = read_run_files(fetch_copies(base, Path(read_back)))
        except FileNotFoundError:  # no copy was made before the fault (storage lost early)
            stored = []
    # a run ends successful once every rank has returned (`_job_end`): a fault after that (a rank
    # killed in its exit, say) fails the job, and nothing can change what the runs already said
    returned = [f.get("returned_at") for f in job.facts.values()]
    after_return = len(returned) == 4 and all(returned) and fault_at > max(returned)
    if failed and after_return:
        details.append(f"the fault came {fault_at - max(returned):.2f} s after every rank had returned")
    held["no_false_success"] = not failed or after_return or all(r.exit_code != 0 for r in [*stored, *job.runs])
    if not held["no_false_success"]:
        details.append("a failed job left a run file with exit code 0")
    held["steps"] = True
    for writer in {(r.run_id, r.label) for r in stored}:
        files = sorted((r for r in stored if (r.run_id, r.label) == writer), key=lambda r: r.run_dir)
        # W&B's shared mode online gives a writer no steps of its own (it ignores explicit ones):
        # there, a writer's rows go on in time
        axis = "_timestamp" if writer[1] is not None and fault.online else "_step"
        steps = [row[axis] for r in files for row in r.rows]
        if any(b < a or (b == a and axis == "_step") for a, b in itertools.pairwise(steps)):
            held["steps"] = False
            details.append(f"steps go back in {writer}")
    # rows: sync the storage to the server, then every row due must be there
    report = sync_runs(base) if stored else SyncReport()
    if report.failed:
        details.append(f"sync failed: {report.failed}")
    options = WandbOptions(run_mode=fault.run_mode, id=run_id)  # type: ignore[arg-type]
    margin = PERSIST_S + FLUSH_S + 1.5
    due = kept = 0
    for rank, rows in logged.items():
        plan = plan_rank(options, Topology.in_job(rank, 2, 2), "r1", "a0", 2)
        if not plan.opens_run or plan.run_id is None:
            continue
        lossy = fault.kind in LOSSY or (fault.kind == "storage_lost" and not fault.online)
        cutoff = fault_at - margin if lossy else float("inf")
        want = {(rank, row) for row, at in rows if at < cutoff}
        got = {pair for pair in _received(server, plan.run_id) if pair[0] == rank}
        due += len(want)
        kept += len(want & got)
    held["rows"] = kept == due and not report.failed
    if kept != due:
        details.append(f"{due - kept} of {due} rows due are missing")
    # leftovers
    deadline = time.monotonic() + 15
    left = [p for n in range(2) for p in wandb_core_processes(tmp / f"pod-{n}")]
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [p for n in range(2) for p in wandb_core_processes(tmp / f"pod-{n}")]
    held["no_leftovers"] = not left
    if left:
        details.append(f"wandb-core left running: {left}")
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    return Outcome(fault, failed, held, due, kept, details)


def as_row(outcome: Outcome) -> dict[str, Any]:
    f = outcome.fault
    return {
        "seed": f.seed,
        "engine": f.engine,
        "fault": f.kind,
        "mode": f"{f.run_mode}/{'online' if f.online else 'offline'}",
        "at_s": f.at_s,
        "job": "failed" if outcome.failed else "succeeded",
        **{name: outcome.held[name] for name in INVARIANTS},
        "rows kept": f"{outcome.rows_kept}/{outcome.rows_due}",
        "details": "; ".join(outcome.details),
    }


def harness_error(fault: Fault, exc: BaseException) -> dict[str, Any]:
    """The row of a fault whose launch or check itself failed: no invariant counts as held."""
    outcome = Outcome(fault, True, dict.fromkeys(INVARIANTS, False), 0, 0, [f"harness: {type(exc).__name__}: {exc}"])
    return as_row(outcome)
