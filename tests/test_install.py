"""The package as a user installs it: a wheel built from the checkout, installed with `--no-deps` into
a fresh virtualenv, used from a project outside this repository, as docs/cluster.md shows.

No network and no launch: the wheel is built without build isolation, installed with `--no-index`,
and the fresh virtualenv sees this environment's installed dependencies (flyte, wandb, torch)
through a `.pth` file, so the whole module takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.conftest import REPO

B = "{{.runName}}-{{.actionName}}"
PAGE = "https://wandb.ai/my-team/my-project"
CLUSTER_PAGE = REPO / "docs" / "cluster.md"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]

# Run in the fresh virtualenv, from the user's project: serializes the project's task with Flyte's
# own serializer, as `flyte run` does (the same calls as tests/serialize.py, which lives in the
# repository and so cannot be imported from there).
SERIALIZE = """\
import json
import sys
from pathlib import Path

from flyte._internal.runtime.task_serde import translate_task_to_wire
from flyte.models import ActionID, RawDataPath, SerializationContext, TaskContext
from flyte.report import Report

import flyte_wandb_elastic
import train

tctx = TaskContext(
    action=ActionID(name="{{.actionName}}", run_name="{{.runName}}", project="proj", domain="dev"),
    version="v1",
    raw_data_path=RawDataPath(path=""),
    output_path="",
    run_base_dir="",
    report=Report(name="{{.actionName}}"),
    custom_context={},
)
spec = translate_task_to_wire(
    train.train, SerializationContext(version="v1", root_dir=Path.cwd()), task_context=tctx
)
template = spec.task_template
json.dump(
    {
        "package": flyte_wandb_elastic.__file__,
        "task_type": template.type,
        "image": template.container.image,
        "image_uri": train.image.uri,
        "layers": [type(layer).__name__ for layer in train.image._layers],
        "wheel": str(train.WHEEL),
        "secrets": [s.key for s in template.security_context.secrets],
        "links": [[log.name, log.uri] for log in template.metadata.log_links],
    },
    sys.stdout,
)
"""

# Run in the fresh virtualenv: what an installed copy looks like from the outside.
INSTALLED = """\
import importlib.metadata
import json
import sys
from pathlib import Path

import flyte_wandb_elastic

package = Path(flyte_wandb_elastic.__file__).parent
json.dump(
    {
        "file": flyte_wandb_elastic.__file__,
        "version": flyte_wandb_elastic.__version__,
        "metadata_version": importlib.metadata.version("flyte-wandb-elastic"),
        "py_typed": (package / "py.typed").is_file(),
        "prefix": sys.prefix,
    },
    sys.stdout,
)
"""


@dataclass(frozen=True)
class Installed:
    """A wheel built from the checkout, a fresh virtualenv holding it, and a user's project."""

    wheel: Path
    venv: Path
    python: Path
    project: Path
    env: dict[str, str]

    def run(self, *args: str) -> str:
        """Run the fresh virtualenv's python from the user's project; returns its stdout."""
        return _run([str(self.python), *args], cwd=self.project, env=self.env)


def _run(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; fails the test with its stderr when it fails. Returns its stdout."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done.stdout


def _pyproject() -> str:
    return (REPO / "pyproject.toml").read_text()


def _pyproject_version() -> str:
    found = re.search(r'^version = "([^"]+)"', _pyproject(), re.MULTILINE)
    assert found is not None
    return found.group(1)


def _dependencies() -> dict[str, Requirement]:
    """pyproject.toml's runtime dependencies, by name."""
    block = re.search(r"^dependencies = \[\n(.*?)^\]", _pyproject(), re.MULTILINE | re.DOTALL)
    assert block is not None
    return {r.name: r for r in map(Requirement, re.findall(r'"([^"]+)"', block.group(1)))}


def _project_module() -> str:
    """The module of docs/cluster.md's step 3: the python block after its `your-project` marker."""
    page = CLUSTER_PAGE.read_text()
    found = re.search(r"<!-- your-project: train\.py -->\n```python\n(.*?)```", page, re.DOTALL)
    assert found is not None, "docs/cluster.md lost its <!-- your-project: train.py --> block"
    return found.group(1)


def _build_wheel(out: Path, tmp: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the checkout, as the docs say, without build isolation (no
    network: setuptools comes from this environment) and without writing `build/` into the checkout."""
    source = tmp / "flyte-wandb-elastic"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "flyte_wandb_elastic", source / "flyte_wandb_elastic", ignore=shutil.ignore_patterns("__pycache__")
    )
    _run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source), "-w", str(out)])
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("install")
    project = tmp / "my-project"
    wheel = _build_wheel(project / "wheels", tmp)

    # A virtualenv with no packages of its own and no pip (this environment's pip installs into
    # it). A `.pth` line appends this environment's site-packages after its own, so flyte, wandb and
    # torch resolve from here while flyte_wandb_elastic can come only from the wheel: a `.pth` line
    # adds a directory without running the `.pth` files in it, so this checkout's editable install
    # stays out of the fresh virtualenv.
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).strip()
    here = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(purelib) / "_dependencies_of_the_test_environment.pth").write_text("".join(f"{p}\n" for p in here))
    # pip's --python (pip 22.3 or later) installs into another interpreter's environment
    _run([*PIP, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)])

    # The user's project: the docs' module, its requirements, and the script that serializes it.
    (project / "train.py").write_text(_project_module())
    (project / "requirements.txt").write_text("numpy\n")
    (project / "serialize_train.py").write_text(SERIALIZE)
    return Installed(wheel=wheel, venv=venv, python=python, project=project, env=env)


def test_the_wheel_holds_every_module_py_typed_and_the_declared_dependencies(installed: Installed) -> None:
    version = _pyproject_version()
    assert installed.wheel.name == f"flyte_wandb_elastic-{version}-py3-none-any.whl"
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"flyte_wandb_elastic-{version}.dist-info/METADATA").decode()
    assert {f"flyte_wandb_elastic/{p.name}" for p in (REPO / "flyte_wandb_elastic").glob("*.py")} <= names
    assert "flyte_wandb_elastic/py.typed" in names
    # what pip installs with it, in a project or an image
    requires = [
        Requirement(line.split(": ", 1)[1]) for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    assert {r.name: r for r in requires if r.marker is None} == _dependencies()


def test_the_project_imports_the_installed_copy_not_the_checkout(installed: Installed) -> None:
    facts = json.loads(installed.run("-c", INSTALLED))
    venv = installed.venv.resolve()
    assert Path(facts["prefix"]).resolve() == venv
    assert Path(facts["file"]).resolve().is_relative_to(venv)
    assert not Path(facts["file"]).resolve().is_relative_to(REPO)
    assert facts["py_typed"]
    assert facts["version"] == facts["metadata_version"] == _pyproject_version()


def test_the_layout_command_runs_from_the_installed_package(installed: Installed) -> None:
    out = installed.run(
        "-m", "flyte_wandb_elastic", "layout", "--run-mode", "new", "--nodes", "2", "--nproc-per-node", "2"
    )
    lines = out.splitlines()
    assert lines[0] == "new / global, 2 x 2 ranks"
    assert "  4 runs:" in lines


def test_the_projects_task_serializes_with_the_image_the_wheel_and_console_links(installed: Installed) -> None:
    spec = json.loads(installed.run("serialize_train.py"))
    assert Path(spec["package"]).resolve().is_relative_to(installed.venv.resolve())
    assert spec["task_type"] == "pytorch"
    # the image of the docs: torch, the wheel copied in and installed, the project's requirements
    assert spec["image"] == spec["image_uri"]
    assert spec["image"].startswith("my-training:")
    assert spec["layers"][-4:] == ["PipPackages", "CopyConfig", "Commands", "Requirements"]
    assert Path(spec["wheel"]) == installed.wheel
    assert spec["secrets"] == ["wandb-api-key"]
    # new / worker on 2 nodes: a link per node's group
    assert spec["links"] == [[f"Weights & Biases Worker {n}", f"{PAGE}/groups/{B}-worker-{n}"] for n in range(2)]


def test_the_versions_table_allows_what_pyproject_allows() -> None:
    table = CLUSTER_PAGE.read_text().split("<!-- versions -->\n", 1)[1].split("\n\n", 1)[0]
    allowed = {}
    for line in table.splitlines()[2:]:
        name, _tested, spec = (cell.strip() for cell in line.strip("|").split("|"))
        allowed[name] = SpecifierSet(spec.strip("`"))
    python = re.search(r'^requires-python = "([^"]+)"', _pyproject(), re.MULTILINE)
    assert python is not None
    expected = {"Python": SpecifierSet(python.group(1))}
    expected.update({name: requirement.specifier for name, requirement in _dependencies().items()})
    assert allowed == expected
