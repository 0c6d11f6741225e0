"""Lightning's `WandbLogger` in a WandbElastic task: it logs into the rank's planned run.

`WandbLogger()` finds the run this package opened (W&B's `wandb.run`) and reuses it, so its
own `project`, `name` or `id` arguments are not used: declare them on `WandbElastic`. Lightning
logs from global rank 0 only: with `run_mode="new"`, rank 0's run holds Lightning's rows and every
other rank's run holds what that rank logs itself (here, one row after training).

    pip install lightning
    python examples/lightning_trainer.py
"""

import flyte
import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from flyte_wandb_elastic import WandbElastic, get_distributed_info, get_wandb_run

env = flyte.TaskEnvironment(
    name="lightning_trainer",
    plugin_config=WandbElastic(
        nnodes=1, nproc_per_node=2, project="examples", run_mode="new", max_restarts=0, monitor_interval=1
    ),
)


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, sync_dist=True)  # the mean over ranks, logged by rank 0
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@env.task
def train(steps: int = 4) -> float:
    info = get_distributed_info()
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu",
        strategy="ddp",  # Lightning joins the process group torch elastic set up
        devices=info["local_world_size"],
        num_nodes=info["num_workers"],
        max_steps=steps,
        log_every_n_steps=1,
        logger=WandbLogger(),  # reuses this rank's run: no second wandb.init
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regression(), data)
    loss = trainer.callback_metrics["train_loss"].item()
    run = get_wandb_run()  # still open: the rank's end finishes it, with the job's exit state
    run.log({"final_train_loss": loss, "rank": info["rank"]})
    return loss


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(train)
