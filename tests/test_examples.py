"""Every example runs as a user would run it, with W&B offline, and prints the per-rank table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, wandb_env

pytestmark = pytest.mark.launch

B = "{run}-a0"
# example -> the (run id, label) rows of its table, with {run} for the local run name
EXAMPLES = {
    "quickstart.py": [(B, "rank-0"), (B, "rank-1")],
    "single_primary_logger.py": [(B, "-")],
    "shared_run.py": [(B, "rank-0"), (B, "rank-1")],
    "run_per_rank.py": [(f"{B}-rank-0", "-"), (f"{B}-rank-1", "-")],
    "run_per_node.py": [(f"{B}-worker-0", "-"), (f"{B}-worker-1", "-")],
    "distributed_metadata.py": [(f"{B}-rank-0", "-"), (f"{B}-rank-1", "-")],
    "wandb_init_decorator.py": [(f"{B}-rank-0", "-"), (f"{B}-rank-1", "-")],
    "clustered.py": [(f"{B}-worker-{n}", f"worker-{n}-rank-{r}") for n in range(2) for r in range(2)],
}


def test_every_example_is_tested() -> None:
    on_disk = {p.name for p in (REPO / "examples").glob("*.py") if not p.name.startswith("_")}
    # cluster.py needs a cluster: tests/test_cluster_example.py serializes its tasks instead;
    # sync_task.py needs servers: tests/test_durable.py runs it against real ones;
    # report_tab.py: tests/test_report.py runs it and checks its screenshot;
    # the trainers' examples: tests/test_trainers.py runs them and reads back what each trainer logged
    trainers = {"lightning_trainer.py", "hf_trainer.py", "accelerate_trainer.py"}
    assert on_disk == {*EXAMPLES, "cluster.py", "sync_task.py", "report_tab.py", *trainers}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_prints_what_each_rank_logged(tmp_path: Path, name: str) -> None:
    env = wandb_env(tmp_path)
    del env["WANDB_MODE"]  # the examples choose offline themselves when there is no API key
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # a successful job prints no stack trace (multi-node: no rendezvous shutdown error)
    assert "Traceback" not in result.stderr and "frame #0" not in result.stderr, result.stderr[-3000:]
    out = result.stdout
    assert f"W&B run files under {tmp_path}/wandb (W&B mode: offline)" in out
    table = out[out.index("run id") :].splitlines()
    assert table[0].split()[:10] == ["run", "id", "project", "group", "label", "primary", "steps", "exit", "run", "dir"]
    rows = [line.split() for line in table[1:]]
    run_name = rows[0][0].rsplit("-a0", 1)[0]  # the last "-a0" is the action: the run name may hold "a0" too
    assert [(r[0], r[3]) for r in rows] == [(i.format(run=run_name), label) for i, label in EXAMPLES[name]]
    project = "flyte-wandb-elastic-quickstart" if name == "quickstart.py" else "examples"
    assert all(r[1] == project for r in rows)
    assert all(r[6] == "0" for r in rows)  # every run finished successfully
    assert all(int(r[5]) > 0 for r in rows)  # and logged
    assert all(r[7].startswith("offline-run-") and r[7].split("-", 3)[3].startswith(r[0]) for r in rows)
