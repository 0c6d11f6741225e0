"""Upload the runs of an air-gapped cluster to W&B, as a Flyte task that runs where W&B is reachable.

The ranks of a training job copy their W&B run files into the run's storage (its base directory);
this task, run in an environment that reaches both that storage and W&B, uploads what W&B has not
got yet. Runs already synced are skipped, so it can run again at any time.

    python examples/sync_task.py s3://my-bucket/<run base dir>     # here, as a local Flyte run
    flyte run examples/sync_task.py sync_wandb_runs --uri s3://...  # on a cluster that reaches W&B

Locally it uploads to the server of the environment (`WANDB_API_KEY`, `WANDB_BASE_URL`); on a
cluster the key comes from the Flyte secret `wandb-api-key`.
"""

import sys

import flyte

from flyte_wandb_elastic import sync_runs

env = flyte.TaskEnvironment(
    name="wandb_sync",
    secrets=[flyte.Secret(key="wandb-api-key", as_env_var="WANDB_API_KEY")],
)


@env.task
def sync_wandb_runs(uri: str) -> str:
    """Upload every run stored under `uri`; a one-line report."""
    report = sync_runs(uri)
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} run(s) failed to sync: {report.failed}")
    return f"{len(report.synced)} synced, {len(report.skipped)} already synced"


if __name__ == "__main__":
    run = flyte.with_runcontext(mode="local").run(sync_wandb_runs, uri=sys.argv[1])
    print(run.outputs()[0])
