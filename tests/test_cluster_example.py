"""The cluster guide's example, serialized by Flyte's own serializer as `flyte run` would."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from google.protobuf.json_format import MessageToDict

from tests.conftest import REPO
from tests.serialize import deploy_path_spec, links, run_path_spec

B = "{{.runName}}-{{.actionName}}"
PAGE = "https://wandb.ai/my-team/my-project"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("cluster_example", REPO / "examples" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Flyte finds a task's module there when it serializes it
    spec.loader.exec_module(module)
    return module


def test_both_tasks_carry_the_image_the_secret_the_gpus_and_per_node_links() -> None:
    example = _example()
    expected = [(example.train_elastic, "pytorch", "groups"), (example.train_clustered, "clustered-task", "runs")]
    for task, task_type, kind in expected:
        for spec in (run_path_spec(task, {}), deploy_path_spec(task)):
            template = spec.task_template
            assert template.type == task_type
            # the image that installs torch and this package from the source checkout
            assert template.container.image == example.image.uri
            layers = [type(layer).__name__ for layer in example.image._layers]
            assert layers[-2:] == ["PipPackages", "UVProject"]
            assert [(s.key, s.env_var) for s in template.security_context.secrets] == [
                ("wandb-api-key", "WANDB_API_KEY")
            ]
            requests = {MessageToDict(r)["name"]: r.value for r in template.container.resources.requests}
            assert requests == {"CPU": "16", "MEMORY": "128Gi", "GPU": "4"}
            assert links(spec) == [(f"Weights & Biases Worker {n}", f"{PAGE}/{kind}/{B}-worker-{n}") for n in range(2)]
    custom = MessageToDict(deploy_path_spec(example.train_clustered).task_template.custom)
    assert (custom["replicas"], custom["nprocPerNode"]) == (2, 4)
