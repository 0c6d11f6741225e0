"""Serialize tasks with Flyte's own serializer, as `flyte.run` and `flyte deploy` do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flyte._internal.runtime.task_serde import translate_task_to_wire
from flyte.models import ActionID, RawDataPath, SerializationContext, TaskContext
from flyte.report import Report

from tests.conftest import REPO


def serialize(task: Any, run_name: str, project: str, domain: str, context: Mapping[str, str]) -> Any:
    """The wire `TaskSpec` of `task`, with the task context that Flyte passes when it serializes."""
    tctx = TaskContext(
        action=ActionID(name="{{.actionName}}", run_name=run_name, project=project, domain=domain),
        version="v1",
        raw_data_path=RawDataPath(path=""),
        output_path="",
        run_base_dir="",
        report=Report(name="{{.actionName}}"),
        custom_context=dict(context),
    )
    return translate_task_to_wire(task, SerializationContext(version="v1", root_dir=REPO), task_context=tctx)


def run_path_spec(task: Any, context: Mapping[str, str]) -> Any:
    """As `flyte.run` serializes: templated run and action names, the run's custom context."""
    return serialize(task, "{{.runName}}", "proj", "dev", context)


def deploy_path_spec(task: Any) -> Any:
    """As `flyte deploy` serializes: everything templated, an empty context."""
    return serialize(task, "{{.runName}}", "{{.executionProject}}", "{{.executionDomain}}", {})


def links(spec: Any) -> list[tuple[str, str]]:
    """(name, uri) of every console link in a serialized spec."""
    return [(log.name, log.uri) for log in spec.task_template.metadata.log_links]
