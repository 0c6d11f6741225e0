"""Any number of seeded faults over both engines, and a table of what held.

    python -m benchmarks.bench_faults --faults 100 --seed 0 [--json results.jsonl]

Fault `i` is drawn from seed `SEED + i` (`tests.faults.draw`), so any row replays alone with
`--faults 1 --seed <its seed>`. Each runs a real 2 x 2 launch against a W&B server and an S3
server on loopback (about 30-60 s each on 2 cores). Prints one row per fault: kind, engine, mode,
moment, the job's outcome, each invariant, and the rows kept out of the rows due; then a summary
by fault kind.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faults", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="append one JSON line per fault to this file")
    args = parser.parse_args()

    from tests.faults import INVARIANTS, as_row, draw, harness_error, run_fault
    from tests.servers import S3Server, WandbServer

    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        s3, wandb_server = S3Server(Path(tmp, "s3")), WandbServer(Path(tmp, "openwandb"))
        s3.start()
        wandb_server.start()
        held: Counter[str] = Counter()
        try:
            columns = ["seed", "engine", "fault", "mode", "at_s", "job", *INVARIANTS, "rows kept", "details"]
            print("| " + " | ".join(columns) + " |")
            print("|" + "---|" * len(columns))
            for i in range(args.faults):
                fault = draw(args.seed + i)
                try:
                    row = as_row(run_fault(fault, Path(tmp, f"fault-{i}"), s3, wandb_server))
                except Exception as exc:  # the harness itself failed: a row that says so, held by nothing
                    row = harness_error(fault, exc)
                cells = [
                    ("yes" if v else "**NO**") if isinstance(v, bool) else " ".join(str(v).replace("|", "/").split())
                    for v in row.values()
                ]
                print("| " + " | ".join(cells) + " |", flush=True)
                held.update(name for name in INVARIANTS if row[name])
                if args.json:
                    with open(args.json, "a") as out:
                        out.write(json.dumps(row) + "\n")
        finally:
            wandb_server.stop()
            s3.stop()
        print()
        print(", ".join(f"{name}: held {held[name]}/{args.faults}" for name in INVARIANTS))


if __name__ == "__main__":
    main()
