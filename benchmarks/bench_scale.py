"""W&B start-up at scale, and with a W&B server that never answers: plain vs. upstream vs. this package.

Run from the repository root, in the project's virtualenv (`pip install -e '.[test,bench]'`; Linux):

    python benchmarks/bench_scale.py                        # nproc 1, 2, 4, 8; slow server in auto, shared, new
    python benchmarks/bench_scale.py --quick --repeats 1    # nproc 1, 2; slow server in new only; 50 steps
    python benchmarks/bench_scale.py --nproc 2 --modes new --slow-modes ""   # one scale configuration only
    python benchmarks/bench_scale.py --json results.json    # also write every job's raw results

Every job is one node (a fresh OS process that runs the task as a Flyte pod does; see `bench_elastic`)
with `nproc_per_node` torch elastic workers running a light body: no process group, one 16x16 matmul
per step, 10 scalars logged per step by every rank that has a run (`BENCH_BODY=light` in
`bench_tasks`). Variants: `plain` (a plain `Elastic`, no W&B; run once per nproc, it has no
run_mode), `upstream` (`flyteplugins.wandb.wandb_init`) and `ours` (`WandbElastic`, background start).

1. Scale, W&B offline: for each nproc_per_node and run_mode, the most wandb-core and wandb-symon
   processes alive at once, the peak summed resident memory (RSS) of the job's processes, the W&B
   memory per writer (peak RSS over plain's at the same nproc, divided by the run files written),
   rank 0's and the slowest rank's time from launch to the first step, the job wall time, and the
   rows lost (rows expected from the ranks with a run minus rows in the offline run files).
2. `log` before W&B is ready: one `ours` job (new, 1 x 2) whose logging ranks time 1000 single
   `get_wandb_run().log(...)` calls at the very start of the function; the median and worst
   of the calls made while the run was still opening (queued), on the training thread.
3. Slow server: a TCP server on 127.0.0.1 that accepts connections and never answers; W&B online
   (mode="online", host=http://127.0.0.1:<port>, WANDB_API_KEY of 40 x's, init_timeout=20) for
   `ours` (background start), `ours` with blocking_init=True and `upstream`, against `ours` offline,
   1 x 2. Per scenario: time to first step, against the offline one; how many of the run files are
   offline fallback files (`offline-run-*`, read with `flyte_wandb_elastic.read_run_files`) and the
   rows lost; job wall time and the wall time left after the last rank's function returned. A job
   that outlives --slow-timeout is killed and shown as "timed out".

Tables show medians over the repeats that succeeded; rows lost is the worst repeat and the process
counts the most seen in any repeat. A dagger marks a row whose jobs shared the machine with more
than 10% of outside CPU load: leave the machine idle. Last, each target of the issue is checked.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_elastic import (
    DISTURBED_MARK,
    JobResult,
    _fmt,
    _median,
    _ratio,
    report_machine_and_save,
    run_job,
)

NPROCS = (1, 2, 4, 8)
RUN_MODES = ("auto", "shared", "new")
INIT_TIMEOUT_S = 20
PROBE_CALLS = 1000
SLOW_SCENARIOS: dict[str, tuple[str, dict[str, Any] | None]] = {  # label: variant, W&B options (None: offline)
    "ours offline": ("ours", None),
    "ours": ("ours", {}),
    "ours blocking_init": ("ours", {"blocking_init": True}),
    "upstream": ("upstream", {}),
}


@dataclass
class Spec:
    """One job to launch; `label` is "scale", "probe" or a slow-server scenario."""

    label: str
    variant: str
    run_mode: str
    nproc: int
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.label, self.variant, self.run_mode, self.nproc


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers; yields its port."""
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, name="silent-server", daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def plan(args: argparse.Namespace, port: int) -> list[Spec]:
    """The jobs of one repeat, variants interleaved so that drift hits all of them alike."""
    light = {"BENCH_BODY": "light"}
    specs = []
    for nproc in args.nproc:
        specs.append(Spec("scale", "plain", "auto", nproc, args.timeout, light))
        for mode in args.modes:
            specs += [Spec("scale", v, mode, nproc, args.timeout, light) for v in ("upstream", "ours")]
    if not args.no_probe:
        specs.append(Spec("probe", "ours", "new", 2, args.timeout, {**light, "BENCH_LOG_PROBE": str(PROBE_CALLS)}))
    online = {"mode": "online", "host": f"http://127.0.0.1:{port}", "init_timeout": INIT_TIMEOUT_S}
    online_env = {**light, "WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40}
    for mode in args.slow_modes:
        for label, (variant, options) in SLOW_SCENARIOS.items():
            if options is None:
                specs.append(Spec(label, variant, mode, 2, args.slow_timeout, light))
            else:
                env = {**online_env, "BENCH_WANDB_OPTIONS": json.dumps({**online, **options})}
                specs.append(Spec(label, variant, mode, 2, args.slow_timeout, env))
    return specs


# ---- per job, then per row ----


def writers(job: JobResult) -> int:
    return sum("rows" in f for f in job.run_files)


def rows_lost(job: JobResult) -> int:
    """Rows that ranks with a run logged but no run file holds."""
    expected = sum(r["steps"] for r in job.ranks if r["has_run"])
    return expected - sum(f.get("rows", 0) for f in job.run_files)


def offline_files(job: JobResult) -> str:
    return f"{sum(f.get('run_dir', '').startswith('offline-run-') for f in job.run_files)}/{len(job.run_files)}"


METRICS = (
    "wall_s",
    "first_step_rank0_s",
    "first_step_slowest_s",
    "after_last_return_s",
    "peak_mb",
)


def summarize(results: list[JobResult]) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """Medians per (label, variant, run_mode, nproc) over the repeats that succeeded."""
    groups: dict[tuple[str, str, str, int], list[JobResult]] = {}
    for r in results:
        groups.setdefault((r.label, r.variant, r.run_mode, r.nproc_per_node), []).append(r)
    rows = {}
    for key, jobs in groups.items():
        good = [j for j in jobs if j.ok]
        rows[key] = {
            "ok": len(good),
            "jobs": len(jobs),
            "status": "ok" if good else "timed out" if any(j.timed_out for j in jobs) else "failed",
            "disturbed": any(j.disturbed for j in jobs),
            "writers": _median(writers(j) for j in good),
            "rows_lost": max((rows_lost(j) for j in good), default=None),
            "offline_files": offline_files((good or jobs)[-1]),
            "any_wall_s": _median(j.wall_s for j in jobs),  # failed jobs too: how long they took to fail
            **{m: _median(getattr(j, m) for j in good) for m in METRICS},
            **{m: max((getattr(j, m) for j in good), default=None) for m in ("max_wandb_core", "max_wandb_symon")},
        }
    return rows


def _wall(row: dict[str, Any]) -> str:
    """The wall time cell: the median (how many repeats succeeded, if not all), or how long the jobs took to fail."""
    if row["wall_s"] is None:
        text = f"{row['status']} after {_fmt(row['any_wall_s'], 1)} s"
    else:
        text = _fmt(row["wall_s"]) + (f" ({row['ok']}/{row['jobs']} ok)" if row["ok"] < row["jobs"] else "")
    return text + (f" {DISTURBED_MARK}" if row["disturbed"] else "")


def _table(columns: tuple[str, ...], lines: list[dict[str, str]], missing: list[str]) -> str:
    """A markdown table; a cell a line lacks shows that line's entry of `missing` (why it has no value)."""
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for cells, why in zip(lines, missing, strict=True):
        out.append("| " + " | ".join(cells.get(c, why) for c in columns) + " |")
    return "\n".join(out)


def _extra_mb(rows: dict, variant: str, mode: str, nproc: int) -> float | None:
    """A row's peak RSS over plain's at the same nproc."""
    row, plain = rows.get(("scale", variant, mode, nproc)), rows.get(("scale", "plain", "auto", nproc))
    if not row or not plain or row["peak_mb"] is None or plain["peak_mb"] is None:
        return None
    return row["peak_mb"] - plain["peak_mb"]


SCALE_COLUMNS = (
    "variant",
    "run_mode",
    "nproc",
    "wandb-core+symon",
    "peak RSS MB",
    "W&B MB per writer",
    "first step rank0 s",
    "first step slowest s",
    "wall s",
    "rows lost",
    "rank0 first step vs plain",
    "wall vs upstream",
)


def scale_table(rows: dict, nprocs: list[int], modes: list[str]) -> str:
    lines, missing = [], []
    for nproc in nprocs:
        plain = rows.get(("scale", "plain", "auto", nproc)) or {}
        for variant, mode in [("plain", "auto")] + [(v, m) for m in modes for v in ("upstream", "ours")]:
            row = rows.get(("scale", variant, mode, nproc))
            if row is None:
                continue
            cells = {"variant": variant, "run_mode": "-" if variant == "plain" else mode, "nproc": str(nproc)}
            cells["wall s"] = _wall(row)
            if row["wall_s"] is not None:
                extra = _extra_mb(rows, variant, mode, nproc)
                upstream = rows.get(("scale", "upstream", mode, nproc)) or {}
                cells |= {
                    "wandb-core+symon": f"{row['max_wandb_core']}+{row['max_wandb_symon']}",
                    "peak RSS MB": _fmt(row["peak_mb"], 0),
                    "W&B MB per writer": _fmt(extra / row["writers"], 0)
                    if extra is not None and row["writers"]
                    else "-",
                    "first step rank0 s": _fmt(row["first_step_rank0_s"]),
                    "first step slowest s": _fmt(row["first_step_slowest_s"]),
                    "rows lost": str(row["rows_lost"]),
                    "rank0 first step vs plain": _ratio(row["first_step_rank0_s"], plain.get("first_step_rank0_s")),
                    "wall vs upstream": "-" if variant != "ours" else _ratio(row["wall_s"], upstream.get("wall_s")),
                }
            lines.append(cells)
            missing.append(row["status"])
    return _table(SCALE_COLUMNS, lines, missing)


SLOW_COLUMNS = (
    "scenario",
    "run_mode",
    "first step rank0 s",
    "first step slowest s",
    "rank0 vs offline",
    "offline files",
    "rows lost",
    "wall s",
    "after last return s",
)


def slow_table(rows: dict, modes: list[str]) -> str:
    lines, missing = [], []
    for mode in modes:
        offline = rows.get(("ours offline", "ours", mode, 2)) or {}
        for label, (variant, _) in SLOW_SCENARIOS.items():
            row = rows.get((label, variant, mode, 2))
            if row is None:
                continue
            cells = {"scenario": label, "run_mode": mode, "offline files": row["offline_files"], "wall s": _wall(row)}
            if row["wall_s"] is not None:
                cells |= {
                    "first step rank0 s": _fmt(row["first_step_rank0_s"]),
                    "first step slowest s": _fmt(row["first_step_slowest_s"]),
                    "rank0 vs offline": _ratio(row["first_step_rank0_s"], offline.get("first_step_rank0_s")),
                    "rows lost": str(row["rows_lost"]),
                    "after last return s": _fmt(row["after_last_return_s"]),
                }
            lines.append(cells)
            missing.append("-")
    return _table(SLOW_COLUMNS, lines, missing)


def probe_summary(results: list[JobResult]) -> dict[str, Any] | None:
    """The `log` cost before W&B is ready, over every logging rank of every probe job."""
    probes = [r["log_probe"] for j in results if j.label == "probe" and j.ok for r in j.ranks if r.get("log_probe")]
    timed = [p for p in probes if p["queued"]]
    if not probes:
        return None
    return {
        "ranks": len(probes),
        "queued_per_rank": _median(p["queued"] for p in probes),
        "median_us": _median(p["median_us"] for p in timed),
        "max_us": max((p["max_us"] for p in timed), default=None),
    }


# ---- against the targets ----


def _verdict(name: str, detail: str, ok: bool | None) -> str:
    return f"{name}: {detail or '-'}: {'n/a' if ok is None else 'met' if ok else 'MISSED'}"


def targets(rows: dict, args: argparse.Namespace, probe: dict[str, Any] | None) -> list[str]:
    """One line per target of the issue: what was measured, and whether it meets the target."""

    def value(label: str, variant: str, mode: str, nproc: int, metric: str) -> Any:
        return (rows.get((label, variant, mode, nproc)) or {}).get(metric)

    out = []
    plain = value("scale", "plain", "auto", 2, "first_step_rank0_s")
    first = {m: value("scale", "ours", m, 2, "first_step_rank0_s") for m in args.modes}
    ratios = {m: v / plain for m, v in first.items() if v is not None and plain}
    detail = ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items())
    ok = all(r <= 1.05 for r in ratios.values()) if ratios else None
    out.append(_verdict("rank 0 first step <= plain x1.05 (ours, 1x2)", detail, ok))

    slow = []
    for mode in args.slow_modes:
        first_slow = value("ours", "ours", mode, 2, "first_step_rank0_s")
        offline = value("ours offline", "ours", mode, 2, "first_step_rank0_s")
        if first_slow is not None and offline:
            slow.append((mode, first_slow / offline, value("ours", "ours", mode, 2, "rows_lost")))
    detail = ", ".join(f"{m} {r:.2f}x, {lost} rows lost" for m, r, lost in slow)
    ok = all(r <= 1.05 and lost == 0 for _, r, lost in slow) if slow else None
    out.append(_verdict("slow server: first step <= offline x1.05, no row lost (ours)", detail, ok))

    cores = {n: value("scale", "ours", "new", n, "max_wandb_core") for n in args.nproc if "new" in args.modes}
    detail = ", ".join(f"nproc {n}: {c}" for n, c in cores.items())
    ok = all(c == 1 for c in cores.values()) if cores else None
    out.append(_verdict("wandb-core per node in new = 1 (ours)", detail, ok))

    lo, hi = min(args.nproc), max(args.nproc)
    for mode in (m for m in ("new", "shared") if m in args.modes and hi > lo):
        slope = {}
        for variant in ("ours", "upstream"):
            a, b = _extra_mb(rows, variant, mode, lo), _extra_mb(rows, variant, mode, hi)
            slope[variant] = (b - a) / (hi - lo) if a is not None and b is not None else None
        ours, upstream = slope["ours"], slope["upstream"]
        detail = f"ours {_fmt(ours, 0)} MB, upstream {_fmt(upstream, 0)} MB ({_ratio(ours, upstream)})"
        ok = ours / upstream <= 0.6 if ours is not None and upstream else None
        out.append(
            _verdict(f"W&B memory per extra logging rank <= 0.6x upstream ({mode}, nproc {lo}-{hi})", detail, ok)
        )

    walls = [
        (value("scale", "ours", m, n, "wall_s"), value("scale", "upstream", m, n, "wall_s"))
        for n in args.nproc
        for m in args.modes
    ]
    walls = [(o, u) for o, u in walls if o is not None and u is not None]
    below = sum(o <= u for o, u in walls)
    ok = below == len(walls) if walls else None
    out.append(_verdict("wall <= upstream in every scale row", f"{below} of {len(walls)} rows", ok))

    median_us = probe["median_us"] if probe else None
    ok = median_us < 50 if median_us is not None else None
    out.append(_verdict("log() before W&B is ready < 50 us", f"median {_fmt(median_us, 1)} us", ok))
    return out


# ---- main ----


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _mode_list(text: str) -> list[str]:
    modes = [x.strip() for x in text.split(",") if x.strip()]
    if any(m not in RUN_MODES for m in modes):
        raise argparse.ArgumentTypeError(f"run modes are {', '.join(RUN_MODES)}")
    return modes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="nproc 1,2, slow server in new only, 50 steps")
    parser.add_argument("--repeats", type=int, default=3, help="launches per row; the tables show medians")
    parser.add_argument("--nproc", type=_int_list, help="ranks per node, comma-separated (default 1,2,4,8)")
    parser.add_argument("--modes", type=_mode_list, help="run modes of the scale jobs (default auto,shared,new)")
    parser.add_argument("--slow-modes", type=_mode_list, help='slow-server run modes ("" for none)')
    parser.add_argument("--no-probe", action="store_true", help="skip the log-before-ready probe job")
    parser.add_argument("--steps", type=int, help="steps per job (default 200, 50 with --quick)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a scale job is killed")
    parser.add_argument("--slow-timeout", type=float, default=120.0, help="seconds before a slow-server job is killed")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the raw results of every job here")
    parser.add_argument("--keep", action="store_true", help="keep each job's temporary directory")
    args = parser.parse_args(argv)
    args.nproc = args.nproc or ([1, 2] if args.quick else list(NPROCS))
    args.modes = args.modes if args.modes is not None else list(RUN_MODES)
    if args.slow_modes is None:
        args.slow_modes = ["new"] if args.quick else list(RUN_MODES)
    args.steps = args.steps or (50 if args.quick else 200)
    if args.repeats < 1 or args.steps < 1 or not args.nproc or min(args.nproc) < 1:
        parser.error("need --repeats >= 1, --steps >= 1 and every --nproc >= 1")
    return args


def _reason(error: str | None) -> str:
    """The first line of a job's error, with the failing worker's own message when torch elastic reports one."""
    text = (error or "unknown error").strip()
    first = text.splitlines()[0]
    match = re.search(r"'message': ['\"](.+?)(?:\\n|['\"],)", text)
    return f"{first} {match.group(1)}" if match else first


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: list[JobResult] = []
    started = time.monotonic()
    with silent_server() if args.slow_modes else nullcontext(0) as port:
        specs = plan(args, port)
        total = args.repeats * len(specs)
        print(f"{total} jobs, {args.steps} steps each", file=sys.stderr)
        for repeat in range(args.repeats):
            for spec in specs:
                label = (
                    f"[{len(results) + 1}/{total}] {spec.label:18} {spec.variant:8} {spec.run_mode:6} 1x{spec.nproc}"
                )
                print(label, end=" ", file=sys.stderr, flush=True)
                result = run_job(
                    spec.variant,
                    spec.run_mode,
                    1,
                    repeat,
                    args.steps,
                    min(5, args.steps - 1),
                    spec.timeout_s,
                    args.keep,
                    nproc_per_node=spec.nproc,
                    extra_env=spec.env,
                    label=spec.label,
                )
                results.append(result)
                status = "ok" if result.ok else "TIMED OUT" if result.timed_out else "FAILED"
                print(f"{_fmt(result.wall_s, 1)} s {status}", file=sys.stderr, flush=True)

    rows = summarize(results)
    print(f"\n## Scale, W&B offline: one node, {args.steps} steps, median of {args.repeats} repeat(s)\n")
    print(scale_table(rows, args.nproc, args.modes))
    probe = probe_summary(results)
    if probe:
        print(
            f"\nlog() before W&B is ready (ours, new, 1x2, {PROBE_CALLS} calls at the function's start,"
            f" {probe['ranks']} ranks): median {_fmt(probe['median_us'], 1)} us, worst {_fmt(probe['max_us'], 0)} us,"
            f" {_fmt(probe['queued_per_rank'], 0)} calls per rank queued"
        )
    if args.slow_modes:
        print(f"\n## Slow server (accepts, never answers), init_timeout={INIT_TIMEOUT_S}, 1x2\n")
        print(slow_table(rows, args.slow_modes))
    print("\n## Against the targets\n")
    print("\n".join(f"- {line}" for line in targets(rows, args, probe)))

    failures = [r for r in results if not r.ok]
    if failures:
        print("\nFailed jobs:")
        for r in failures:
            print(f"- {r.label} {r.variant} {r.run_mode} 1x{r.nproc_per_node} (repeat {r.repeat}): {_reason(r.error)}")
    leftovers = [r for r in results if r.leftover]
    if leftovers:
        print("\nProcesses still alive 5 s after their job's node process exited (killed):")
        for r in leftovers:
            print(f"- {r.label} {r.variant} {r.run_mode} 1x{r.nproc_per_node}: " + "; ".join(r.leftover))
    return report_machine_and_save(results, args, started)


if __name__ == "__main__":
    sys.exit(main())
