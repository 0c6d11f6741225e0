"""Truth table of the pure planner: every run_mode x rank_scope on 1 x 2 and 2 x 2 ranks."""

from __future__ import annotations

import pytest

from flyte_wandb_elastic._planner import RankPlan, base_run_id, plan_rank
from flyte_wandb_elastic._topology import Topology

NO = RankPlan(opens_run=False)


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
    ("auto", "global", 1): [run("b"), NO],
    ("auto", "worker", 1): [run("b"), NO],
    ("shared", "global", 1): [run("b", label="rank-0"), run("b", label="rank-1", primary=False)],
    ("shared", "worker", 1): [run("b", label="rank-0"), run("b", label="rank-1", primary=False)],
    ("new", "global", 1): [run("b-rank-0", "b"), run("b-rank-1", "b")],
    ("new", "worker", 1): [run("b-rank-0", "b"), run("b-rank-1", "b")],
    ("auto", "global", 2): [run("b"), NO, NO, NO],
    ("auto", "worker", 2): [run("b-worker-0"), NO, run("b-worker-1"), NO],
    ("shared", "global", 2): [
        run("b", label="worker-0-rank-0"),
        run("b", label="worker-0-rank-1", primary=False),
        run("b", label="worker-1-rank-0", primary=False),
        run("b", label="worker-1-rank-1", primary=False),
    ],
    ("shared", "worker", 2): [
        run("b-worker-0", label="worker-0-rank-0"),
        run("b-worker-0", label="worker-0-rank-1", primary=False),
        run("b-worker-1", label="worker-1-rank-0"),
        run("b-worker-1", label="worker-1-rank-1", primary=False),
    ],
    ("new", "global", 2): [run(f"b-rank-{r}", "b") for r in range(4)],
    ("new", "worker", 2): [
        run("b-worker-0-rank-0", "b-worker-0"),
        run("b-worker-0-rank-1", "b-worker-0"),
        run("b-worker-1-rank-0", "b-worker-1"),
        run("b-worker-1-rank-1", "b-worker-1"),
    ],
}


@pytest.mark.parametrize(("run_mode", "rank_scope", "nodes"), list(TABLE))
def test_truth_table(run_mode: str, rank_scope: str, nodes: int) -> None:
    plans = [plan_rank(run_mode, rank_scope, topo(r, nodes), "b") for r in range(2 * nodes)]  # type: ignore[arg-type]
    assert plans == TABLE[(run_mode, rank_scope, nodes)]


def test_lone_process_opens_one_run() -> None:
    assert plan_rank("auto", "global", Topology(), "b") == run("b")


def test_base_id() -> None:
    assert base_run_id("r1", "a0") == "r1-a0"
    assert base_run_id("r1", "a0", "mine") == "mine"


@pytest.mark.parametrize("run_mode", ["auto", "shared", "new"])
def test_user_group_is_kept(run_mode: str) -> None:
    plans = [plan_rank(run_mode, "worker", topo(r, 2), "b", group="g") for r in range(4)]  # type: ignore[arg-type]
    assert {p.group for p in plans if p.opens_run} == {"g"}


def test_new_mode_never_gives_two_ranks_one_id() -> None:
    for scope in ("global", "worker"):
        ids = [plan_rank("new", scope, topo(r, 3, 4), "user-id").run_id for r in range(12)]  # type: ignore[arg-type]
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
