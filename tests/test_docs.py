"""The documentation's code: every Python block parses and imports only what the package exports,
and the quoted error message is the real one."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

import flyte_wandb_elastic
from flyte_wandb_elastic import WandbElastic
from tests.conftest import REPO

PAGES = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        for i, match in enumerate(BLOCK.finditer(page.read_text())):
            found.append((page.name, i, match.group(1)))
    return found


@pytest.mark.parametrize(("page", "index", "code"), blocks(), ids=[f"{p}-{i}" for p, i, _ in blocks()])
def test_python_blocks_parse_and_import_real_names(page: str, index: int, code: str) -> None:
    tree = ast.parse(code.replace("    ...\n", "    pass\n"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "flyte_wandb_elastic":
            for alias in node.names:
                assert alias.name in flyte_wandb_elastic.__all__, f"{page}: {alias.name}"


def test_the_quoted_error_message_is_the_real_one() -> None:
    quoted = re.search(r"```text\n(run_mode=.*)\n```", (REPO / "docs" / "configuration.md").read_text())
    assert quoted is not None
    with pytest.raises(ValueError) as info:
        WandbElastic(nnodes=1, nproc_per_node=1, run_mode="sometimes")  # type: ignore[arg-type]
    assert str(info.value) == quoted.group(1)


def test_every_page_is_in_the_site() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    assert {p.name for p in (REPO / "docs").glob("*.md")} == set(re.findall(r"(\w+\.md)", nav))


def test_readme_commands_are_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    assert "<!-- test-command -->" in readme and "<!-- quickstart-command -->" in readme
    assert "python examples/quickstart.py" in readme
    assert "test-command" in (REPO / ".ci" / "run").read_text()


def test_local_runs_page_program_is_the_run_per_node_example() -> None:
    page_code = BLOCK.search((REPO / "docs" / "local.md").read_text())
    assert page_code is not None
    example = (REPO / "examples" / "run_per_node.py").read_text()
    for line in ('rank_scope="worker"', "run = get_wandb_run()", 'dist.init_process_group("gloo")'):
        assert line in page_code.group(1) and line in example


def test_behaviour_pictures_are_the_planners() -> None:
    from flyte_wandb_elastic._diagram import behaviour_diagrams

    page = (REPO / "docs" / "behaviour.md").read_text()
    drawn = page.split("<!-- diagrams:start -->\n", 1)[1].split("\n<!-- diagrams:end -->", 1)[0]
    assert drawn == behaviour_diagrams(), "regenerate with flyte_wandb_elastic._diagram.behaviour_diagrams()"


def test_layout_command_draws_a_job(capsys: pytest.CaptureFixture[str]) -> None:
    from flyte_wandb_elastic.__main__ import main

    assert (
        main(["layout", "--run-mode", "shared", "--rank-scope", "worker", "--nodes", "2", "--nproc-per-node", "1"]) == 0
    )
    assert capsys.readouterr().out.splitlines() == [
        "shared / worker, 2 x 1 ranks",
        "  node 0  rank 0  --> base-worker-0  label worker-0-rank-0  primary",
        "  node 1  rank 1  --> base-worker-1  label worker-1-rank-0  primary",
        "  2 runs:",
        "    base-worker-0",
        "    base-worker-1",
    ]


def test_the_command_line_starts_without_torch_wandb_or_the_plugins() -> None:
    # the package's public names load on first use: `layout`, `inspect` and `sync` start at once
    command = [sys.executable, "-X", "importtime", "-m", "flyte_wandb_elastic", "layout", "--nodes", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("auto / global, 2 x 2 ranks")
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "flyte_wandb_elastic._diagram" in imported
    assert not imported & {"torch", "wandb", "flyteplugins", "flyteplugins.pytorch"}, sorted(imported)


def test_every_public_name_resolves() -> None:
    # the package's names load on first use: each one of `__all__` must be there
    assert all(getattr(flyte_wandb_elastic, name) is not None for name in flyte_wandb_elastic.__all__)
    assert set(flyte_wandb_elastic.__all__) <= set(dir(flyte_wandb_elastic))
