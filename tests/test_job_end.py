"""The end-of-job agreement on a real TCPStore, with one client per rank (threads as ranks).

Launches cover it end to end (a run ends successful only once every rank returned: see
test_reliability); here its guarantees are checked at the edges a launch cannot time: the last
rank returning late, a restart's marks, the first failure. Its cost at thousands of ranks is
measured by `benchmarks/bench_at_scale.py`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from torch.distributed import TCPStore

from flyte_wandb_elastic._job_end import JobEnd
from flyte_wandb_elastic._topology import Topology

# the tests time who waits for whom (see `exclusive` in tests/conftest.py)
pytestmark = pytest.mark.exclusive

NODES, PER_NODE = 3, 2


@pytest.fixture
def store_env() -> Iterator[dict[str, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    master = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    yield {"TORCHELASTIC_RUN_ID": "job", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    del master


def _ranks(env: dict[str, str]) -> list[JobEnd]:
    return [JobEnd(Topology.in_job(rank, NODES, PER_NODE), env) for rank in range(NODES * PER_NODE)]


def _return_all(jobs: list[JobEnd], late: dict[int, float], owners: set[int]) -> dict[int, float]:
    """Each rank returns (after `late[rank]` seconds), owners waiting; when each call came back."""
    done: dict[int, float] = {}

    def rank_main(job: JobEnd) -> None:
        time.sleep(late.get(job.topology.rank, 0.0))
        job.returned(wait=job.topology.rank in owners)
        done[job.topology.rank] = time.monotonic()

    threads = [threading.Thread(target=rank_main, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return done


@pytest.mark.parametrize("owners", [set(range(NODES * PER_NODE)), {0}, {0, 2, 4}], ids=["new", "auto", "worker"])
def test_no_owner_ends_before_the_last_rank_returns(store_env: dict[str, str], owners: set[int]) -> None:
    start = time.monotonic()
    done = _return_all(_ranks(store_env), {5: 1.5}, owners)
    assert sorted(done) == list(range(NODES * PER_NODE))
    assert all(done[rank] - start >= 1.5 for rank in owners), done  # every owner waited for rank 5
    free = {1, 3} - owners  # neither a run nor a node to gather: they never wait
    assert all(done[rank] - start < 1.0 for rank in free), done


def test_an_earlier_starts_marks_never_count_after_a_restart(store_env: dict[str, str]) -> None:
    env = {**store_env, "TORCHELASTIC_MAX_RESTARTS": "1"}
    owners = set(range(NODES * PER_NODE))
    _return_all(_ranks(env), {}, owners)  # the first start: every rank returned, its marks stay
    restarted = _ranks(env)
    for job in restarted:  # the next start: every rank clears its marks as it starts
        job.start()
    begin = time.monotonic()
    done = _return_all(restarted, {4: 1.5}, owners)
    assert all(done[rank] - begin >= 1.5 for rank in owners), done


def test_the_first_failure_recorded_wins(store_env: dict[str, str]) -> None:
    jobs = _ranks(store_env)
    assert jobs[0].first_failure() is None
    jobs[3].failed(ValueError("disk full"))
    jobs[1].failed(RuntimeError("later"))
    assert jobs[0].first_failure() == {"rank": 3, "type": "ValueError", "message": "disk full"}


def test_outside_a_job_there_is_nothing_to_agree() -> None:
    job = JobEnd(Topology(), {})
    job.start()
    job.returned(wait=True)  # returns at once: no store, no peers
    assert job.first_failure() is None
