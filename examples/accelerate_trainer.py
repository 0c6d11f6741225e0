"""Accelerate in a WandbElastic task: a tracker that logs into the rank's planned run.

Accelerate's own `log_with="wandb"` calls `wandb.init` itself, which opens a second run while the
planned one is still opening, and `end_training()` finishes the run it got. This tracker hands
Accelerate the rank's run (`get_wandb_run()`) instead, and leaves finishing it to the rank's end,
which records the job's real exit state. `Accelerator.log` logs from global rank 0 only.

    pip install accelerate
    python examples/accelerate_trainer.py
"""

import flyte
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker

from flyte_wandb_elastic import WandbElastic, get_distributed_info, get_wandb_run

env = flyte.TaskEnvironment(
    name="accelerate_trainer",
    plugin_config=WandbElastic(
        nnodes=1, nproc_per_node=2, project="examples", run_mode="new", max_restarts=0, monitor_interval=1
    ),
)


class RankRunTracker(GeneralTracker):
    """Accelerate's tracker API over this rank's run: it never opens or finishes a run itself."""

    name = "wandb"
    requires_logging_directory = False

    def __init__(self) -> None:
        super().__init__()
        self.run = get_wandb_run()

    @property
    def tracker(self):
        return self.run

    def store_init_configuration(self, values: dict) -> None:
        self.run.config.update(values, allow_val_change=True)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.run.log(values, step=step, **kwargs)


@env.task
def train(steps: int = 4) -> float:
    accelerator = Accelerator(cpu=True, log_with=RankRunTracker())
    accelerator.init_trackers("examples", config={"lr": 0.1})  # on global rank 0 only
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    loss = torch.tensor(0.0)
    for step in range(steps):
        x = torch.randn(8, 4)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        accelerator.log({"train_loss": loss.item()}, step=step)
    accelerator.end_training()  # the tracker's finish does nothing: the rank's end finishes the run
    run = get_wandb_run()  # every rank's own run in "new"; step: the one after Accelerate's last
    run.log({"final_train_loss": loss.item(), "rank": get_distributed_info()["rank"]}, step=steps)
    return loss.item()


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(train)
