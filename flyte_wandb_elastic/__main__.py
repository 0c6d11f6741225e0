"""Command line of `python -m flyte_wandb_elastic`.

- `inspect [--json] [DIR]` prints what each offline run file under DIR holds.
- `layout --run-mode M --rank-scope S --nodes N --nproc-per-node P` pictures which ranks of such a
  job write which runs, from the same planner as the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ._diagram import layout_diagram
from ._options import RANK_SCOPES, RUN_MODES, WandbOptions
from ._runfiles import format_table, read_run_files


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m flyte_wandb_elastic")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="one row per offline W&B run file under DIR")
    inspect.add_argument(
        "dir", nargs="?", default=os.environ.get("WANDB_DIR", "."), help="a WANDB_DIR or its wandb/ folder"
    )
    inspect.add_argument("--json", action="store_true", help="print a JSON list, one object per run file")
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
    runs = read_run_files(args.dir)
    if args.json:
        print(json.dumps([run.as_dict() for run in runs], indent=2))
        return 0 if runs else 1
    if not runs:
        print(f"no W&B run files under {args.dir}", file=sys.stderr)
        return 1
    print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
