"""Truth table of the pure planner: every run_mode x rank_scope on 1 x 2 and 2 x 2 ranks."""

from __future__ import annotations

import pytest

from flyte_wandb_elastic import WandbOptions
from flyte_wandb_elastic._planner import RankPlan, base_run_id, plan_rank, system_metrics
from flyte_wandb_elastic._topology import Topology

NO = RankPlan(opens_run=False)
B = "r1-a0"


def plan(run_mode: str, rank_scope: str, topology: Topology, max_nodes: int, **options: str) -> RankPlan:
    opts = WandbOptions(run_mode=run_mode, rank_scope=rank_scope, **options)  # type: ignore[arg-type]
    return plan_rank(opts, topology, "r1", "a0", max_nodes)


def topo(rank: int, nodes: int, per_node: int = 2) -> Topology:
    return Topology(
        rank=rank,
        local_rank=rank % per_node,
        world_size=nodes * per_node,
        local_world_size=per_node,
        node_rank=rank // per_node,
        num_nodes=nodes,
    )


def run(run_id: str, group: str | None = None, label: str | None = None, primary: bool = True) -> RankPlan:
    return RankPlan(opens_run=True, run_id=run_id, group=group, label=label, primary=primary)


# (run_mode, rank_scope, nodes) -> the plan of each global rank
TABLE = {
    ("auto", "global", 1): [run(B), NO],
    ("auto", "worker", 1): [run(B), NO],
    ("shared", "global", 1): [run(B, label="rank-0"), run(B, label="rank-1", primary=False)],
    ("shared", "worker", 1): [run(B, label="rank-0"), run(B, label="rank-1", primary=False)],
    ("new", "global", 1): [run(f"{B}-rank-0", B), run(f"{B}-rank-1", B)],
    ("new", "worker", 1): [run(f"{B}-rank-0", B), run(f"{B}-rank-1", B)],
    ("auto", "global", 2): [run(B), NO, NO, NO],
    ("auto", "worker", 2): [run(f"{B}-worker-0"), NO, run(f"{B}-worker-1"), NO],
    ("shared", "global", 2): [
        run(B, label="worker-0-rank-0"),
        run(B, label="worker-0-rank-1", primary=False),
        run(B, label="worker-1-rank-0", primary=False),
        run(B, label="worker-1-rank-1", primary=False),
    ],
    ("shared", "worker", 2): [
        run(f"{B}-worker-0", label="worker-0-rank-0"),
        run(f"{B}-worker-0", label="worker-0-rank-1", primary=False),
        run(f"{B}-worker-1", label="worker-1-rank-0"),
        run(f"{B}-worker-1", label="worker-1-rank-1", primary=False),
    ],
    ("new", "global", 2): [run(f"{B}-rank-{r}", B) for r in range(4)],
    ("new", "worker", 2): [
        run(f"{B}-worker-0-rank-0", f"{B}-worker-0"),
        run(f"{B}-worker-0-rank-1", f"{B}-worker-0"),
        run(f"{B}-worker-1-rank-0", f"{B}-worker-1"),
        run(f"{B}-worker-1-rank-1", f"{B}-worker-1"),
    ],
}


@pytest.mark.parametrize(("run_mode", "rank_scope", "nodes"), list(TABLE))
def test_truth_table(run_mode: str, rank_scope: str, nodes: int) -> None:
    plans = [plan(run_mode, rank_scope, topo(r, nodes), nodes) for r in range(2 * nodes)]
    assert plans == TABLE[(run_mode, rank_scope, nodes)]


@pytest.mark.parametrize("run_mode", ["auto", "shared", "new"])
def test_lone_process_opens_one_run(run_mode: str) -> None:
    assert plan(run_mode, "worker", Topology(), max_nodes=4) == run(B)


def test_lone_process_reuses_its_parents_run() -> None:
    assert plan_rank(WandbOptions(), Topology(), "r1", "a1", parent_run_id="p-run") == run(
        "p-run", label="a1", primary=False
    )
    assert plan_rank(WandbOptions(run_mode="new"), Topology(), "r1", "a1", parent_run_id="p-run") == run(B[:-1] + "1")
    assert plan_rank(WandbOptions(id="mine"), Topology(), "r1", "a1", parent_run_id="p-run") == run("mine")


def test_outside_flyte_wandb_picks_the_id() -> None:
    assert plan_rank(WandbOptions(), Topology(), None, "") == run(None)  # type: ignore[arg-type]
    assert plan_rank(WandbOptions(id="trial"), Topology(), None, "") == run("trial")


@pytest.mark.parametrize("run_mode", ["auto", "shared", "new"])
def test_ids_follow_declared_nodes_not_joined_nodes(run_mode: str) -> None:
    # nnodes="1:4" and only one node joined: ids are still per node, as the links say
    alone = Topology(rank=0, local_rank=0, world_size=2, local_world_size=2, node_rank=0, num_nodes=1)
    assert plan(run_mode, "worker", alone, max_nodes=4).run_id.startswith(f"{B}-worker-0")  # type: ignore[union-attr]


def test_base_id() -> None:
    assert base_run_id("r1", "a0") == "r1-a0"
    assert base_run_id("r1", "a0", "mine") == "mine"


@pytest.mark.parametrize("run_mode", ["auto", "shared", "new"])
def test_user_group_is_kept(run_mode: str) -> None:
    plans = [plan(run_mode, "worker", topo(r, 2), 2, group="g") for r in range(4)]
    assert {p.group for p in plans if p.opens_run} == {"g"}


def test_new_mode_never_gives_two_ranks_one_id() -> None:
    for scope in ("global", "worker"):
        ids = [plan("new", scope, topo(r, 3, 4), 3, id="user-id").run_id for r in range(12)]
        assert len(set(ids)) == 12


def test_topology_from_env() -> None:
    env = {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
        "TORCHELASTIC_RESTART_COUNT": "2",
    }
    assert Topology.from_env(env) == Topology(3, 1, 4, 2, 1, 2, 2)
    assert Topology.from_env({}) == Topology()
    assert Topology.from_env({}).as_info() is None


@pytest.mark.parametrize(
    ("run_mode", "rank", "gpus", "expected"),
    [
        ("auto", 0, True, {}),  # the node's only writer reports all its devices
        ("shared", 0, True, {"x_stats_gpu_device_ids": [0]}),
        ("shared", 1, True, {"x_stats_gpu_device_ids": [1], "x_stats_disk_paths": []}),
        ("new", 3, True, {"x_stats_gpu_device_ids": [1], "x_stats_disk_paths": []}),
        ("new", 2, False, {}),
        ("new", 1, False, {"x_stats_disk_paths": []}),
    ],
)
def test_ranks_of_one_node_do_not_report_the_same_metrics(run_mode: str, rank: int, gpus: bool, expected: dict) -> None:
    topology = topo(rank, 2)
    assert system_metrics(plan(run_mode, "global", topology, 2), topology, run_mode, gpus) == expected


def test_no_metrics_settings_without_a_run_or_outside_a_job() -> None:
    assert system_metrics(NO, topo(1, 2), "auto", True) == {}
    assert system_metrics(run(B), Topology(), "new", True) == {}
