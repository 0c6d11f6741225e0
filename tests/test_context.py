"""`wandb_config` writes the upstream `wandb_*` keys; declared fields win over the run context."""

from __future__ import annotations

from flyte_wandb_elastic import WandbElastic, wandb_config
from flyte_wandb_elastic._options import from_context


def test_keys_match_upstream() -> None:
    from flyteplugins.wandb import wandb_config as upstream_config

    kwargs = {
        "project": "p",
        "entity": "e",
        "host": "https://wandb.example.com",
        "id": "i",
        "name": "n",
        "tags": ["a", "b"],
        "config": {"lr": 0.1},
        "mode": "offline",
        "group": "g",
        "run_mode": "shared",
        "rank_scope": "worker",
        "notes": "some notes",
    }
    assert wandb_config(**kwargs) == dict(upstream_config(**kwargs))


def test_round_trip() -> None:
    context = wandb_config(project="p", tags=["t"], config={"a": 1}, notes="n", save_code=True)
    options = from_context(context)
    assert (options.project, options.tags, options.config, options.notes) == ("p", ["t"], {"a": 1}, "n")
    assert options.init_kwargs == {"save_code": True}


def test_declared_fields_win_and_context_fills_the_rest() -> None:
    declared = WandbElastic(nnodes=1, nproc_per_node=2, project="declared", init_kwargs={"save_code": False})
    context = wandb_config(project="ctx", entity="team", run_mode="new", save_code=True, resume="allow")
    options = declared.resolved(context)
    # wandb_config writes upstream's defaults (rank_scope="global") as upstream does
    assert (options.project, options.entity, options.run_mode, options.rank_scope) == (
        "declared",
        "team",
        "new",
        "global",
    )
    assert options.init_kwargs == {"save_code": False, "resume": "allow"}


def test_unset_fields_stay_unset_without_context() -> None:
    options = WandbElastic(nnodes=1, nproc_per_node=1).resolved()
    assert options == WandbElastic(nnodes=1, nproc_per_node=1).wandb_options()
    assert (options.run_mode, options.rank_scope, options.project) == (None, None, None)
