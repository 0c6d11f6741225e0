"""W&B's globals follow the run that holds them, and are handed back in order when runs end."""

from __future__ import annotations

from pathlib import Path

import wandb

from flyte_wandb_elastic import _wandb_run


def test_globals_are_handed_back_through_nested_runs(wandb_offline: Path) -> None:
    runs = []
    for run_id in ("outer", "middle", "inner"):  # as a local run of parent, child and grandchild tasks
        run = wandb.init(project="p", id=run_id, reinit="create_new", dir=wandb_offline)
        _wandb_run.make_global(run)
        assert (wandb.run, wandb.config, wandb.summary) == (run, run.config, run.summary)
        runs.append(run)
    wandb.log({"step_of": 3})
    for run, holder in zip(reversed(runs), [runs[1], runs[0], None], strict=True):
        run.finish()
        _wandb_run.restore_global(run)
        assert wandb.run is holder
    # with no run left, wandb.log is W&B's own "call wandb.init first" again
    try:
        wandb.log({"x": 1})
    except wandb.Error as exc:
        assert "wandb.init()" in str(exc)
    else:
        raise AssertionError("wandb.log worked with no run")
