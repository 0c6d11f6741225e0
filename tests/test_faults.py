"""A short seeded set of faults over both engines (`benchmarks/bench_faults.py` runs any number).

Each seed draws one fault (see `tests.faults`); a failing seed replays with the same number.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import INVARIANTS, draw, run_fault
from tests.servers import S3Server, WandbServer

pytestmark = pytest.mark.launch

# a handful of seeds whose faults cover both engines, a process killed, a server lost and a restart
SEEDS = [3, 11, 14, 22]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, WandbServer]]:
    s3, wandb_server = S3Server(tmp_path_factory.mktemp("s3")), WandbServer(tmp_path_factory.mktemp("openwandb"))
    s3.start()
    wandb_server.start()
    yield s3, wandb_server
    wandb_server.stop()
    s3.stop()


@pytest.mark.parametrize("seed", SEEDS)
def test_every_invariant_holds_after_the_fault(
    tmp_path: Path, servers: tuple[S3Server, WandbServer], seed: int
) -> None:
    outcome = run_fault(draw(seed), tmp_path, *servers)
    assert outcome.ok, (outcome.fault, {k: outcome.held[k] for k in INVARIANTS}, outcome.details)
