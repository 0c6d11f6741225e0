"""Sync at scale: runs per second of `python -m flyte_wandb_elastic sync` beside W&B's own `wandb beta sync`.

    python -m benchmarks.bench_sync [--runs 1000] [--rows 100] [-n 4] [--storage local|s3] [--pairs K]

1. Writes `--runs` real offline W&B runs (distinct run ids, `--rows` rows each) with wandb itself,
   in one process, and keeps them under `--cache` for the next time.
2. Stores them as the ranks' copier does at their end (`RunFilesCopier.copy(final=True)`, one
   `rank-<r>` folder each), under a local directory or (`--storage s3`) in a `moto_server` on loopback.
3. Against a fresh `openwandb` on loopback each time: `python -m flyte_wandb_elastic sync -n N` of
   the stored runs (reading them back from storage included), then `wandb beta sync --yes -n N` of
   the same run directories as wandb wrote them (already on local disk); each checked by the
   server's own record of finished runs. Then a second `sync`, which must send nothing.

With `--pairs K` the runs are split in K parts, each synced by both in turn (who goes first
alternates, each part against fresh servers): a machine whose speed drifts over the tens of
minutes of a 1,000-run side (seen here: the same side 12 % slower on another day) weighs on both
alike. Prints runs per second for each, the ratio per part and in all, and the requests each
server received per run (from its access log). CPU heavy (the W&B server, wandb-core and the
readers share the machine): on a shared machine, run it under the launch lock.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO
from tests.servers import S3Server, WandbServer

_WRITE = """
import sys, wandb
count, rows = int(sys.argv[1]), int(sys.argv[2])
for i in range(count):
    run = wandb.init(id=f"s{i:05d}", project="p", entity="default", mode="offline", reinit="create_new",
                     config={"i": i})
    for x in range(rows):
        run.log({"x": x, "loss": 1.0 / (x + 1)})
    run.finish()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("-n", type=int, default=4, help="runs uploaded at a time, by both")
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "flyte-wandb-bench-sync")
    parser.add_argument("--only", choices=("ours", "theirs"), default=None, help="time one of the two")
    parser.add_argument(
        "--pairs", type=int, default=1, help="split the runs in this many parts, each timed by both in turn"
    )
    args = parser.parse_args()
    runs = _written_runs(args.cache, args.runs, args.rows)
    print(f"{len(runs)} offline runs of {args.rows} rows under {runs[0].parent}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp_name:
        tmp = Path(tmp_name)
        s3 = S3Server(tmp / "s3") if args.storage == "s3" else None
        if s3 is not None:
            s3.start()
        try:
            env = dict(s3.env()) if s3 is not None else {}
            walls: dict[str, float] = {"ours": 0.0, "theirs": 0.0}
            for k in range(args.pairs):
                part = runs[k * len(runs) // args.pairs : (k + 1) * len(runs) // args.pairs]
                where = tmp / f"part-{k}"
                base = s3.uri("bench", f"part-{k}") if s3 is not None else str(where / "storage")
                sides = [side for side in ("ours", "theirs") if args.only in (None, side)]
                pair: dict[str, float] = {}
                for side in sides if k % 2 == 0 else sides[::-1]:  # who goes first alternates
                    if side == "ours":
                        started = time.monotonic()
                        _store(part, base, env)
                        print(f"stored as the copier does ({args.storage}): {time.monotonic() - started:.1f} s")
                        pair[side] = _time_ours(where, base, env, len(part), args.n)
                    else:
                        pair[side] = _time_theirs(where, part, args.n)
                    walls[side] += pair[side]
                if len(pair) == 2 and args.pairs > 1:
                    print(f"part {k + 1}/{args.pairs}: ours / theirs {pair['ours'] / pair['theirs']:.3f}", flush=True)
            if args.only is None:
                print(f"all {len(runs)} runs: ours {walls['ours']:.1f} s, theirs {walls['theirs']:.1f} s, "
                      f"ours / theirs {walls['ours'] / walls['theirs']:.3f}", flush=True)  # fmt: skip
        finally:
            if s3 is not None:
                s3.stop()


def _written_runs(cache: Path, count: int, rows: int) -> list[Path]:
    """`count` offline run directories of `rows` rows each, written once and kept under `cache`."""
    where = cache / f"{count}x{rows}"
    found = sorted((where / "wandb").glob("offline-run-*"))
    if len(found) != count:
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        env.update(WANDB_DIR=str(where), WANDB_MODE="offline", WANDB_SILENT="true")
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", _WRITE, str(count), str(rows)], env=env, check=True)
        print(f"wrote {count} runs in {time.monotonic() - started:.0f} s", flush=True)
        found = sorted((where / "wandb").glob("offline-run-*"))
    assert len(found) == count, f"{len(found)} run directories under {where}"
    return found


def _store(runs: list[Path], base: str, env: dict[str, str]) -> None:
    """Copy each run directory to `base` as its rank's copier does at the rank's end (in a process of
    its own, with the storage's environment)."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom flyte_wandb_elastic._persist import RunFilesCopier\n"
        "base, dirs = sys.argv[1], sys.argv[2:]\n"
        "for rank, d in enumerate(dirs):\n"
        "    assert RunFilesCopier(Path(d), f'{base}/wandb/a0/rank-{rank}', interval_s=30).copy(final=True)\n"
    )
    subprocess.run([sys.executable, "-c", script, base, *map(str, runs)], env={**os.environ, **env}, check=True)


def _server(tmp: Path, name: str) -> WandbServer:
    server = WandbServer(tmp / name)
    os.environ["PYTHONUNBUFFERED"] = "1"  # the server's access log whole when it stops
    server.start()
    return server


def _requests_per_run(server: WandbServer, count: int) -> str:
    """The requests the server logged, per run (after `server.stop()`)."""
    log = (server.data_dir / "server.log").read_text(errors="replace")
    requests = log.count(' HTTP/1.1"')
    return f"{requests / count:.2f} requests per run"


def _clean_env(server: WandbServer, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, **server.env(), **extra}


def _finished(server: WandbServer) -> int:
    return sum(state == "finished" for state in server.runs().values())


def _time_ours(tmp: Path, base: str, storage_env: dict[str, str], count: int, n: int) -> float:
    server = _server(tmp, "openwandb-ours")
    try:
        env = _clean_env(server, storage_env)
        command = [sys.executable, "-m", "flyte_wandb_elastic", "sync", "-n", str(n), base]
        started = time.monotonic()
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        took = wall = time.monotonic() - started
        summary = done.stdout.strip().splitlines()[-1:] or [done.stderr[-2000:]]
        assert done.returncode == 0 and f"{count} synced" in summary[0], done.stdout[-2000:] + done.stderr[-2000:]
        assert _finished(server) == count, (_finished(server), count)
        print(f"ours:   python -m flyte_wandb_elastic sync -n {n}: {count} runs in {wall:.1f} s = "
              f"{count / wall:.2f} runs/s ({summary[0]})", flush=True)  # fmt: skip
        started = time.monotonic()
        again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - started
        assert again.returncode == 0 and f"0 synced, {count} already synced" in again.stdout, again.stdout[-2000:]
        print(f"ours:   a second sync sends nothing: {wall:.1f} s", flush=True)
    finally:
        server.stop()
    print(f"ours:   the server received {_requests_per_run(server, count)}", flush=True)
    return took


def _time_theirs(tmp: Path, runs: list[Path], n: int) -> float:
    # the same run directories, as wandb wrote them, in a fresh directory (no `.synced` marks)
    downloaded = tmp / "downloaded" / "wandb"
    downloaded.mkdir(parents=True)
    for run_dir in runs:
        shutil.copytree(run_dir, downloaded / run_dir.name, ignore=shutil.ignore_patterns("*.synced", "*.syncstate"))
    server = _server(tmp, "openwandb-theirs")
    try:
        wandb_cli = str(Path(sys.executable).parent / "wandb")
        command = [wandb_cli, "beta", "sync", "--yes", "-n", str(n), str(downloaded)]
        started = time.monotonic()
        done = subprocess.run(command, env=_clean_env(server, {}), cwd=tmp, capture_output=True, text=True)
        wall = time.monotonic() - started
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert _finished(server) == len(runs), (_finished(server), len(runs))
        print(f"theirs: wandb beta sync --yes -n {n}: {len(runs)} runs in {wall:.1f} s = "
              f"{len(runs) / wall:.2f} runs/s", flush=True)  # fmt: skip
    finally:
        server.stop()
    print(f"theirs: the server received {_requests_per_run(server, len(runs))}", flush=True)
    return wall


if __name__ == "__main__":
    main()
