"""What one copy of a run's files to storage sends, for a run of 100,000 rows.

    python -m benchmarks.bench_persist [--rows 100000] [--copies 10] [--s3]

Logs `--rows` rows to a real offline W&B run and copies its run directory `--copies` times along
the way with the copier the ranks use (to a local directory, or with `--s3` to a `moto_server`
started on loopback, through Flyte's storage layer). Prints, per copy, the rows so far, the size
of the `.wandb` log and the bytes that copy sent: each copy sends what was logged since the last
one, not the whole file. Finally it reads the copies back and checks that every row is there.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--s3", action="store_true", help="copy to a moto_server on loopback")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(WANDB_MODE="offline", WANDB_DIR=tmp, WANDB_SILENT="true")
        server = None
        if args.s3:
            from tests.servers import S3Server

            server = S3Server(Path(tmp, "s3"))
            server.start()
            os.environ.update(server.env())
            prefix = server.uri("bench", "rank-0")
        else:
            prefix = str(Path(tmp, "storage", "rank-0"))
        try:
            _run(args.rows, args.copies, prefix, Path(tmp))
        finally:
            if server is not None:
                server.stop()


def _run(rows: int, copies: int, prefix: str, tmp: Path) -> None:
    import wandb

    from flyte_wandb_elastic._persist import RunFilesCopier, fetch_copies
    from flyte_wandb_elastic._runfiles import read_run_files

    run = wandb.init(project="bench", settings=wandb.Settings(x_transaction_log_flush_interval=0.5))
    copier = RunFilesCopier(run.settings.sync_dir, prefix, interval_s=3600)
    log_file = next(Path(run.settings.sync_dir).glob("run-*.wandb"))
    print(f"{'copy':>4}  {'rows so far':>11}  {'.wandb bytes':>12}  {'sent by this copy':>17}  {'copy s':>6}")
    per_copy = rows // copies
    for copy in range(1, copies + 1):
        for i in range((copy - 1) * per_copy, copy * per_copy):
            run.log({"loss": 1.0 / (i + 1), "step_value": i})
        time.sleep(1.0)  # one transaction-log flush
        before = copier.bytes_sent
        started = time.perf_counter()
        copier.copy()
        took = time.perf_counter() - started
        print(
            f"{copy:>4}  {copy * per_copy:>11,}  {log_file.stat().st_size:>12,}  "
            f"{copier.bytes_sent - before:>17,}  {took:>6.3f}"
        )
    run.finish()
    before = copier.bytes_sent
    copier.final_copy(60, synced=False)
    print(f"last  {'(finish)':>11}  {log_file.stat().st_size:>12,}  {copier.bytes_sent - before:>17,}")
    print(f"total sent {copier.bytes_sent:,} bytes for a {log_file.stat().st_size:,}-byte log")
    [stored] = read_run_files(fetch_copies(prefix, tmp / "read-back"))
    assert len(stored.rows) == rows, (len(stored.rows), rows)
    print(f"read back from storage: {len(stored.rows):,} rows, exit code {stored.exit_code}")


if __name__ == "__main__":
    main()
