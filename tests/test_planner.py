"""Truth table of the pure planner: every run_mode x rank_scope on 1 x 2 and 2 x 2 ranks."""

from __future__ import annotations

import pytest

from flyte_wandb_elastic import WandbOptions
from flyte_wandb_elastic._planner import RankPlan, base_run_id, creation_slot, plan_rank, system_metrics, writers
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


def run(run_id: str, group: str | None = None, label: str | None = None, primary: bool = True, k: int = 0) -> RankPlan:
    return RankPlan(opens_run=True, run_id=run_id, group=group, label=label, primary=primary, creation_order=k)


# (run_mode, rank_scope, nodes) -> the plan of each global rank (k: its place among the job's run
# creations, in rank order)
TABLE = {
    ("auto", "global", 1): [run(B), NO],
    ("auto", "worker", 1): [run(B), NO],
    ("shared", "global", 1): [run(B, label="rank-0"), run(B, label="rank-1", primary=False, k=1)],
    ("shared", "worker", 1): [run(B, label="rank-0"), run(B, label="rank-1", primary=False, k=1)],
    ("new", "global", 1): [run(f"{B}-rank-0", B), run(f"{B}-rank-1", B, k=1)],
    ("new", "worker", 1): [run(f"{B}-rank-0", B), run(f"{B}-rank-1", B, k=1)],
    ("auto", "global", 2): [run(B), NO, NO, NO],
    ("auto", "worker", 2): [run(f"{B}-worker-0"), NO, run(f"{B}-worker-1", k=1), NO],
    ("shared", "global", 2): [
        run(B, label="worker-0-rank-0"),
        run(B, label="worker-0-rank-1", primary=False, k=1),
        run(B, label="worker-1-rank-0", primary=False, k=2),
        run(B, label="worker-1-rank-1", primary=False, k=3),
    ],
    ("shared", "worker", 2): [
        run(f"{B}-worker-0", label="worker-0-rank-0"),
        run(f"{B}-worker-0", label="worker-0-rank-1", primary=False, k=1),
        run(f"{B}-worker-1", label="worker-1-rank-0", k=2),
        run(f"{B}-worker-1", label="worker-1-rank-1", primary=False, k=3),
    ],
    ("new", "global", 2): [run(f"{B}-rank-{r}", B, k=r) for r in range(4)],
    ("new", "worker", 2): [
        run(f"{B}-worker-0-rank-0", f"{B}-worker-0"),
        run(f"{B}-worker-0-rank-1", f"{B}-worker-0", k=1),
        run(f"{B}-worker-1-rank-0", f"{B}-worker-1", k=2),
        run(f"{B}-worker-1-rank-1", f"{B}-worker-1", k=3),
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


def slots(run_mode: str, rank_scope: str, nodes: int, per_node: int, rate: float | None = None) -> list[float]:
    """Every rank's creation slot in a job of `nodes` x `per_node` ranks, in rank order."""
    opts = WandbOptions(run_mode=run_mode, rank_scope=rank_scope, max_run_creations_per_s=rate)  # type: ignore[arg-type]
    plans = [plan_rank(opts, Topology.in_job(r, nodes, per_node), "r1", "a0", nodes) for r in range(nodes * per_node)]
    return [creation_slot(opts, p) for p in plans]


@pytest.mark.parametrize(
    ("run_mode", "rank_scope"), [(m, s) for m in ("auto", "shared", "new") for s in ("global", "worker")]
)
def test_a_small_job_opens_its_runs_at_once(run_mode: str, rank_scope: str) -> None:
    job = slots(run_mode, rank_scope, 2, 2)
    assert job[0] == 0.0  # the first opener never waits
    assert max(job) < 0.05  # 2 x 2 at the default 80 a second


def test_slot_k_lies_within_its_width_and_is_the_same_each_time() -> None:
    job = slots("new", "global", 2, 4, rate=2)
    assert job[0] == 0.0
    for k, slot in enumerate(job[1:], start=1):
        assert k / 2 <= slot < (k + 1) / 2, (k, slot)
    assert job == slots("new", "global", 2, 4, rate=2)  # deterministic: links, benchmarks and pods agree
    assert len(set(s - k / 2 for k, s in enumerate(job[1:], start=1))) == 7  # jittered within the slot


def test_ranks_that_open_no_run_have_no_slot_and_one_run_per_node_is_paced_by_node() -> None:
    job = slots("auto", "worker", 4, 2, rate=1)
    assert job[1::2] == [0.0] * 4  # no run: nothing to wait for
    assert [int(s) for s in job[0::2]] == [0, 1, 2, 3]  # node k's run: slot k
    assert slots("auto", "global", 4, 2, rate=1) == [0.0] * 8


@pytest.mark.parametrize(("run_mode", "rank_scope"), [("new", "global"), ("shared", "worker")])
def test_at_1024_x_8_the_job_asks_for_at_most_80_creations_a_second(run_mode: str, rank_scope: str) -> None:
    job = sorted(slots(run_mode, rank_scope, 1024, 8))
    assert 8191 / 80 <= job[-1] < 8192 / 80  # every writer's init counts: 102 s for the last
    per_second = [0] * (int(job[-1]) + 1)
    for slot in job:
        per_second[int(slot)] += 1
    assert max(per_second) == 80  # each whole second from the start
    start = 0
    most = 0
    for end, slot in enumerate(job):  # any window of one second
        while slot - job[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    assert most <= 81


LAYOUTS = [(m, s, None) for m in ("auto", "shared", "new") for s in ("global", "worker")]
LAYOUTS += [("auto", s, "offline") for s in ("global", "worker")]


@pytest.mark.parametrize(("run_mode", "rank_scope", "rank_runs"), LAYOUTS)
@pytest.mark.parametrize(("nodes", "nproc"), [(1, 1), (1, 4), (2, 2), (3, 2), (5, 3)])
def test_the_writers_that_copy_run_files_are_counted_as_every_rank_plans(
    run_mode: str, rank_scope: str, rank_runs: str | None, nodes: int, nproc: int
) -> None:
    options = WandbOptions(run_mode=run_mode, rank_scope=rank_scope, rank_runs=rank_runs)  # type: ignore[arg-type]
    planned = [plan_rank(options, Topology.in_job(r, nodes, nproc), "r1", "a0", nodes) for r in range(nodes * nproc)]
    assert writers(options, nodes, nproc) == sum(plan.opens_run for plan in planned)


def test_at_1024_x_8_only_the_layouts_where_every_rank_writes_count_every_rank() -> None:
    def count(run_mode: str, rank_scope: str = "global", **more: str) -> int:
        return writers(WandbOptions(run_mode=run_mode, rank_scope=rank_scope, **more), 1024, 8)  # type: ignore[arg-type]

    assert (count("auto"), count("auto", "worker"), count("shared"), count("new", "worker")) == (1, 1024, 8192, 8192)
    assert count("auto", rank_runs="offline") == 8192
