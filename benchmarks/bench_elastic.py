"""Overhead of W&B logging on a small torch elastic (DDP, gloo, CPU) job: plain vs. upstream vs. this package.

Run from the repository root, in the project's virtualenv (`pip install -e '.[test,bench]'`; Linux):

    python benchmarks/bench_elastic.py                      # 300 steps per job, 3 repeats
    python benchmarks/bench_elastic.py --quick --repeats 1  # 60 steps per job, 1 repeat
    python benchmarks/bench_elastic.py --json results.json  # also write every job's raw results

The same job (DDP over `torch.nn.Linear(64, 64)`, SGD, one random batch per step, 10 scalars logged
per step by every rank that has a run) runs under three variants, defined in `benchmarks/bench_tasks.py`:

- `plain`: a plain `flyteplugins.pytorch.Elastic` environment without W&B (nothing is logged; the
  job ignores run_mode, so its rows for the three run_modes are repeats of one job).
- `upstream`: a plain `Elastic` environment with
  `flyteplugins.wandb.wandb_init(run_mode=..., project="bench", mode="offline")`
  above `@env.task`, ranks logging to `flyteplugins.wandb.get_wandb_run()`.
- `ours`: a `flyte_wandb_elastic.WandbElastic(..., project="bench", run_mode=...)` environment, ranks
  logging to `flyte_wandb_elastic.get_wandb_run()`.

for run_mode auto, shared and new, on 1 node x 2 ranks and 2 nodes x 2 ranks. Every node is a fresh
OS process that runs the task as a Flyte pod does (remote-mode task context, torch elastic spawning
the workers); the nodes of a 2-node job meet at one rendezvous endpoint on 127.0.0.1. W&B is offline
(WANDB_MODE=offline, a fresh WANDB_DIR per job, no API key), OMP_NUM_THREADS=1, and torch elastic runs
with max_restarts=0, monitor_interval=1 and 60 s rendezvous timeouts.

Metrics (per job; the table shows the median over the repeats that succeeded):

- wall s: from starting the node processes until all of them have exited (includes imports,
  rendezvous, opening and finishing the W&B runs).
- first step rank0 s: from starting the node processes until global rank 0 starts its first
  training step (after `init_process_group` and the DDP constructor, whose parameter broadcast
  waits for every rank, so this is also gated by the slowest rank).
- first step non-logging ranks s: the same, the latest over the ranks that opened no W&B run
  ("-" where every rank has a run). The raw JSON also has when each rank entered the task function,
  which no collective gates.
- step ms: the mean time of one training step, including the `run.log` call, after the warm-up steps,
  averaged over all ranks.
- peak MB: the highest sum of resident memory (RSS) over all processes of the job, sampled every 0.1 s:
  the node processes, their descendants (torch elastic workers, wandb-core, wandb-symon), and any
  process carrying the job's marker in its environment (so a reparented wandb-core still counts).
  RSS counts shared pages (e.g. torch's libraries) once per process.
- wandb-core per node: the most wandb-core processes alive at once during the job, divided by the
  number of nodes.
- wall vs plain, step vs plain: the row's value over the median of all `plain` jobs of the same
  topology. wall vs upstream: the row's wall time over the `upstream` row with the same run_mode and
  topology.

A job that fails (or times out) never stops the benchmark: its row says "failed" when no repeat
succeeded, and the error is printed below the table. The benchmark also measures the CPU time that
processes outside it used during each job (from /proc/stat); a row whose jobs shared the machine
with more than 10% of outside load is marked with a dagger, as its timings are not trustworthy.
Processes are found and measured with psutil.
Leave the machine otherwise idle while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("plain", "upstream", "ours")
RUN_MODES = ("auto", "shared", "new")
NODE_COUNTS = (1, 2)
NPROC_PER_NODE = 2
SAMPLE_INTERVAL_S = 0.1
LEFTOVER_GRACE_S = 5.0
DISTURBED_SHARE = 0.10  # a job is disturbed when other processes used more than this share of the machine's CPU
DISTURBED_MARK = "†"
MARKER_VAR = "BENCH_JOB_ID"
WANDB_PROCESSES = ("wandb-core", "wandb-symon")


# ---- processes of a job, with psutil ----


def _machine_busy_cpu_s() -> float:
    """CPU seconds all processes of the machine have used since boot (user, nice, system, irq, softirq, steal)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)


def _own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())}"
    except psutil.Error:
        return str(proc.pid)


class JobProcesses:
    """Finds and samples the live processes of one job.

    A process belongs to the job if it descends from one of the node processes, or if its environment
    holds `BENCH_JOB_ID=<job id>` (every process of the job inherits it, even once reparented).
    """

    def __init__(self, job_id: str, roots: Iterable[int]) -> None:
        self.job_id = job_id
        self.roots = set(roots)
        self._marked: dict[tuple[int, float], bool] = {}  # (pid, create time) -> carries the marker
        self.peak_rss = 0
        self.peak_wandb: Counter[str] = Counter()  # the most processes of each W&B kind alive at once
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, name="job-sampler", daemon=True)

    @property
    def peak_wandb_core(self) -> int:
        return self.peak_wandb["wandb-core"]

    def _carries_marker(self, proc: psutil.Process) -> bool:
        key = (proc.pid, proc.info["create_time"])
        if key not in self._marked:
            try:
                self._marked[key] = proc.environ().get(MARKER_VAR) == self.job_id
            except psutil.Error:
                self._marked[key] = False
        return self._marked[key]

    def alive(self) -> list[psutil.Process]:
        """The job's processes alive now (zombies excluded)."""
        procs = {p.pid: p for p in psutil.process_iter(["ppid", "status", "create_time"])}
        children: dict[int, list[int]] = {}
        for proc in procs.values():
            children.setdefault(proc.info["ppid"], []).append(proc.pid)
        members = set()
        stack = [pid for pid in self.roots if pid in procs]
        while stack:
            pid = stack.pop()
            if pid not in members:
                members.add(pid)
                stack.extend(children.get(pid, []))
        members.update(pid for pid, proc in procs.items() if pid not in members and self._carries_marker(proc))
        return [procs[pid] for pid in sorted(members) if procs[pid].info["status"] != psutil.STATUS_ZOMBIE]

    def sample(self) -> None:
        rss, kinds = 0, Counter[str]()
        for proc in self.alive():
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    name = proc.name()
            except psutil.Error:  # gone since it was listed
                continue
            if name in WANDB_PROCESSES:
                kinds[name] += 1
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_wandb |= kinds  # per-kind maximum
        self.samples += 1

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_INTERVAL_S)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def kill_all(self) -> list[str]:
        """SIGKILL every live process of the job, by pid; what was killed, as 'pid cmdline'."""
        killed = []
        for proc in self.alive():
            described = _describe(proc)
            try:
                proc.kill()
            except psutil.Error:
                continue
            killed.append(described)
        return killed


# ---- one job ----


@dataclass
class JobResult:
    """One launch of one variant; times in seconds from starting the node processes."""

    variant: str
    run_mode: str
    nnodes: int
    repeat: int
    nproc_per_node: int = NPROC_PER_NODE
    label: str = ""  # the scenario, where a benchmark runs one variant several ways
    ok: bool = False
    timed_out: bool = False
    error: str | None = None
    wall_s: float | None = None
    first_step_rank0_s: float | None = None
    first_step_slowest_s: float | None = None
    first_step_nolog_s: float | None = None
    after_last_return_s: float | None = None  # wall time left once the last rank's function returned
    step_ms: float | None = None
    peak_mb: float | None = None
    max_wandb_core: int | None = None
    max_wandb_symon: int | None = None
    wandb_core_per_node: float | None = None
    run_files: list[dict[str, Any]] = field(default_factory=list)  # what the job's offline run files hold
    samples: int = 0
    other_cpu_s: float | None = None
    leftover: list[str] = field(default_factory=list)
    ranks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def disturbed(self) -> bool:
        """Whether processes outside the benchmark used a noticeable share of the CPUs during this job."""
        if self.other_cpu_s is None or not self.wall_s:
            return False
        return self.other_cpu_s > DISTURBED_SHARE * self.wall_s * (os.cpu_count() or 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_env(
    tmp: Path, variant: str, run_mode: str, nnodes: int, job_id: str, nproc_per_node: int = NPROC_PER_NODE
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "BENCH_", "PET_"))}
    env.update(
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp / "wandb"),
        WANDB_SILENT="true",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        BENCH_VARIANT=variant,
        BENCH_RUN_MODE=run_mode,
        BENCH_NNODES=str(nnodes),
        BENCH_NPROC=str(nproc_per_node),
        BENCH_RANK_DIR=str(tmp / "ranks"),
        **{MARKER_VAR: job_id},
    )
    if nnodes > 1:
        env["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{_free_port()}"
    return env


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_job(
    variant: str,
    run_mode: str,
    nnodes: int,
    repeat: int,
    steps: int,
    warmup: int,
    timeout_s: float,
    keep: bool,
    *,
    nproc_per_node: int = NPROC_PER_NODE,
    extra_env: Mapping[str, str] | None = None,
    label: str = "",
) -> JobResult:
    """Launch one job, one fresh process per node, and measure it. Never raises for a failed job.

    `extra_env` is added to the job's environment (e.g. BENCH_BODY, BENCH_WANDB_OPTIONS; see `bench_tasks`).
    """
    result = JobResult(
        variant=variant, run_mode=run_mode, nnodes=nnodes, repeat=repeat, nproc_per_node=nproc_per_node, label=label
    )
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-elastic-{variant}-{run_mode}-{nnodes}x{nproc_per_node}-"))
    try:
        _run_job(result, tmp, steps, warmup, timeout_s, extra_env or {})
    except Exception as exc:  # a broken job must not stop the benchmark
        result.ok, result.error = False, f"{type(exc).__name__}: {exc}"
    finally:
        if keep:
            print(f"    kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _run_job(
    result: JobResult, tmp: Path, steps: int, warmup: int, timeout_s: float, extra_env: Mapping[str, str]
) -> None:
    nnodes, nproc = result.nnodes, result.nproc_per_node
    (tmp / "ranks").mkdir()
    (tmp / "wandb").mkdir()
    job_id = uuid.uuid4().hex
    env = {**job_env(tmp, result.variant, result.run_mode, nnodes, job_id, nproc), **extra_env}
    run_name = f"bench-{job_id[:8]}"
    logs = [(tmp / f"node-{n}.log").open("w") for n in range(nnodes)]
    specs = [
        {
            "run_name": run_name,
            "action_name": "a0",
            "work_dir": str(tmp / f"work-{n}"),
            "inputs": {"steps": steps, "warmup": warmup},
            "out": str(tmp / f"node-{n}.json"),
        }
        for n in range(nnodes)
    ]
    busy_before = _machine_busy_cpu_s() - _own_cpu_s()
    launch_t = time.time()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_node", json.dumps(spec)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for spec, log in zip(specs, logs, strict=True)
    ]
    job = JobProcesses(job_id, [p.pid for p in procs])
    job.start()
    timed_out = False
    try:
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
        end_t = time.time()
    finally:
        job.stop()
        if timed_out:
            job.kill_all()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for log in logs:
            log.close()
    result.other_cpu_s = _machine_busy_cpu_s() - _own_cpu_s() - busy_before
    result.leftover = _reap_leftovers(job)
    result.samples = job.samples
    result.wall_s = end_t - launch_t  # also for a failed job: how long it took to fail
    result.run_files = _run_files(tmp / "wandb")
    if timed_out:
        result.timed_out = True
        result.error = f"timed out after {timeout_s:.0f} s\n{_log_tail(tmp / 'node-0.log')}"
        return

    errors = []
    for node, proc in enumerate(procs):
        out = tmp / f"node-{node}.json"
        outcome = json.loads(out.read_text()) if out.exists() else {"error": "node wrote no outcome"}
        if "error" in outcome or proc.returncode != 0:
            detail = outcome.get("error", f"exit code {proc.returncode}")
            errors.append(f"node {node}: {detail}\n{_log_tail(tmp / f'node-{node}.log')}")
    ranks = sorted(
        (json.loads(p.read_text()) for p in (tmp / "ranks").glob("rank-*.json")), key=lambda r: int(r["rank"])
    )
    if not errors and len(ranks) != nnodes * nproc:
        errors.append(f"{len(ranks)} of {nnodes * nproc} ranks reported")
    times = ("process_start", "t_enter", "t_first_step", "t_last_step", "t_return")
    result.ranks = [{**r, "since_launch_s": {k: r[k] - launch_t for k in times}} for r in ranks]
    if errors:
        result.error = "\n".join(errors)
        return

    nolog = [r["t_first_step"] - launch_t for r in ranks if not r["has_run"]]
    result.ok = True
    result.first_step_rank0_s = ranks[0]["t_first_step"] - launch_t
    result.first_step_slowest_s = max(r["t_first_step"] for r in ranks) - launch_t
    result.first_step_nolog_s = max(nolog) if nolog else None
    result.after_last_return_s = end_t - max(r["t_return"] for r in ranks)
    result.step_ms = 1000 * statistics.mean(r["step_s"] for r in ranks)
    result.peak_mb = job.peak_rss / 2**20
    result.max_wandb_core = job.peak_wandb["wandb-core"]
    result.max_wandb_symon = job.peak_wandb["wandb-symon"]
    result.wandb_core_per_node = job.peak_wandb_core / nnodes


def _run_files(wandb_dir: Path) -> list[dict[str, Any]]:
    """What each offline run file of the job holds: run id, directory, rows logged (probe rows apart), exit code."""
    from flyte_wandb_elastic import read_run_files

    try:
        runs = read_run_files(wandb_dir)
    except Exception as exc:  # a torn file must not stop the benchmark
        return [{"error": f"{type(exc).__name__}: {exc}"}]
    return [
        {
            "run_id": run.run_id,
            "run_dir": run.run_dir,
            "rows": sum("probe0" not in row for row in run.rows),
            "exit_code": run.exit_code,
        }
        for run in runs
    ]


def _reap_leftovers(job: JobProcesses) -> list[str]:
    """Processes of the job still alive after its node processes exited (after a grace period), killed by pid."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while job.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    return job.kill_all()


# ---- the table ----

COLUMNS = (
    "variant",
    "run_mode",
    "topology",
    "wall s",
    "first step rank0 s",
    "first step non-logging ranks s",
    "step ms",
    "peak MB",
    "wandb-core per node",
    "wall vs plain",
    "wall vs upstream",
    "step vs plain",
)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}x"


def summarize(results: list[JobResult]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Medians per (variant, run_mode, nnodes) over the repeats that succeeded."""
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for key in ((v, m, n) for n in NODE_COUNTS for m in RUN_MODES for v in VARIANTS):
        jobs = [r for r in results if (r.variant, r.run_mode, r.nnodes) == key]
        good = [r for r in jobs if r.ok]
        rows[key] = {
            "jobs": len(jobs),
            "ok": len(good),
            "disturbed": any(r.disturbed for r in good),
            **{
                metric: _median(getattr(r, metric) for r in good)
                for metric in (
                    "wall_s",
                    "first_step_rank0_s",
                    "first_step_nolog_s",
                    "step_ms",
                    "peak_mb",
                    "wandb_core_per_node",
                )
            },
        }
    return rows


def format_table(results: list[JobResult]) -> str:
    rows = summarize(results)
    plain = {
        n: {
            metric: _median(getattr(r, metric) for r in results if r.ok and r.variant == "plain" and r.nnodes == n)
            for metric in ("wall_s", "step_ms")
        }
        for n in NODE_COUNTS
    }
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for (variant, run_mode, nnodes), row in rows.items():
        topology = f"{nnodes}x{NPROC_PER_NODE}"
        if not row["ok"]:
            cells = ["failed"] * (len(COLUMNS) - 3)
        else:
            upstream = rows[("upstream", run_mode, nnodes)]
            partial = f" ({row['ok']}/{row['jobs']} ok)" if row["ok"] < row["jobs"] else ""
            cells = [
                _fmt(row["wall_s"]) + partial + (f" {DISTURBED_MARK}" if row["disturbed"] else ""),
                _fmt(row["first_step_rank0_s"]),
                _fmt(row["first_step_nolog_s"]),
                _fmt(row["step_ms"]),
                _fmt(row["peak_mb"], 0),
                _fmt(row["wandb_core_per_node"], 1),
                _ratio(row["wall_s"], plain[nnodes]["wall_s"]),
                _ratio(row["wall_s"], upstream["wall_s"]),
                _ratio(row["step_ms"], plain[nnodes]["step_ms"]),
            ]
        lines.append("| " + " | ".join([variant, run_mode, topology, *cells]) + " |")
    return "\n".join(lines)


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _source_state() -> str:
    """The repository's commit, and whether the working tree differs from it (what `ours` ran)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "flyte_wandb_elastic"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"git {commit}" + (" with uncommitted changes under flyte_wandb_elastic/" if changed else "")


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "source": _source_state(),
        **{
            dist: _version(dist)
            for dist in ("torch", "wandb", "flyte", "flyteplugins-pytorch", "flyteplugins-wandb", "flyte-wandb-elastic")
        },
    }


# ---- main ----


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3, help="launches per row; the table shows medians")
    parser.add_argument("--quick", action="store_true", help="60 training steps per job instead of 300")
    parser.add_argument("--steps", type=int, help="training steps per job (overrides --quick)")
    parser.add_argument("--warmup", type=int, help="first steps left out of the step time (default 10, 5 with --quick)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a job is killed as failed")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the raw results of every job here")
    parser.add_argument("--keep", action="store_true", help="keep each job's temporary directory (logs, W&B files)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (60 if args.quick else 300)
    args.warmup = args.warmup if args.warmup is not None else (5 if args.quick else 10)
    if args.repeats < 1 or args.steps < 1 or not 0 <= args.warmup < args.steps:
        parser.error("need --repeats >= 1, --steps >= 1 and 0 <= --warmup < --steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = [(v, m, n) for n in NODE_COUNTS for m in RUN_MODES for v in VARIANTS]
    total = args.repeats * len(plan)
    print(f"{total} jobs, {args.steps} steps each ({args.warmup} warm-up)", file=sys.stderr)
    results: list[JobResult] = []
    started = time.monotonic()
    for repeat in range(args.repeats):
        for variant, run_mode, nnodes in plan:  # variants interleaved, so drift hits all of them alike
            label = f"[{len(results) + 1}/{total}] {variant:8} {run_mode:6} {nnodes}x{NPROC_PER_NODE}"
            print(label, end=" ", file=sys.stderr, flush=True)
            result = run_job(variant, run_mode, nnodes, repeat, args.steps, args.warmup, args.timeout, args.keep)
            results.append(result)
            status = f"{result.wall_s:.1f} s" if result.ok else "FAILED"
            leftover = f", {len(result.leftover)} leftover processes killed" if result.leftover else ""
            print(status + leftover, file=sys.stderr, flush=True)

    print(f"\n## W&B on torch elastic: {args.steps} steps, median of {args.repeats} repeat(s)\n")
    print(format_table(results))
    print(
        "\nTopology: nodes x ranks per node. plain ignores run_mode (its three rows per topology are the same job);"
        " the plain baseline of the ratios is the median over all plain jobs of the topology."
        '\nupstream runs with mode="offline" passed to `@wandb_init`: in shared mode, with WANDB_MODE=offline alone'
        ' its Settings(mode="shared") overrides the offline mode and wandb.init fails for want of an API key.'
    )
    if any(r.disturbed for r in results):
        print(
            f"{DISTURBED_MARK} During at least one of this row's jobs, processes outside the benchmark used more than"
            f" {DISTURBED_SHARE:.0%} of the machine's CPU time: its timings are disturbed."
        )
    failures = [r for r in results if not r.ok]
    if failures:
        print("\nFailed jobs:")
        for r in failures:
            first = (r.error or "unknown error").strip().splitlines()[0]
            print(f"- {r.variant} {r.run_mode} {r.nnodes}x{NPROC_PER_NODE} (repeat {r.repeat}): {first}")
    leftovers = [r for r in results if r.leftover]
    if leftovers:
        print("\nProcesses still alive 5 s after their job's node processes exited (killed):")
        for r in leftovers:
            print(f"- {r.variant} {r.run_mode} {r.nnodes}x{NPROC_PER_NODE}: " + "; ".join(r.leftover))

    return report_machine_and_save(results, args, started)


def report_machine_and_save(results: list[Any], args: argparse.Namespace, started: float) -> int:
    """Print the machine, the outside CPU load and the benchmark time; write `--json`; exit status 0."""
    info = machine()
    print("\nMachine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    measured = [r for r in results if r.other_cpu_s is not None and r.wall_s]
    if measured:
        capacity = sum(r.wall_s or 0 for r in measured) * (os.cpu_count() or 1)
        share = sum(r.other_cpu_s or 0 for r in measured) / capacity
        print(f"CPU used by processes outside the benchmark during its jobs: {share:.0%} (near 0% when undisturbed)")
    print(f"Benchmark time: {time.monotonic() - started:.0f} s")
    if args.json:
        payload = {
            "machine": info,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "jobs": [{**asdict(r), "disturbed": r.disturbed} for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"Raw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
