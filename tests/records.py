"""What a run file holds beyond rows and config: the run's tags and notes, its alerts and artifacts.

Read with the project's own record reader (`iter_records`) from the records W&B writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flyte_wandb_elastic._runfiles import RunFile, iter_records

ENDPOINT = "dns:///flyte.example.com"
"""The endpoint a pod's Flyte client is given (`_U_EP_OVERRIDE`), for launches that check the way back."""
POD_ENV = {"_U_EP_OVERRIDE": ENDPOINT}


def console_url(run_name: str = "r1", action_name: str = "a0") -> str:
    """The Flyte console's page for the action, as `flyte.remote`'s builder makes it for `ENDPOINT`."""
    from flyte.remote._client.controlplane import Console

    return Console(ENDPOINT).action_url("proj", "dev", run_name, action_name)


@dataclass
class Records:
    """The run record's tags and notes, and the alert and artifact records, of one run file."""

    tags: list[str] = field(default_factory=list)
    notes: str = ""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)


def records(run: RunFile) -> Records:
    found = Records()
    for record in iter_records(run.path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found.tags, found.notes = list(record.run.tags), record.run.notes
        elif kind == "alert":
            alert = record.alert
            found.alerts.append({"title": alert.title, "text": alert.text, "level": alert.level})
        elif kind == "artifact":
            artifact = record.artifact
            found.artifacts.append(
                {
                    "name": artifact.name,
                    "type": artifact.type,
                    "aliases": list(artifact.aliases),
                    "digest": artifact.digest,
                    "use_after_commit": artifact.use_after_commit,
                    "metadata": json.loads(artifact.metadata or "{}"),
                    "refs": {entry.path: (entry.ref, entry.digest) for entry in artifact.manifest.contents},
                }
            )
    return found


def assert_links_back(runs: list[RunFile], url: str | None, user_tags: list[str], user_notes: str | None) -> None:
    """Every run carries its way back to the Flyte action `proj`/`dev`/`r1`/`a0`: the console URL in
    its config (`None` where the pod knew no endpoint) and after the user's notes, and the Flyte
    tags after the user's."""
    assert runs
    for run in runs:
        found = records(run)
        assert run.config["flyte"]["console_url"] == url, run.path
        assert found.tags == [*user_tags, "flyte-project:proj", "flyte-domain:dev", "flyte-run:r1", "flyte-action:a0"]
        link = f"[Flyte action r1/a0]({url})" if url else None
        expected = "\n\n".join(part for part in (user_notes, link) if part)
        assert found.notes == expected, run.path
