"""Command line: `python -m flyte_wandb_elastic inspect [DIR]` prints what each offline run file holds."""

from __future__ import annotations

import argparse
import os
import sys

from ._runfiles import format_table, read_run_files


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m flyte_wandb_elastic")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="one row per offline W&B run file under DIR")
    inspect.add_argument(
        "dir", nargs="?", default=os.environ.get("WANDB_DIR", "."), help="a WANDB_DIR or its wandb/ folder"
    )
    args = parser.parse_args(argv)
    runs = read_run_files(args.dir)
    if not runs:
        print(f"no W&B run files under {args.dir}", file=sys.stderr)
        return 1
    print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
