"""Bad input fails where it is declared, with a message naming the field, the value and what is allowed."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import flyte
import pytest

from flyte_wandb_elastic import WandbClusteredTaskEnvironment, WandbElastic, WandbOptions, wandb_config, wandb_init

BASE: dict[str, Any] = {"nnodes": 1, "nproc_per_node": 2}


def elastic(**fields: Any) -> Any:
    return WandbElastic(**{**BASE, **fields})


def clustered(**fields: Any) -> Any:
    return WandbClusteredTaskEnvironment(**{"name": "c", "replicas": 2, "nproc_per_node": 2, **fields})


# (entry point, arguments, "field=value" the message must name, what it must say is allowed)
CASES: list[tuple[Callable[..., Any], dict[str, Any], str, str]] = [
    (elastic, {"run_mode": "sometimes"}, "run_mode='sometimes'", "'auto' or 'shared' or 'new'"),
    (elastic, {"rank_scope": "node"}, "rank_scope='node'", "'global' or 'worker'"),
    (elastic, {"mode": "dryrun"}, "mode='dryrun'", "'online' or 'offline' or 'disabled'"),
    (elastic, {"nproc_per_node": 0}, "nproc_per_node=0", "an int >= 1"),
    (elastic, {"nproc_per_node": "2"}, "nproc_per_node='2'", "an int >= 1"),
    (elastic, {"nnodes": "4:2"}, "nnodes='4:2'", "MIN:MAX"),
    (elastic, {"nnodes": "two"}, "nnodes='two'", "MIN:MAX"),
    (elastic, {"nnodes": 0}, "nnodes=0", "a positive int"),
    (elastic, {"nnodes": "1:2:3"}, "nnodes='1:2:3'", "MIN:MAX"),
    (elastic, {"nnodes": 1.5}, "nnodes=1.5", "a positive int"),
    (elastic, {"config": {"lr": object()}}, "config={'lr': <object", "JSON-serializable"),
    (elastic, {"config": ["lr"]}, "config=['lr']", "a dict"),
    (elastic, {"tags": "a,b"}, "tags='a,b'", "a list of strings"),
    (elastic, {"tags": ["a", 1]}, "tags=['a', 1]", "a list of strings"),
    (elastic, {"project": ""}, "project=''", "a non-empty string"),
    (elastic, {"entity": 42}, "entity=42", "a non-empty string"),
    (elastic, {"name": " "}, "name=' '", "a non-empty string"),
    (elastic, {"group": ["g"]}, "group=['g']", "a non-empty string"),
    (elastic, {"notes": ""}, "notes=''", "a non-empty string"),
    (elastic, {"job_type": 3}, "job_type=3", "a non-empty string"),
    (elastic, {"id": "a/b"}, "id='a/b'", "without any of"),
    (elastic, {"host": "wandb.ai"}, "host='wandb.ai'", "http:// or https://"),
    (elastic, {"finish_timeout": 0}, "finish_timeout=0", "a number of seconds between 0 and 3600"),
    (elastic, {"finish_timeout": "60"}, "finish_timeout='60'", "a number of seconds between 0 and 3600"),
    (elastic, {"persist_interval": -1}, "persist_interval=-1", "a number of seconds between 0 and 3600"),
    (elastic, {"persist_interval": True}, "persist_interval=True", "a number of seconds between 0 and 3600"),
    (elastic, {"persist_to": ""}, "persist_to=''", "a non-empty string"),
    (elastic, {"init_kwargs": {"project": "p"}}, "init_kwargs={'project': 'p'}", "move project to the field"),
    (elastic, {"init_kwargs": ["resume"]}, "init_kwargs=['resume']", "a dict of wandb.init keyword arguments"),
    (elastic, {"flush_interval": 0}, "flush_interval=0", "between 0 and 3600"),
    (elastic, {"init_timeout": "5"}, "init_timeout='5'", "a number of seconds"),
    (elastic, {"on_init_failure": "ignore"}, "on_init_failure='ignore'", "'offline' or 'raise'"),
    (elastic, {"api_key_secret": ""}, "api_key_secret=''", "the name of a Flyte secret"),
    (elastic, {"api_key_secret_group": "g"}, "api_key_secret_group='g'", "None unless api_key_secret is set"),
    (elastic, {"max_restarts": -1}, "max_restarts=-1", "an int >= 0"),
    (elastic, {"monitor_interval": 0}, "monitor_interval=0", "> 0"),
    (elastic, {"rdzv_backend": "tcp"}, "rdzv_backend='tcp'", "'c10d'"),
    (elastic, {"rdzv_configs": "timeout=60"}, "rdzv_configs='timeout=60'", "a dict"),
    (clustered, {"replicas": 0}, "replicas=0", "an int >= 1"),
    (clustered, {"replicas": "2"}, "replicas='2'", "an int >= 1"),
    (clustered, {"nproc_per_node": True}, "nproc_per_node=True", "an int >= 1"),
    (clustered, {"wandb": {"project": "p"}}, "wandb={'project': 'p'}", "a WandbOptions(...)"),
    (clustered, {"api_key_secret": ""}, "api_key_secret=''", "the name of a Flyte secret"),
    (clustered, {"api_key_secret_group": "g"}, "api_key_secret_group='g'", "None unless api_key_secret is set"),
    (WandbOptions, {"run_mode": "always"}, "run_mode='always'", "'auto' or 'shared' or 'new'"),
    (wandb_init, {"run_mode": "always"}, "run_mode='always'", "'auto' or 'shared' or 'new'"),
    (wandb_init, {"rank_scope": "rack"}, "rank_scope='rack'", "'global' or 'worker'"),
    (wandb_init, {"download_logs": "yes"}, "download_logs='yes'", "True, False or None"),
    (wandb_init, {"config": {"f": {1, 2}}}, "config={'f': {1, 2}}", "JSON-serializable"),
    (wandb_init, {"mode": "on"}, "mode='on'", "'online' or 'offline' or 'disabled'"),
    (wandb_config, {"run_mode": "both"}, "run_mode='both'", "'auto' or 'shared' or 'new'"),
    (wandb_config, {"rank_scope": "all"}, "rank_scope='all'", "'global' or 'worker'"),
    (wandb_config, {"config": {"f": {1, 2}}}, "config={'f': {1, 2}}", "JSON-serializable"),
    (wandb_config, {"download_logs": "yes"}, "download_logs='yes'", "True or False"),
    (wandb_config, {"host": "ftp://x"}, "host='ftp://x'", "http:// or https://"),
]


@pytest.mark.parametrize(
    ("entry", "arguments", "names", "allowed"),
    CASES,
    ids=[f"{entry.__name__}-{next(iter(arguments))}-{i}" for i, (entry, arguments, _, _) in enumerate(CASES)],
)
def test_invalid_input_is_rejected_when_declared(
    entry: Callable[..., Any], arguments: dict[str, Any], names: str, allowed: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(names)) as info:
        entry(**arguments)
    assert allowed in str(info.value)
    assert "is not valid: expected" in str(info.value)


def test_async_task_is_rejected_when_declared() -> None:
    env = flyte.TaskEnvironment(name="async_env", plugin_config=WandbElastic(**BASE))

    async def train() -> None:
        pass

    with pytest.raises(TypeError, match=r"async function.*declare it with `def`"):
        env.task(train)


@pytest.mark.parametrize("value", ["0", "two", "-3", ""])
@pytest.mark.parametrize("engine", ["elastic", "clustered"])
def test_a_report_line_count_in_env_vars_is_checked_when_the_task_is_declared(engine: str, value: str) -> None:
    env_vars = {"FLYTE_WANDB_ELASTIC_REPORT_LINES": value}
    if engine == "elastic":
        env = flyte.TaskEnvironment(name="lines", plugin_config=WandbElastic(**BASE), env_vars=env_vars)
    else:
        env = clustered(env_vars=env_vars)

    def train() -> None:
        pass

    with pytest.raises(ValueError, match=re.escape(f"env_vars['FLYTE_WANDB_ELASTIC_REPORT_LINES']={value!r}")) as info:
        env.task(report=True)(train)
    assert "an int >= 1" in str(info.value)


def test_valid_config_keeps_elastic_fields() -> None:
    config = WandbElastic(nnodes="1:4", nproc_per_node=8, project="p", run_mode="new", max_restarts=1)
    assert (config.nnodes, config.nproc_per_node, config.max_restarts) == ("1:4", 8, 1)
    assert config.node_range == (1, 4)
