"""Hugging Face's `Trainer(report_to="wandb")` in a WandbElastic task: it logs into the rank's run.

The Trainer's W&B callback finds the run this package opened (W&B's `wandb.run`) and reuses it,
adding the training arguments and model config to its config. It logs from global rank 0 only:
with `run_mode="shared"`, the job's one run holds the Trainer's rows from rank 0's writer, and
each rank's own rows (here, one after training) under its label.

    pip install transformers accelerate
    python examples/hf_trainer.py
"""

import tempfile

import flyte
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from flyte_wandb_elastic import WandbElastic, get_distributed_info, get_wandb_run

env = flyte.TaskEnvironment(
    name="hf_trainer",
    plugin_config=WandbElastic(
        nnodes=1, nproc_per_node=2, project="examples", run_mode="shared", max_restarts=0, monitor_interval=1
    ),
)


@env.task
def train(steps: int = 4) -> float:
    # a tiny BERT built from its config: nothing to download
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    data = [{"input_ids": torch.randint(0, 64, (8,)), "labels": i % 2} for i in range(64)]
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        report_to=["wandb"],  # reuses this rank's run: no second wandb.init
        use_cpu=True,
        ddp_backend="gloo",  # "nccl" on GPUs
        max_steps=steps,
        logging_steps=1,
        per_device_train_batch_size=4,
        save_strategy="no",
        disable_tqdm=True,
    )
    result = Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=data).train()
    run = get_wandb_run()  # still open: the rank's end finishes it, with the job's exit state
    run.log({"final_train_loss": result.training_loss, "rank": get_distributed_info()["rank"]})
    return result.training_loss


if __name__ == "__main__":
    from _offline import run_and_report

    run_and_report(train)
