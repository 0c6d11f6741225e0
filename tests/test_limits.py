"""W&B's limits: the online load each layout puts on a W&B server, and the warning at declaration."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Any

import flyte
import pytest
from flyte.clustered import TorchRun
from flyteplugins.pytorch import Elastic

from flyte_wandb_elastic import (
    WandbClusteredTaskEnvironment,
    WandbElastic,
    WandbLimitWarning,
    WandbOptions,
    wandb_init,
)
from flyte_wandb_elastic._options import RANK_SCOPES, RUN_MODES
from flyte_wandb_elastic._planner import plan_rank
from flyte_wandb_elastic._topology import Topology
from flyte_wandb_elastic._wandb_limits import TABLE
from flyte_wandb_elastic._wandb_load import _number, limits_exceeded, wandb_load
from tests.conftest import REPO
from tests.tasks import FAST_ELASTIC, train

LAYOUTS = [(m, s) for m in RUN_MODES for s in RANK_SCOPES]

# (run_mode, rank_scope) -> (runs, writers, writers of the busiest run, W&B services), hand-counted
# from the behaviour matrix for 4 nodes x 2 ranks (8 ranks).
FOUR_BY_TWO = {
    ("auto", "global"): (1, 1, 1, 1),  # rank 0
    ("auto", "worker"): (4, 4, 1, 4),  # local rank 0 of each node, base-worker-{n}
    ("shared", "global"): (1, 8, 8, 8),  # every rank writes base; a shared run's writers keep their own service
    ("shared", "worker"): (4, 8, 2, 8),  # base-worker-{n}, 2 writers each
    ("new", "global"): (8, 8, 1, 4),  # base-rank-{r}; a node's 2 distinct runs share one service
    ("new", "worker"): (8, 8, 1, 4),  # base-worker-{n}-rank-{l}
}

# the same for 1 node x 4 ranks: one node, so no per-node ids
ONE_BY_FOUR = {
    ("auto", "global"): (1, 1, 1, 1),
    ("auto", "worker"): (1, 1, 1, 1),
    ("shared", "global"): (1, 4, 4, 4),
    ("shared", "worker"): (1, 4, 4, 4),
    ("new", "global"): (4, 4, 1, 1),
    ("new", "worker"): (4, 4, 1, 1),
}


def options(run_mode: str, rank_scope: str, **more: Any) -> WandbOptions:
    return WandbOptions(run_mode=run_mode, rank_scope=rank_scope, **more)  # type: ignore[arg-type]


@pytest.mark.parametrize(("size", "table"), [((4, 2), FOUR_BY_TWO), ((1, 4), ONE_BY_FOUR)])
@pytest.mark.parametrize(("run_mode", "rank_scope"), LAYOUTS)
def test_load_of_small_jobs_as_counted_by_hand(
    size: tuple[int, int], table: dict[tuple[str, str], tuple[int, int, int, int]], run_mode: str, rank_scope: str
) -> None:
    runs, writers, busiest, services = table[(run_mode, rank_scope)]
    load = wandb_load(options(run_mode, rank_scope), *size)
    assert (load.runs, load.writers, load.most_writers_per_run, load.services) == (runs, writers, busiest, services)
    assert load.clients == writers  # one connection per writer, shared service or not
    assert load.file_stream_requests_per_s == pytest.approx(writers / 15)
    assert load.file_stream_requests_per_s_per_run == pytest.approx(busiest / 15)
    assert load.run_creations_per_s == min(writers, 80)
    assert load.seconds_to_create == pytest.approx(writers / 80)


def test_a_lone_process_opens_one_run_in_every_layout() -> None:
    for run_mode, rank_scope in LAYOUTS:
        load = wandb_load(options(run_mode, rank_scope), 1, 1)
        assert (load.runs, load.writers, load.clients) == (1, 1, 1)


def every_plan(opts: WandbOptions, nodes: int, nproc: int) -> tuple[int, int, int]:
    """(runs, writers, writers of the busiest run) from every rank's plan."""
    writers = Counter(
        plan.run_id
        for rank in range(nodes * nproc)
        if (plan := plan_rank(opts, Topology.in_job(rank, nodes, nproc), "run", "action", nodes)).opens_run
    )
    return len(writers), sum(writers.values()), max(writers.values())


@pytest.mark.parametrize("more", [{}, {"id": "my-run"}, {"group": "g"}])
@pytest.mark.parametrize(("run_mode", "rank_scope"), LAYOUTS)
def test_load_from_three_nodes_plans_equals_every_ranks(run_mode: str, rank_scope: str, more: dict[str, Any]) -> None:
    opts = options(run_mode, rank_scope, **more)
    for nodes in range(1, 8):
        for nproc in range(1, 4):
            load = wandb_load(opts, nodes, nproc)
            counted = (load.runs, load.writers, load.most_writers_per_run)
            assert counted == every_plan(opts, nodes, nproc), f"{nodes} x {nproc}"


# (run_mode, rank_scope) -> the limits exceeded online at 1,024 x 8, with the numbers reached
AT_1024_BY_8 = {
    ("auto", "global"): {},
    ("auto", "worker"): {"clients": 1024},
    ("shared", "global"): {
        "file_stream_requests_per_s": 8192 / 15,
        "file_stream_requests_per_s_per_run": 8192 / 15,
        "clients": 8192,
    },
    ("shared", "worker"): {"file_stream_requests_per_s": 8192 / 15, "clients": 8192},
    ("new", "global"): {"file_stream_requests_per_s": 8192 / 15, "clients": 8192},
    ("new", "worker"): {"file_stream_requests_per_s": 8192 / 15, "clients": 8192},
}


@pytest.mark.parametrize(("run_mode", "rank_scope"), LAYOUTS)
def test_limits_exceeded_at_1024_by_8(run_mode: str, rank_scope: str) -> None:
    over = limits_exceeded(options(run_mode, rank_scope), 1024, 8)
    assert {e.limit.key: e.reached for e in over} == pytest.approx(AT_1024_BY_8[(run_mode, rank_scope)])
    for e in over:
        assert e.limit is TABLE[e.limit.key] and e.limit.source
        assert e.layouts_within == (("auto", "global"),)


def test_run_creations_over_the_limit_only_when_paced_faster() -> None:
    assert limits_exceeded(options("new", "global"), 4, 8) == []  # 32 runs, paced at 80/s
    over = limits_exceeded(options("new", "global", max_run_creations_per_s=200), 16, 8)
    assert [(e.limit.key, e.reached) for e in over] == [("run_creations_per_s", 128)]
    assert wandb_load(options("new", "global", max_run_creations_per_s=200), 16, 8).seconds_to_create == 0.64


def test_a_longer_file_stream_interval_lowers_the_request_rate() -> None:
    slower = options("new", "global", init_kwargs={"settings": {"x_file_stream_transmit_interval": 60}})
    assert wandb_load(slower, 1024, 8).file_stream_requests_per_s == pytest.approx(8192 / 60)
    assert [e.limit.key for e in limits_exceeded(slower, 1024, 8)] == ["clients"]


def test_runs_per_project() -> None:
    assert "runs" not in {e.limit.key for e in limits_exceeded(options("new", "global"), 1250, 8)}  # 10,000 runs
    assert "runs" in {e.limit.key for e in limits_exceeded(options("new", "global"), 1251, 8)}


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_nothing_exceeded_offline(mode: str) -> None:
    assert limits_exceeded(options("new", "global", mode=mode), 1024, 8) == []
    assert wandb_load(options("new", "global", mode=mode), 1024, 8).writers == 8192  # the load, were it online


def test_new_global_at_1024_by_8_warns_at_declaration() -> None:
    with pytest.warns(WandbLimitWarning) as caught:
        WandbElastic(nnodes=1024, nproc_per_node=8, project="p", run_mode="new")
    [warning] = caught
    message = str(warning.message)
    assert warning.filename == __file__  # it points at the declaration
    assert message.startswith(
        "WandbElastic with nnodes=1024, nproc_per_node=8, run_mode='new' would exceed W&B's documented limits "
        "online at 1,024 nodes x 8 ranks: "
    )
    assert "file-stream requests per second per project: 546.1/s > 500/s" in message
    assert "concurrent client connections (the most W&B has tested, on Dedicated Cloud): 8,192 > 300" in message
    assert "https://docs.wandb.ai/platform/hosting/self-managed/rate-limits" in message
    assert "https://docs.wandb.ai/models/track/log/distributed-training" in message
    assert "Within them at this size: run_mode='auto' with rank_scope='global'; or mode='offline'" in message
    assert "or run_mode='auto' with rank_runs='offline' (every rank's own run offline to storage" in message
    assert "rank_scope unset here (taken as 'global'), mode unset here (taken as online)" in message
    assert "the run context (wandb_config) or WANDB_MODE in the pods may set them" in message


def test_an_elastic_range_is_judged_at_its_most_nodes() -> None:
    with pytest.warns(WandbLimitWarning, match=r"nnodes='2:1024'.* at 1,024 nodes x 8 ranks"):
        WandbElastic(nnodes="2:1024", nproc_per_node=8, run_mode="new", rank_scope="worker")


def test_shared_global_warns_from_31_writers() -> None:
    WandbElastic(nnodes=1, nproc_per_node=30, run_mode="shared")  # 30 / 15 s = 2 requests/s to one run
    with pytest.warns(WandbLimitWarning) as caught:
        WandbElastic(nnodes=1, nproc_per_node=31, run_mode="shared")
    message = str(caught[0].message)
    assert "run_mode='shared'" in message
    assert "file-stream requests per second per run: 2.07/s > 2/s" in message
    assert "run_mode='auto' (either rank_scope), run_mode='new' (either rank_scope)" in message


@pytest.mark.parametrize("declared", [{"run_mode": "auto"}, {}, {"rank_scope": "global"}])
def test_auto_global_at_1024_by_8_does_not_warn(declared: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WandbElastic(nnodes=1024, nproc_per_node=8, **declared)


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_offline_or_disabled_does_not_warn(mode: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WandbElastic(nnodes=1024, nproc_per_node=8, run_mode="new", mode=mode)  # type: ignore[arg-type]
        WandbElastic(nnodes=1024, nproc_per_node=8, run_mode="new", init_kwargs={"mode": mode})
        clustered(replicas=1024, wandb=WandbOptions(run_mode="shared", mode=mode))  # type: ignore[arg-type]


def test_a_rank_process_importing_the_declaration_does_not_warn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(WandbLimitWarning):  # where it is declared (or deployed)
        WandbElastic(nnodes=1024, nproc_per_node=8, run_mode="new")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")  # as torch elastic and torchrun set in each rank
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WandbElastic(nnodes=1024, nproc_per_node=8, run_mode="new")
        clustered(replicas=1024, wandb=WandbOptions(run_mode="new"))


def clustered(**fields: Any) -> WandbClusteredTaskEnvironment:
    return WandbClusteredTaskEnvironment(
        **{"name": "limits", "nproc_per_node": 8, "runtime": TorchRun(rdzv_backend="c10d"), **fields}
    )


def test_the_clustered_environment_warns_at_declaration() -> None:
    with pytest.warns(WandbLimitWarning) as caught:
        clustered(replicas=1024, wandb=WandbOptions(run_mode="new", rank_scope="worker"))
    message = str(caught[0].message)
    assert message.startswith(
        "WandbClusteredTaskEnvironment with replicas=1024, nproc_per_node=8, run_mode='new', rank_scope='worker' "
    )
    assert "8,192 > 300" in message and "mode unset here (taken as online)" in message
    assert caught[0].filename == __file__


def test_the_clustered_environment_reads_wandb_mode_from_its_env_vars() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clustered(replicas=1024, wandb=WandbOptions(run_mode="new"), env_vars={"WANDB_MODE": "offline"})


def test_wandb_init_on_a_big_elastic_task_warns_where_it_decorates() -> None:
    env = flyte.TaskEnvironment(name="limits_env", plugin_config=Elastic(nnodes=1024, nproc_per_node=8, **FAST_ELASTIC))
    task = env.task(train)
    with pytest.warns(WandbLimitWarning, match=r"run_mode='shared'.*> 2/s") as caught:
        wandb_init(run_mode="shared")(task)
    assert caught[0].filename == __file__


def test_wandb_init_on_a_big_clustered_task_warns() -> None:
    env = clustered(replicas=1024, wandb=WandbOptions(project="p"))
    task = env.task(train)
    with pytest.warns(WandbLimitWarning, match=r"@wandb_init on a clustered task with replicas=1024, .*run_mode='new'"):
        wandb_init(run_mode="new")(task)


# -- the scale page states what the model computes and quotes the real warning ----------------------

SCALE_PAGE = REPO / "docs" / "scale.md"
NAMES = {
    "run_creations_per_s": "creations/s",
    "file_stream_requests_per_s": "file stream (project)",
    "file_stream_requests_per_s_per_run": "file stream (run)",
    "clients": "clients",
    "runs": "runs",
}


def page_row(run_mode: str, rank_scope: str, nodes: int) -> str:
    opts = options(run_mode, rank_scope)
    load = wandb_load(opts, nodes, 8)
    over = ", ".join(NAMES[e.limit.key] for e in limits_exceeded(opts, nodes, 8)) or "-"
    cells = [
        f"`{run_mode}` / `{rank_scope}`",
        f"{nodes:,} x 8",
        f"{load.runs:,}",
        f"{load.writers:,}",
        f"{load.services:,}",
        f"{_number(load.file_stream_requests_per_s)}, {_number(load.file_stream_requests_per_s_per_run)}",
        f"{_number(load.seconds_to_create)} s",
        over,
    ]
    return "| " + " | ".join(cells) + " |"


def test_the_scale_page_table_is_what_the_model_computes() -> None:
    rows = [line for line in SCALE_PAGE.read_text().splitlines() if line.startswith("| `")]
    assert rows == [page_row(m, s, n) for m, s in LAYOUTS for n in (2, 16, 128, 1024)]


def test_the_scale_page_quotes_the_real_warning_and_limits() -> None:
    page = SCALE_PAGE.read_text()
    quoted = re.search(r"```text\n(.*)\n```", page)
    assert quoted is not None
    with pytest.warns(WandbLimitWarning) as caught:
        WandbElastic(nnodes=1024, nproc_per_node=8, project="my-project", run_mode="new")
    assert str(caught[0].message) == quoted.group(1)
    for figure in TABLE.values():  # every source the table names, the page links
        assert all(url.rstrip(")") in page for url in re.findall(r"https://\S+", figure.source)), figure.key
