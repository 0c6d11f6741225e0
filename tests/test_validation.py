"""Bad input fails where it is declared, with a message naming the field, the value and what is allowed."""

from __future__ import annotations

import re
from typing import Any

import flyte
import pytest

from flyte_wandb_elastic import WandbElastic, wandb_config

BASE: dict[str, Any] = {"nnodes": 1, "nproc_per_node": 2}

CASES = [
    ({"run_mode": "sometimes"}, "run_mode='sometimes'", "'auto' or 'shared' or 'new'"),
    ({"rank_scope": "node"}, "rank_scope='node'", "'global' or 'worker'"),
    ({"mode": "dryrun"}, "mode='dryrun'", "'online' or 'offline' or 'disabled'"),
    ({"nproc_per_node": 0}, "nproc_per_node=0", "an int >= 1"),
    ({"nproc_per_node": "2"}, "nproc_per_node='2'", "an int >= 1"),
    ({"nnodes": "4:2"}, "nnodes='4:2'", "MIN:MAX"),
    ({"nnodes": "two"}, "nnodes='two'", "MIN:MAX"),
    ({"nnodes": 0}, "nnodes=0", "a positive int"),
    ({"nnodes": "1:2:3"}, "nnodes='1:2:3'", "MIN:MAX"),
    ({"config": {"lr": object()}}, "config={'lr': <object", "JSON-serializable"),
    ({"config": ["lr"]}, "config=['lr']", "a dict"),
    ({"tags": "a,b"}, "tags='a,b'", "a list of strings"),
    ({"project": ""}, "project=''", "a non-empty string"),
    ({"id": "a/b"}, "id='a/b'", "without any of"),
    ({"host": "wandb.ai"}, "host='wandb.ai'", "http:// or https://"),
    ({"init_kwargs": {"project": "p"}}, "init_kwargs={'project': 'p'}", "move project to the field"),
    ({"max_restarts": -1}, "max_restarts=-1", "an int >= 0"),
    ({"monitor_interval": 0}, "monitor_interval=0", "> 0"),
    ({"rdzv_backend": "tcp"}, "rdzv_backend='tcp'", "'c10d'"),
]


@pytest.mark.parametrize(("fields", "names", "allowed"), CASES)
def test_wandb_elastic_rejects(fields: dict[str, Any], names: str, allowed: str) -> None:
    with pytest.raises(ValueError, match=re.escape(names)) as info:
        WandbElastic(**{**BASE, **fields})
    assert allowed in str(info.value)


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"run_mode": "both"}, "run_mode='both'"),
        ({"rank_scope": "all"}, "rank_scope='all'"),
        ({"config": {"f": {1, 2}}}, "config="),
        ({"download_logs": "yes"}, "download_logs='yes'"),
    ],
)
def test_wandb_config_rejects(fields: dict[str, Any], names: str) -> None:
    with pytest.raises(ValueError, match=re.escape(names)):
        wandb_config(**fields)


def test_async_task_is_rejected_when_declared() -> None:
    env = flyte.TaskEnvironment(name="async_env", plugin_config=WandbElastic(**BASE))

    async def train() -> None:
        pass

    with pytest.raises(TypeError, match=r"async function.*declare it with `def`"):
        env.task(train)


def test_valid_config_keeps_elastic_fields() -> None:
    config = WandbElastic(nnodes="1:4", nproc_per_node=8, project="p", run_mode="new", max_restarts=1)
    assert (config.nnodes, config.nproc_per_node, config.max_restarts) == ("1:4", 8, 1)
    assert config.node_range == (1, 4)
