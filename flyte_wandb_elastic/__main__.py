"""Command line of `python -m flyte_wandb_elastic`.

- `inspect [--json] [URI]` prints what each W&B run file under URI holds: a `WANDB_DIR`, or the
  copies in storage (a Flyte run's base directory, or anything under it, local or `s3://...`).
  Non-finite values read as W&B prints them: `NaN`, `Infinity`, `-Infinity` (strings in `--json`,
  which stays strict JSON).
- `sync [-n N] [--ranks R,...] URI` uploads every run stored under URI (or only those of the ranks
  named) to the W&B server of the environment.
- `layout --run-mode M --rank-scope S --nodes N --nproc-per-node P` pictures which ranks of such a
  job write which runs, from the same planner as the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ._diagram import layout_diagram
from ._options import RANK_SCOPES, RUN_MODES, WandbOptions
from ._persist import fetch_copies
from ._runfiles import format_table, read_run_files
from ._sync import DEFAULT_PARALLEL, SyncError, sync


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m flyte_wandb_elastic")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="one row per W&B run file under URI")
    inspect.add_argument(
        "dir",
        nargs="?",
        default=os.environ.get("WANDB_DIR", "."),
        metavar="URI",
        help="a WANDB_DIR, or where the run files were copied (a run base dir, local or s3://...)",
    )
    inspect.add_argument("--json", action="store_true", help="print a JSON list, one object per run file")
    upload = commands.add_parser("sync", help="upload every run stored under URI to W&B")
    upload.add_argument("uri", metavar="URI", help="a Flyte run's base dir (local or s3://...), or anything under it")
    upload.add_argument("-n", type=int, default=DEFAULT_PARALLEL, help="runs uploaded at a time")
    upload.add_argument(
        "--ranks",
        type=_ranks,
        default=None,
        metavar="R,...",
        help="only these global ranks' runs (comma-separated, e.g. 17,42)",
    )
    layout = commands.add_parser("layout", help="which ranks of a job write which W&B runs")
    layout.add_argument("--run-mode", choices=RUN_MODES, default="auto")
    layout.add_argument("--rank-scope", choices=RANK_SCOPES, default="global")
    layout.add_argument("--nodes", type=int, default=2, help="nnodes, or replicas of a clustered task")
    layout.add_argument("--nproc-per-node", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "layout":
        if args.nodes < 1 or args.nproc_per_node < 1:
            parser.error("--nodes and --nproc-per-node must be at least 1")
        options = WandbOptions(run_mode=args.run_mode, rank_scope=args.rank_scope)
        print(layout_diagram(options, args.nodes, args.nproc_per_node))
        return 0
    if args.command == "sync":
        return _sync(args.uri, args.n, args.ranks)
    with tempfile.TemporaryDirectory(prefix="flyte-wandb-elastic-") as tmp:
        try:
            runs = read_run_files(fetch_copies(args.dir, Path(tmp)))
        except FileNotFoundError as exc:
            print(exc, file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps([run.as_dict() for run in runs], indent=2, allow_nan=False))
            return 0 if runs else 1
    if not runs:
        print(f"no W&B run files under {args.dir}", file=sys.stderr)
        return 1
    print(format_table(runs))
    return 0


def _ranks(text: str) -> frozenset[int]:
    """`--ranks 17,42`: the global ranks named."""
    try:
        ranks = frozenset(int(part) for part in text.split(","))
    except ValueError:
        ranks = frozenset({-1})
    if not ranks or min(ranks) < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: expected global ranks separated by commas, e.g. 17,42"
        )
    return ranks


def _sync(uri: str, parallel: int, ranks: frozenset[int] | None = None) -> int:
    try:
        report = sync(uri, parallel, ranks)
    except (SyncError, FileNotFoundError) as exc:
        print(f"sync: {exc}", file=sys.stderr)
        return 2
    for remote in report.synced:
        unended = " (no end recorded: the next sync sends it again)" if remote in report.unended else ""
        print(f"synced   {remote}{unended}")
    for remote in report.skipped:
        print(f"skipped  {remote} (already synced)")
    for remote, error in report.failed.items():
        print(f"FAILED   {remote}: {error}", file=sys.stderr)
    print(f"{len(report.synced)} synced, {len(report.skipped)} already synced, {len(report.failed)} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
