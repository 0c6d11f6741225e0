"""From W&B back to Flyte, without a launch: the console URL against flyte's own builder, the tags
and notes, the alert's text, the checkpoint locations and the new option's validation.

The same values in the run files of real launches are checked in test_launch, test_clustered,
test_reliability and test_lineage.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from flyte.remote._client.controlplane import Console

from flyte_wandb_elastic import WandbElastic, WandbOptions, log_checkpoint, use_checkpoint, wandb_config
from flyte_wandb_elastic._alerts import FailureAlert
from flyte_wandb_elastic._checkpoints import MAX_NAME_CHARS, _where, checkpoint_name
from flyte_wandb_elastic._flyte_console import FlyteAction, action_url, console_endpoint
from flyte_wandb_elastic._options import from_context
from flyte_wandb_elastic._topology import Topology


def _api_key(endpoint: str) -> str:
    return base64.b64encode(f"{endpoint}:client:secret:org".encode()).decode()


@pytest.mark.parametrize(
    ("environ", "endpoint", "insecure"),
    [
        ({"_U_EP_OVERRIDE": "dns:///flyte.example.com"}, "dns:///flyte.example.com", False),
        ({"_U_EP_OVERRIDE": "flyte.example.com:443"}, "flyte.example.com:443", False),
        ({"_U_EP_OVERRIDE": "https://flyte.example.com"}, "https://flyte.example.com", False),
        ({"_U_EP_OVERRIDE": "dns:///flyte.example.com", "_U_INSECURE": "true"}, "dns:///flyte.example.com", True),
        ({"_U_EP_OVERRIDE": "localhost:8090"}, "localhost:8090", True),  # the sandbox
        ({"FLYTE_ADMIN_ENDPOINT": "dns:///admin.example.com"}, "dns:///admin.example.com", False),
        ({"_U_EP_OVERRIDE": "dns:///a.example.com", "FLYTE_ADMIN_ENDPOINT": "dns:///b"}, "dns:///a.example.com", False),
        ({"_UNION_EAGER_API_KEY": _api_key("dns:///key.example.com")}, "dns:///key.example.com", False),
        ({"EAGER_API_KEY": _api_key("key.example.com")}, "key.example.com", False),
    ],
)
def test_the_console_url_is_flytes_own_for_the_endpoint_the_pod_knows(
    environ: dict[str, str], endpoint: str, insecure: bool
) -> None:
    assert console_endpoint(environ) == (endpoint, insecure)
    action = FlyteAction.of(environ, "proj", "dev", "r1", "a0 x/y")
    # flyte's client builds it from the endpoint as flyte's init sanitizes it
    sanitized = endpoint if "://" in endpoint else f"dns:///{endpoint}"
    assert action.url == Console(sanitized, insecure).action_url("proj", "dev", "r1", "a0 x/y")
    assert action.url == action_url(endpoint, insecure, "proj", "dev", "r1", "a0 x/y")
    assert action.url is not None and action.url.endswith("/v2/domain/dev/project/proj/runs/r1?i=a0%20x%2Fy")


@pytest.mark.parametrize("environ", [{}, {"_U_EP_OVERRIDE": " "}, {"EAGER_API_KEY": "not base64!"}])
def test_no_known_endpoint_means_no_url_and_notes_as_given(environ: dict[str, str]) -> None:
    action = FlyteAction.of(environ, "proj", "dev", "r1", "a0")
    assert action.url is None
    assert action.notes("mine") == "mine"
    assert action.notes(None) is None
    assert action.tags() == ["flyte-project:proj", "flyte-domain:dev", "flyte-run:r1", "flyte-action:a0"]


def test_tags_follow_the_users_fit_w_and_b_and_notes_keep_the_users() -> None:
    action = FlyteAction.of({"_U_EP_OVERRIDE": "dns:///f.example.com"}, "proj", "dev", "r" * 80, "a0")
    tags = action.tags(["mine", "flyte-domain:dev"])
    assert tags[:2] == ["mine", "flyte-domain:dev"]  # the user's first, none repeated
    assert tags[2:] == ["flyte-project:proj", f"flyte-run:{'r' * 54}", "flyte-action:a0"]
    assert all(1 <= len(tag) <= 64 for tag in tags)
    url = f"https://f.example.com/v2/domain/dev/project/proj/runs/{'r' * 80}?i=a0"
    assert action.notes("my notes") == f"my notes\n\n[Flyte action {'r' * 80}/a0]({url})"


def test_the_alert_names_the_first_failing_rank_its_error_and_the_link() -> None:
    action = FlyteAction.of({"_U_EP_OVERRIDE": "dns:///f.example.com"}, "proj", "dev", "r1", "a0")
    alert = FailureAlert.of(action, Topology(), {}).text_of(3, "ValueError: boom")
    assert (alert.title, alert.level) == ("Flyte job failed: r1/a0", "ERROR")
    assert alert.text == f"Rank 3 failed first: ValueError: boom\nFlyte action: {action.url}"
    unknown = FailureAlert.of(FlyteAction("proj", "dev", "r" * 80, "a0"), Topology(), {}).text_of(0, "E: x")
    assert len(unknown.title) == 63  # W&B takes titles of fewer than 64 characters
    assert unknown.text.endswith(f"Flyte action: {'r' * 80}/a0 in proj/dev")


def test_only_the_last_start_alerts() -> None:
    action = FlyteAction("proj", "dev", "r1", "a0")
    restarts = {"TORCHELASTIC_MAX_RESTARTS": "2"}
    assert not FailureAlert.of(action, Topology(restart_count=1), restarts).last_start
    assert FailureAlert.of(action, Topology(restart_count=2), restarts).last_start
    assert FailureAlert.of(action, Topology(), {}).last_start
    # a success, or a start that torch elastic restarts, sends none
    assert FailureAlert.of(action, Topology(), {}).compose(0, None) is None
    assert FailureAlert.of(action, Topology(restart_count=1), restarts).compose(1, "E: x") is None
    # a lone process has no job store: its own error is the first
    alert = FailureAlert.of(action, Topology(), {}).compose(1, "ValueError: own")
    assert alert is not None and alert.text.startswith("Rank 0 failed first: ValueError: own")
    # stopped from outside with no failure recorded: cancelled, not failed
    assert FailureAlert.of(action, Topology(), {}).compose(143, "stopped") is None


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_alert_on_failure_is_validated_where_declared(value: object) -> None:
    with pytest.raises(ValueError, match=r"alert_on_failure=.* is not valid: expected True, False or None"):
        WandbElastic(nnodes=1, nproc_per_node=2, alert_on_failure=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alert_on_failure"):
        WandbOptions(alert_on_failure=value)  # type: ignore[arg-type]


def test_alert_on_failure_travels_in_the_run_context() -> None:
    assert from_context(wandb_config(alert_on_failure=False)).alert_on_failure is False
    assert from_context(wandb_config()).alert_on_failure is None


def test_checkpoint_locations(tmp_path: Path) -> None:
    import flyte
    from flyte.io import Dir, File
    from flyte.models import CheckpointPaths

    assert _where("s3://b/ckpt/step-1/", produced=True) == "s3://b/ckpt/step-1/"
    assert _where(tmp_path / "ckpt", produced=True) == (tmp_path / "ckpt").as_uri()
    assert _where(File(path="s3://b/model.pt"), produced=True) == "s3://b/model.pt"
    assert _where(Dir(path="gs://b/shards"), produced=False) == "gs://b/shards"
    checkpoint = flyte.Checkpoint("s3://b/run/a0/_flytecheckpoints", "s3://b/run/a0-1/_flytecheckpoints")
    assert _where(checkpoint, produced=True) == "s3://b/run/a0/_flytecheckpoints"
    assert _where(checkpoint, produced=False) == "s3://b/run/a0-1/_flytecheckpoints"
    paths = CheckpointPaths(prev_checkpoint_path=None, checkpoint_path="s3://b/cp")
    assert (_where(paths, produced=True), _where(paths, produced=False)) == ("s3://b/cp", None)
    with pytest.raises(ValueError, match=r"location=42 is not valid: expected a URI or local path"):
        log_checkpoint(42)
    with pytest.raises(ValueError, match=r"aliases='latest' is not valid"):
        log_checkpoint("s3://b/c", aliases="latest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"name='' is not valid"):
        use_checkpoint("s3://b/c", name="")
    # outside a run (no rank run here), a valid call does nothing
    assert log_checkpoint("s3://b/c") is None and use_checkpoint("s3://b/c") is None


def test_checkpoint_names_are_w_and_b_names_of_the_location() -> None:
    assert checkpoint_name("s3://bucket/runs/r1/ckpt/") == "bucket-runs-r1-ckpt"
    assert checkpoint_name("file:///tmp/x y/ckpt") == "tmp-x-y-ckpt"
    long = checkpoint_name("s3://b/" + "d/" * 100 + "last")
    assert len(long) <= MAX_NAME_CHARS and long.endswith(checkpoint_name("s3://b/" + "d/" * 100 + "last")[-12:])
    assert long != checkpoint_name("s3://c/" + "d/" * 100 + "last")  # the hash keeps them apart
