"""The report's refresh and the copies at 8,192 writers, against a real S3 server, and what a refresh
running in rank 0's process costs its training step.

    python -m benchmarks.bench_refresh_at_scale [--writers 8192] [--per-node 8] [--intervals 3] [--rows 30]
                                                [--by summaries|copies]

Models a job of `--writers` writing ranks (1,024 nodes x 8 by default) with the package's own code
paths: each writer is a real run directory on its node's disk holding a real W&B `.wandb` log
(written offline by wandb itself, `--rows` rows of 4 metrics per interval), grown by one interval's
rows at a time and copied by the copier the ranks use (`RunFilesCopier`) to a `moto_server` on
loopback. With `--by summaries` (the default, as a task with `report=True` runs), each node's
summary writer (`NodeSummary`, as each node's first rank runs it) then reads its node's run
directories and stores the node's summary; with `--by copies`, no summary is written, and the
refresh reads every writer's copies (as for writers no summary holds). The report's reader
(`StoredRuns`, as rank 0's report thread runs it) refreshes after each interval. The S3 server's
own access log counts the requests. Prints, per interval: the copies' PUTs (and per writer), the
refresh's LIST and GET calls and its seconds, and the same for a refresh in which nothing changed
and one in which 1% of writers changed, so that the counts can be seen not to depend on the job's
length or on the writers that changed nothing.

Then rank 0's step: a modelled training step (a CPU matmul loop of about 50 ms, in the main thread)
is timed with no refresh, and while a refresh of every writer's new interval runs in a thread of
the same process at the report thread's lowered priority (with `--by summaries`, node 0's summary
writer too, which runs in rank 0's process); the ratio of mean step times is printed.
The S3 server is pinned to the last CPU and this process to the others, as storage lies outside
rank 0's pod.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.servers import S3Request, S3Server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writers", type=int, default=8192)
    parser.add_argument("--per-node", type=int, default=8, help="writers per node (sharing its disk)")
    parser.add_argument("--by", choices=("summaries", "copies"), default="summaries")
    parser.add_argument("--intervals", type=int, default=3)
    parser.add_argument("--rows", type=int, default=30, help="rows per writer per interval")
    parser.add_argument("--step-ms", type=float, default=50.0)
    parser.add_argument("--shares", default="", help="refresh shares to time the step at (default: the report's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        s3 = S3Server(tmp / "s3")
        s3.start()
        try:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) > 1:  # storage is not in rank 0's pod
                os.sched_setaffinity(s3.proc.pid, {cpus[-1]})
                os.sched_setaffinity(0, set(cpus[:-1]))
            os.environ.update(s3.env())
            _run(tmp, s3, args)
        finally:
            s3.stop()


def _kinds(requests: list[S3Request]) -> str:
    counts: dict[str, int] = {}
    for r in requests:
        kind = "LIST" if r.is_list else r.method
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{k} {n:,}" for k, n in sorted(counts.items())) or "none"


def _log(tmp: Path, rows: int) -> bytes:
    """A real offline run's `.wandb` log of `rows` rows of 4 metrics, written by wandb."""
    script = (
        "import wandb\n"
        "run = wandb.init(project='p', id='w', mode='offline')\n"
        f"for i in range({rows}):\n"
        "    run.log({'loss': 1 / (i + 1), 'lr': 3e-4, 'grad_norm': 1.0 + i % 7, 'tokens_per_s': 1e5 + i})\n"
        "run.finish()\n"
    )
    env = {"WANDB_DIR": str(tmp), "WANDB_MODE": "offline", "PATH": str(Path(sys.executable).parent)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    [log] = (tmp / "wandb").glob("offline-run-*/run-w.wandb")
    return log.read_bytes()


def _run(tmp: Path, s3: S3Server, args: argparse.Namespace) -> None:
    from flyte_wandb_elastic._node_summary import LocalRuns, NodeSummary
    from flyte_wandb_elastic._persist import RunFilesCopier
    from flyte_wandb_elastic._runfiles import _HEADER, parse_records
    from flyte_wandb_elastic._stored_runs import StoredRuns, to_json

    whole = _log(tmp / "written", args.rows * (args.intervals + 8))
    ends = [end for _, end in parse_records(whole, _HEADER)]
    records_per_row = max(1, len(ends) // (args.rows * (args.intervals + 8)))
    cut = [_HEADER] + [
        ends[min(len(ends) - 1, (k + 1) * args.rows * records_per_row)] for k in range(args.intervals + 8)
    ]
    held = [sum(r.WhichOneof("record_type") == "history" for r, _ in parse_records(whole[:c], _HEADER)) for c in cut]
    prefix = s3.uri("scale", "r1", "wandb", "a0")
    copiers = []
    nodes = -(-args.writers // args.per_node)
    for rank in range(args.writers):
        # each node's disk: its writers' run directories side by side, as in a pod
        run_dir = tmp / "pods" / f"node-{rank // args.per_node}" / "wandb" / f"offline-run-20260101_000000-w{rank}"
        run_dir.mkdir(parents=True)
        copiers.append((run_dir / "run-w.wandb", RunFilesCopier(run_dir, f"{prefix}/rank-{rank}", interval_s=3600)))
    summaries = [
        NodeSummary(
            LocalRuns(
                tmp / "pods" / f"node-{n}" / "wandb",
                {r: (f"w{r}", "") for r in range(n * args.per_node, min(args.writers, (n + 1) * args.per_node))},
            ),
            prefix,
            n,
            interval_s=3600,
        )
        for n in range(nodes)
    ]
    pool = ThreadPoolExecutor(32)
    summary_s: list[float] = []  # CPU seconds of each node's summary (run on its own node in a job)

    def copy_interval(
        k: int, which: list[int], node_0: bool = True, copy: bool = True
    ) -> tuple[list[S3Request], float]:
        mark = len(s3.requests())
        started = time.perf_counter()

        def one(i: int) -> None:
            log, copier = copiers[i]
            log.write_bytes(whole[: cut[k]])
            assert not copy or copier.copy()

        list(pool.map(one, which))
        if args.by == "summaries":
            changed = sorted({i // args.per_node for i in which} - ({0} if not node_0 else set()))

            def summed(n: int) -> None:
                cpu = time.thread_time()
                summaries[n].write()
                summary_s.append(time.thread_time() - cpu)

            list(pool.map(summed, changed))
        return s3.requests()[mark:], time.perf_counter() - started

    stored = StoredRuns(prefix)

    def refresh() -> tuple[str, float, float]:
        """The refresh's requests, its seconds, and its CPU seconds in this process."""
        mark = len(s3.requests())
        started, cpu = time.perf_counter(), time.thread_time()
        stored.refresh()
        return _kinds(s3.requests()[mark:]), time.perf_counter() - started, time.thread_time() - cpu

    every = list(range(args.writers))
    print(f"{args.writers:,} writers ({nodes:,} nodes x {args.per_node}), {args.rows} rows of 4 metrics per "
          f"writer per interval ({cut[1] - cut[0]:,} bytes of log each); the refresh reads {args.by}")  # fmt: skip
    print(
        "| interval | copies (and summaries): requests | per writer | node summaries: KB each, CPU s each "
        "| refresh: requests | s (on this S3 server) | CPU s | rows read |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k in range(1, args.intervals + 1):
        summary_s.clear()
        copied, _ = copy_interval(k, every)
        read, read_s, cpu_s = refresh()
        rows = sum(w.rows for w in stored.writers.values())
        assert rows == args.writers * held[k], (rows, "a refresh holds every row copied")
        puts = sum(r.method == "PUT" for r in copied)
        per_writer = f"{puts / args.writers:.2f} PUT"
        each = "-"
        if args.by == "summaries":
            sizes = [len(to_json(n, summaries[n].runs.writers, False)) for n in range(min(nodes, 20))]
            each = f"{statistics.mean(sizes) / 1000:.0f}, {statistics.mean(summary_s):.3f}"
        print(f"| {k} | {_kinds(copied)} | {per_writer} | {each} | {read} | {read_s:.1f} | {cpu_s:.1f} | {rows:,} |")
    read, read_s, cpu_s = refresh()
    print(f"\nrefresh with nothing new: {read}, {read_s:.2f} s, CPU {cpu_s:.2f} s")
    some = every[:: max(1, args.writers // max(1, args.writers // 100))][: max(1, args.writers // 100)]
    copy_interval(args.intervals + 1, some)
    read, read_s, cpu_s = refresh()
    print(f"refresh with {len(some)} writers (1%) changed: {read}, {read_s:.2f} s, CPU {cpu_s:.2f} s")

    # rank 0's step with and without a refresh of every writer's new interval running beside it,
    # the refresh paced as the report thread paces it (and node 0's summary, which rank 0 writes)
    from flyte_wandb_elastic._report import REFRESH_SHARE

    shares = [float(x) for x in args.shares.split(",")] if args.shares else [REFRESH_SHARE]
    print()
    rounds = [(share, model) for share in shares for model in ("gpu", "cpu")]
    for k, (share, model) in enumerate(rounds[:6], start=args.intervals + 2):
        stored.share = share
        # the refresh reads only the summaries: the logs grow on the nodes' disks, not copied again
        copy_interval(k, every, node_0=False, copy=args.by == "copies")
        without = _steps(model, args.step_ms, 4.0)
        during: list[float] = []
        took: list[float] = []

        def refresh_in_thread(took: list[float] = took) -> None:
            from flyte_wandb_elastic._rank_run import lower_this_threads_priority

            lower_this_threads_priority(lowest=True)  # as the report's thread
            started, cpu = time.perf_counter(), time.thread_time()
            if args.by == "summaries":
                summaries[0].write()
            stored.refresh()
            took.extend([time.perf_counter() - started, time.thread_time() - cpu])

        thread = threading.Thread(target=refresh_in_thread)
        thread.start()
        during = _steps(model, args.step_ms, 0.0, until=thread)
        thread.join()
        after = _steps(model, args.step_ms, 4.0)
        base = without + after
        print(f"share {share:g}: rank 0's step ({MODELS[model]}): "
              f"{statistics.mean(base) * 1000:.1f} ms without a refresh "
              f"({len(base)} steps), {statistics.mean(during) * 1000:.1f} ms while a refresh of "
              f"{args.writers:,} writers ran ({len(during)} steps; the refresh took {took[0]:.2f} s, "
              f"{took[1]:.2f} s of CPU): "
              f"ratio {statistics.mean(during) / statistics.mean(base):.3f}")  # fmt: skip
    pool.shutdown()


MODELS = {
    "gpu": "a GPU rank's: 200 small torch ops dispatched, then the device's time as a wait that releases the GIL",
    "cpu": "CPU-bound: 256 x 256 matmuls on one thread",
}


def _steps(model: str, step_ms: float, seconds: float, until: threading.Thread | None = None) -> list[float]:
    """Time modelled training steps of about `step_ms` for `seconds`, or while `until` runs."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    small = torch.randn(8, 8)
    reps = max(1, int(step_ms / _matmul_ms()))
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while (until is not None and until.is_alive()) or (until is None and time.perf_counter() < deadline):
        started = time.perf_counter()
        if model == "gpu":
            x = small
            for _ in range(200):  # the Python side of a step: ops dispatched one by one
                x = torch.tanh(x * 0.5 + 0.1)
            time.sleep(step_ms / 1000)  # the device computes; the thread waits without the GIL
        else:
            for _ in range(reps):
                a = torch.tanh(a @ a * 1e-2)
        out.append(time.perf_counter() - started)
    return out


_CALIBRATED: list[float] = []


def _matmul_ms() -> float:
    import torch

    if not _CALIBRATED:
        x = torch.randn(256, 256)
        started = time.perf_counter()
        for _ in range(50):
            x = torch.tanh(x @ x * 1e-2)
        _CALIBRATED.append((time.perf_counter() - started) / 50 * 1000)
    return _CALIBRATED[0]


if __name__ == "__main__":
    main()
