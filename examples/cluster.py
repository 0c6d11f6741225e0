"""Run on a cluster: the image, the W&B API key as a Flyte secret, GPUs, and both engines.

The guide is docs/cluster.md. With a Flyte config (`flyte create config ...`) and the secret
created (`flyte create secret wandb-api-key`), this runs the clustered task on the cluster:

    python examples/cluster.py            # flyte.run: prints the run's URL
    flyte run examples/cluster.py train_elastic --steps 200
    flyte deploy examples/cluster.py

It needs a cluster with GPUs; the other examples run on a laptop.
"""

import os
from pathlib import Path

import flyte
from flyte.clustered import TorchRun

from flyte_wandb_elastic import WandbClusteredTaskEnvironment, WandbElastic, WandbOptions, get_wandb_run

# The checkout that holds this package: the image installs it from here.
SOURCE = Path(__file__).resolve().parent.parent

image = (
    flyte.Image.from_debian_base(name="flyte-wandb-elastic", python_version=(3, 11))
    # On Linux, torch 2.13.0 from the public index is the CUDA build: what GPU pods need.
    .with_pip_packages("torch==2.13.0")
    # This package and its dependencies, installed from the source checkout.
    .with_uv_project(SOURCE / "pyproject.toml", project_install_mode="install_project")
)

# 4 GPUs per node, one rank per GPU.
gpu_node = flyte.Resources(cpu=16, memory="128Gi", gpu="A100:4")

# Elastic (a PyTorchJob): 2 nodes x 4 ranks, one run per rank, grouped per node (each rank's own
# curves, the node's runs on one page; see docs/behaviour.md, "Which layout to pick").
elastic_env = flyte.TaskEnvironment(
    name="wandb_elastic_gpu",
    image=image,
    resources=gpu_node,
    plugin_config=WandbElastic(
        nnodes=2,
        nproc_per_node=4,
        entity="my-team",
        project="my-project",
        run_mode="new",
        rank_scope="worker",
        api_key_secret="wandb-api-key",
    ),
)

# Clustered (a JobSet of 2 pods running torchrun): every rank writes its node's shared run, under
# its own label (every rank's metrics side by side, one run per node).
clustered_env = WandbClusteredTaskEnvironment(
    name="wandb_clustered_gpu",
    image=image,
    resources=gpu_node,
    replicas=2,
    nproc_per_node=4,
    runtime=TorchRun(rdzv_backend="c10d"),
    wandb=WandbOptions(entity="my-team", project="my-project", run_mode="shared", rank_scope="worker"),
    api_key_secret="wandb-api-key",
)


def _train(steps: int) -> float:
    import torch
    import torch.distributed as dist

    gpu = torch.cuda.is_available()
    # One rank per GPU: torch elastic and torchrun set LOCAL_RANK, the rank's index on its node.
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if gpu else "gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(32, 1).to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = get_wandb_run()  # this rank's run (every rank has one in these two layouts)
    loss = torch.tensor(0.0)
    for step in range(steps):
        x = torch.randn(64, 32, device=device)
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if run is not None:
            run.log({"loss": loss.item(), "step": step})
    dist.destroy_process_group()
    return loss.item()


@elastic_env.task
def train_elastic(steps: int = 100) -> float:
    return _train(steps)


@clustered_env.task
def train_clustered(steps: int = 100) -> float:
    return _train(steps)


if __name__ == "__main__":
    flyte.init_from_config()
    run = flyte.run(train_clustered, steps=100)
    print(run.url)
