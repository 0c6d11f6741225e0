"""The storage requests of a real small job with `report=True`, counted by the S3 server itself.

    python -m benchmarks.bench_storage_requests [--steps 100] [--interval 1]

Launches a real 2 x 2 Elastic job (torch elastic, gloo on CPU, one W&B run per rank, offline, each
node with a disk of its own) whose run base directory is on a `moto_server` on loopback, with
`report=True` and `persist_interval=--interval`. The server's request log is read back:

- during the job: PUTs per rank per copy (objects written per copy of each rank's run directory),
  what kinds of object they are, and the LIST and GET calls of the report's refreshes;
- after it: one refresh of the report's reader (`StoredRuns`) from scratch and one with nothing
  new, and one `inspect` of the whole run base directory, each with its LIST, GET and HEAD calls.

The same script measures the package before and after a change to its storage layout.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO, launch
from tests.servers import S3Server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--step-s", type=float, default=0.1)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        s3 = S3Server(tmp / "s3")
        s3.start()
        try:
            _measure(tmp, s3, args)
        finally:
            s3.stop()


def _measure(tmp: Path, s3: S3Server, args: argparse.Namespace) -> None:
    base = s3.uri("bench", "r1")
    config = {"nnodes": 2, "nproc_per_node": 2, "report": True, "project": "p", "run_mode": "new",
              "persist_interval": args.interval}  # fmt: skip
    before = len(s3.requests())
    started = time.monotonic()
    job = launch(tmp / "job", config, {"steps": args.steps, "interval_s": args.step_s}, extra_env=s3.env(),
                 function="paced", run_base_dir=base, pods=True)  # fmt: skip
    wall_s = time.monotonic() - started
    assert job.errors == [], job.logs
    during = s3.requests()[before:]
    puts = [r for r in during if r.method == "PUT" and "/wandb/a0/" in r.path]
    kinds = collections.Counter(_kind(r.path) for r in puts)
    lists = [r for r in during if r.is_list]
    gets = [r for r in during if r.method == "GET" and not r.is_list]
    copies = args.steps * args.step_s / args.interval
    print(f"job: 2 x 2 ranks, {args.steps} rows each over ~{args.steps * args.step_s:.0f} s, "
          f"persist_interval {args.interval:g} s, wall {wall_s:.1f} s")  # fmt: skip
    print(f"PUTs of run files: {len(puts)} ({len(puts) / 4 / copies:.1f} per rank per interval); by kind: "
          + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))  # fmt: skip
    print(f"LIST calls during the job: {len(lists)}, GETs: {len(gets)}")
    objects = sum(1 for r in s3.list_keys("bench/r1/wandb/a0/"))
    print(f"objects stored under the action at the end: {objects}")

    import os

    from flyte_wandb_elastic._stored_runs import StoredRuns

    os.environ.update(s3.env())
    stored = StoredRuns(f"{base}/wandb/a0")
    for label in ("refresh from scratch", "refresh, nothing new"):
        mark = len(s3.requests())
        t0 = time.perf_counter()
        stored.refresh()
        took = time.perf_counter() - t0
        print(f"{label}: {_calls(s3.requests()[mark:])}, {took * 1000:.0f} ms, "
              f"rows {sum(w.rows for w in stored.writers.values())}")  # fmt: skip
    mark = len(s3.requests())
    done = subprocess.run([sys.executable, "-m", "flyte_wandb_elastic", "inspect", "--json", base], cwd=REPO,
                          env={**os.environ, **s3.env()}, capture_output=True, text=True, check=True)  # fmt: skip
    runs = json.loads(done.stdout)
    print(f"inspect: {_calls(s3.requests()[mark:])}, {len(runs)} runs, rows {[r['steps'] for r in runs]}")


def _kind(path: str) -> str:
    name = path.rsplit("/rank-", 1)[-1].split("/", 2)[-1]
    for kind in ("debug-internal.log", "debug-core.log", "debug.log", "output.log", "calls.log", ".wandb"):
        if kind in name:
            return kind
    if "manifest" in path:
        return "manifest"
    return name.rsplit("/", 1)[-1]


def _calls(requests: list) -> str:  # type: ignore[type-arg]
    counts = collections.Counter("LIST" if r.is_list else r.method for r in requests)
    return ", ".join(f"{k} {counts[k]}" for k in ("LIST", "GET", "HEAD", "PUT", "DELETE", "POST") if counts[k])


if __name__ == "__main__":
    main()
